package gateway

import (
	"context"
	"crypto/rand"
	"log/slog"
	"sync"
	"time"

	"github.com/pgshield/pgshield/internal/pgbackend"
	"github.com/pgshield/pgshield/internal/wire"
)

// handleCancel delivers a client's CancelRequest to the backend its key
// names. An unknown key is ignored: PostgreSQL answers a CancelRequest
// with nothing either way.
func (s *Server) handleCancel(ctx context.Context, st *wire.Startup, log *slog.Logger) {
	var key [4]byte
	putUint32(key[:], st.CancelKey)
	b, ok := s.cancels.lookup(cancelKey{pid: st.CancelPID, key: key})
	if !ok {
		s.logClient(log, "Cancel request with an unknown key ignored.")
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := s.cfg.Backend.Cancel(cctx, b.PID, b.Key); err != nil {
		log.Warn("Cancel request failed.", "error", err)
	}
}

func putUint32(b []byte, v uint32) {
	b[0], b[1], b[2], b[3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
}

// cancelKey is what a client holds: the backend PID with pgshield's own
// random secret in place of the backend's.
type cancelKey struct {
	pid uint32
	key [4]byte
}

// cancelRegistry maps the keys clients hold to their backends, whose own
// keys never leave the gateway.
type cancelRegistry struct {
	mu sync.Mutex
	m  map[cancelKey]*pgbackend.Backend
}

func (r *cancelRegistry) register(b *pgbackend.Backend) (cancelKey, error) {
	ck := cancelKey{pid: b.PID}
	if _, err := rand.Read(ck.key[:]); err != nil {
		return ck, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[cancelKey]*pgbackend.Backend{}
	}
	r.m[ck] = b
	return ck, nil
}

func (r *cancelRegistry) lookup(ck cancelKey) (*pgbackend.Backend, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, ok := r.m[ck]
	return b, ok
}

func (r *cancelRegistry) remove(ck cancelKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.m, ck)
}
