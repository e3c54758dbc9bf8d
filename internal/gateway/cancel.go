package gateway

import (
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/pgshield/pgshield/internal/pgbackend"
	"github.com/pgshield/pgshield/internal/wire"
)

// handleCancel delivers a client's CancelRequest to the backend serving
// it now (with pooling, not necessarily the one it started with). An
// unknown key, or a client no backend serves at the moment, is ignored:
// PostgreSQL answers a CancelRequest with nothing either way.
func (s *Server) handleCancel(ctx context.Context, st *wire.Startup, log *slog.Logger) {
	var key [4]byte
	putUint32(key[:], st.CancelKey)
	t, ok := s.cancels.lookup(cancelKey{pid: st.CancelPID, key: key})
	if !ok {
		s.logClient(log, "Cancel request with an unknown key ignored.")
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	// Held across the delivery: a backend leaves its client (set) only
	// once no cancel for that client is on its way to it, so a late cancel
	// never reaches the backend's next client.
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.b == nil {
		return
	}
	if err := s.cfg.Backend.Cancel(cctx, t.b.PID, t.b.Key); err != nil {
		if errors.Is(err, pgbackend.ErrCancelUnconfirmed) {
			// The signal may land after the backend has changed hands: it
			// serves this client to the end and is then closed.
			t.b.MarkCancelUnconfirmed()
		}
		log.Warn("Cancel request failed.", "error", err)
	}
}

func putUint32(b []byte, v uint32) {
	b[0], b[1], b[2], b[3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
}

// cancelKey is what a client holds: a backend PID with pgshield's own
// random secret in place of the backend's.
type cancelKey struct {
	pid uint32
	key [4]byte
}

// cancelTarget is the backend serving one client now; nil between
// transactions (transaction pooling) and once the session ends.
type cancelTarget struct {
	mu sync.Mutex
	b  *pgbackend.Backend
}

// set points the client's key at b (nil: none), after any cancel being
// delivered to the previous backend has been.
func (t *cancelTarget) set(b *pgbackend.Backend) {
	t.mu.Lock()
	t.b = b
	t.mu.Unlock()
}

// clear points the client's key at nothing if it still points at b (the
// client may already have taken another backend), after any cancel being
// delivered.
func (t *cancelTarget) clear(b *pgbackend.Backend) {
	t.mu.Lock()
	if t.b == b {
		t.b = nil
	}
	t.mu.Unlock()
}

// cancelRegistry maps the keys clients hold to the backends serving them,
// whose own keys never leave the gateway.
type cancelRegistry struct {
	mu sync.Mutex
	m  map[cancelKey]*cancelTarget
}

// register gives a client a new key, pointing at b; pid is what the
// client is told (the first backend's).
func (r *cancelRegistry) register(b *pgbackend.Backend) (cancelKey, *cancelTarget, error) {
	ck := cancelKey{pid: b.PID}
	if _, err := rand.Read(ck.key[:]); err != nil {
		return ck, nil, err
	}
	t := &cancelTarget{b: b}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[cancelKey]*cancelTarget{}
	}
	r.m[ck] = t
	return ck, t, nil
}

func (r *cancelRegistry) lookup(ck cancelKey) (*cancelTarget, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.m[ck]
	return t, ok
}

// remove forgets ck, and waits for a cancel being delivered through it.
func (r *cancelRegistry) remove(ck cancelKey) {
	r.mu.Lock()
	t := r.m[ck]
	delete(r.m, ck)
	r.mu.Unlock()
	if t != nil {
		t.set(nil)
	}
}
