package gateway

import (
	"net"
	"net/netip"
	"sync"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/wire"
)

// AccessPolicy is the network policy as the gateway sees it.
type AccessPolicy interface {
	// Allow decides for a new connection from src; rule names the deciding
	// rule for the log and audit ("" for the default).
	Allow(src netip.Addr) (ok bool, rule string)
	// Watch calls onDenied once if, after a rule change or expiry, src is no
	// longer allowed. stop ends the watch.
	Watch(src netip.Addr, onDenied func()) (stop func())
}

type allowAll struct{}

func (allowAll) Allow(netip.Addr) (bool, string)        { return true, "" }
func (allowAll) Watch(netip.Addr, func()) (stop func()) { return func() {} }

// policyWatch ends a connection that policy stops allowing: before the
// session is relaying, by closing it; after, with an ErrorResponse at a
// message boundary.
type policyWatch struct {
	raw net.Conn
	// audit records that policy ended the connection.
	audit func()
	mu    sync.Mutex
	// denied is set once policy has ended the connection.
	gone bool
	sess *session
}

// terminatedByPolicy is what a client sees when a rule change ends it.
func terminatedByPolicy() *pgproto3.ErrorResponse {
	return wire.ErrorMessage(wire.CodeAdminShutdown,
		"terminating connection because the server's network rules no longer allow this client")
}

func (w *policyWatch) denied() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.gone = true
	if w.audit != nil {
		w.audit()
	}
	if w.sess != nil {
		w.sess.terminate(terminatedByPolicy())
		return
	}
	w.raw.Close()
}

// relaying hands the session over; false if policy already ended it.
func (w *policyWatch) relaying(s *session) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.gone {
		return false
	}
	w.sess = s
	return true
}

func remoteAddr(c net.Conn) netip.Addr {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		if a, ok := netip.AddrFromSlice(ta.IP); ok {
			return a.Unmap()
		}
	}
	ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}
