package gateway

import (
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// drainState is what a shutdown or a restart of PostgreSQL changes in the
// gateway (Drain, StopAccepting, EndDrain).
type drainState struct {
	// endMsg, when set, ends every session that starts relaying: one that
	// finished its login while Drain was ending the others.
	endMsg atomic.Pointer[pgproto3.ErrorResponse]
	// stopped is set by StopAccepting: Serve then takes a closed listener
	// as the end of accepting, not as a failure.
	stopped atomic.Bool
	mu      sync.Mutex
	ln      net.Listener // the one Serve accepts on
}

// drainPoll is how often Drain looks whether the sessions have ended.
const drainPoll = 20 * time.Millisecond

// terminateWait bounds how long Drain waits, once it has asked the
// sessions left to end, for their relays to write the error and close: a
// relay ends at the next message boundary, or at once when idle.
const terminateWait = 5 * time.Second

func (d *drainState) setListener(ln net.Listener) {
	d.mu.Lock()
	d.ln = ln
	stopped := d.stopped.Load()
	d.mu.Unlock()
	if stopped {
		ln.Close()
	}
}

// StopAccepting closes the gateway's listener: new connections are refused
// by the kernel from now on. Serve goes on until its context ends, so the
// sessions open keep running.
func (s *Server) StopAccepting() {
	s.drain.mu.Lock()
	s.drain.stopped.Store(true)
	ln := s.drain.ln
	s.drain.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
}

// sessionCount is how many sessions are relaying.
func (s *Server) sessionCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.mu.sessions)
}

// Drain ends the gateway's sessions for a shutdown or a restart of
// PostgreSQL, as PostgreSQL's own smart-then-fast shutdown would: it lets
// them go on for up to grace (0: not at all) and returns as soon as none
// is left; then it ends those still open with msg at a message boundary
// (a client inside a transaction sees it rolled back), as well as any
// that starts relaying until EndDrain, waits a bounded time for their
// relays to close, and closes the pooled backends. New sessions are the
// caller's to refuse (Config.Available) or keep out (StopAccepting). It
// returns how many sessions it had to end.
func (s *Server) Drain(grace time.Duration, msg *pgproto3.ErrorResponse) (ended int) {
	deadline := time.Now().Add(grace)
	for s.sessionCount() > 0 {
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		time.Sleep(min(drainPoll, left))
	}
	s.drain.endMsg.Store(msg)
	s.mu.Lock()
	ended = len(s.mu.sessions)
	for sess := range s.mu.sessions {
		sess.terminate(msg)
	}
	s.mu.Unlock()
	for end := time.Now().Add(terminateWait); s.sessionCount() > 0 && time.Now().Before(end); {
		time.Sleep(drainPoll)
	}
	// Idle backends go now; one still in use closes when it comes back.
	s.pool.Drain()
	return ended
}

// EndDrain lets sessions relay again after a restart of PostgreSQL.
func (s *Server) EndDrain() { s.drain.endMsg.Store(nil) }

// endIfDraining ends sess at once when a Drain has ended the others: it
// finished its login after Drain looked.
func (s *Server) endIfDraining(sess *session) {
	if msg := s.drain.endMsg.Load(); msg != nil {
		sess.terminate(msg)
	}
}
