package gateway

import (
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/wire"
)

// Leadership says whether this node may serve read-write sessions: in a
// high-availability cluster, whether it is the confirmed primary (the
// fence of internal/cluster/fence, issue #18's "fencing in layers").
// Config.Leadership nil is a single node, which always may.
type Leadership interface {
	// MayWrite reports whether read-write sessions may run now. It must
	// not call back into the gateway.
	MayWrite() bool
	// Watch calls onChange, from any goroutine, whenever MayWrite may
	// have changed, until stop is called; the gateway reads MayWrite
	// again each time (a call that changes nothing is harmless).
	// onChange does not block for long: it asks the sessions to end and
	// returns.
	Watch(onChange func()) (stop func())
}

// leadershipState is what the gateway last saw of Config.Leadership.
type leadershipState struct {
	// fenced is set while the node is not the confirmed primary: a
	// session that starts relaying is ended at once (its login passed
	// checkLeadership before the fence).
	fenced atomic.Bool
	// mu serializes the transitions (leadershipChanged).
	mu struct {
		sync.Mutex
		// seen is set once MayWrite has been read: the first reading is
		// the starting state, not a transition, and is not audited.
		seen bool
	}
}

// fencedMessage is what a session ended by a fence sees: 57P01, as
// PostgreSQL's own shutdown, so that a client reconnects, and libpq's
// multi-host target_session_attrs=read-write tries the next host.
func fencedMessage() *pgproto3.ErrorResponse {
	return wire.ErrorMessage(wire.CodeAdminShutdown,
		"terminating connection: this node is no longer the confirmed primary")
}

// watchLeadership follows Config.Leadership for as long as Serve runs;
// stop ends the watch. The first reading comes after the watch starts, so
// no change falls between the two.
func (s *Server) watchLeadership() (stop func()) {
	if s.cfg.Leadership == nil {
		return func() {}
	}
	stop = s.cfg.Leadership.Watch(s.leadershipChanged)
	s.leadershipChanged()
	return stop
}

// leadershipChanged reads MayWrite and acts on a transition. Losing
// leadership ends every relaying session with fencedMessage at a message
// boundary (session pooling and transaction pooling alike: both are
// listed by addSession), closes the pooled idle backends (one in use is
// closed when it comes back: DrainPool), and refuses logins from then
// on (checkLeadership); it is audited once as cluster.fenced. Regaining
// it lets logins in again, audited as cluster.confirmed. Lock order:
// leadership.mu, then Server.mu.
func (s *Server) leadershipChanged() {
	st := &s.leadership
	st.mu.Lock()
	defer st.mu.Unlock()
	may := s.cfg.Leadership.MayWrite()
	first := !st.mu.seen
	if !first && may == !st.fenced.Load() {
		return
	}
	st.mu.seen = true
	if may {
		st.fenced.Store(false)
		if !first {
			s.cfg.Log.Info("Leadership confirmed; logins allowed again.")
			s.cfg.Audit(audit.Event{Type: "cluster.confirmed", Outcome: audit.OutcomeSuccess,
				Reason: "this node is the confirmed primary again"})
		}
		return
	}
	// Set before the sessions are listed: one that is added after the
	// listing finds it set (addSession).
	st.fenced.Store(true)
	msg := fencedMessage()
	s.mu.Lock()
	ended := len(s.mu.sessions)
	for sess := range s.mu.sessions {
		sess.terminate(msg)
	}
	s.mu.Unlock()
	s.DrainPool()
	if first {
		// Starting fenced (a fence starts so, until its first
		// confirmation) is not a transition; there are no sessions yet.
		return
	}
	s.cfg.Log.Warn("Leadership lost: every session ended, logins refused.", "sessions_ended", ended)
	s.cfg.Audit(audit.Event{Type: "cluster.fenced", Outcome: audit.OutcomeFailure,
		Reason: "this node is no longer the confirmed primary", Fields: map[string]any{"sessions_ended": ended}})
}

// mayWrite reports whether sessions may run now: no Leadership, or one
// that says so and has not been seen to fence. MayWrite is read directly
// as well, since a fence's deadline can pass before it tells anyone.
func (s *Server) mayWrite() bool {
	if s.cfg.Leadership == nil {
		return true
	}
	return !s.leadership.fenced.Load() && s.cfg.Leadership.MayWrite()
}

// endIfFenced ends sess at once when the node is not the confirmed
// primary: its login passed checkLeadership before the fence fell.
func (s *Server) endIfFenced(sess *session) {
	if !s.mayWrite() {
		sess.terminate(fencedMessage())
	}
}

// checkLeadership refuses a login on a node that is not the confirmed
// primary, with 57P01 so that a multi-host client moves on to the next
// host. It runs after TLS and before any authentication work. The audit
// record is within the flood budget: a client can cause it at will.
func (c *clientConn) checkLeadership() error {
	if c.srv.mayWrite() {
		return nil
	}
	c.srv.logClient(c.log, "Refused a login: this node is not the confirmed primary.")
	if ok, _ := c.srv.floodAudits.allow(c.srv.cfg.Now()); ok {
		c.srv.cfg.Audit(audit.Event{Type: "connection.refused", Outcome: audit.OutcomeFailure, Client: c.src.String(),
			User: c.user, Database: c.db, Rule: c.rule, Reason: "this node is not the confirmed primary"})
	}
	return clienterr.New(wire.CodeAdminShutdown,
		"this node is not the confirmed primary of its cluster; connect to another host")
}
