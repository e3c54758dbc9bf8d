package gateway

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/wire"
)

// killGrace bounds how long a session being ended waits for the backend
// stream to reach a message boundary before it is cut without a message.
const killGrace = time.Second

// session is the relaying state of one established connection that policy
// may end from outside.
type session struct {
	client, backend net.Conn
	kill            atomic.Pointer[pgproto3.ErrorResponse]
	once            sync.Once
}

// terminate asks the relay to end the session with msg at the next message
// boundary of the backend stream. Safe to call from any goroutine, any
// number of times; the first message wins.
func (s *session) terminate(msg *pgproto3.ErrorResponse) {
	s.once.Do(func() {
		s.kill.Store(msg)
		// Wake the downstream copy if it is waiting for the backend.
		_ = s.backend.SetReadDeadline(time.Now())
	})
}

// relay copies both ways until either side ends. Upstream bytes are copied
// as they come. Downstream, a Tracker follows message boundaries (a header
// read per message, no copying) so that terminate can inject its
// ErrorResponse between two messages.
func (s *session) relay() (up, down int64) {
	done := make(chan struct{}, 2)
	go func() {
		up, _ = io.Copy(s.backend, s.client)
		done <- struct{}{}
	}()
	go func() {
		down = s.downstream()
		done <- struct{}{}
	}()
	<-done
	s.client.Close()
	s.backend.Close()
	<-done
	return up, down
}

func (s *session) downstream() int64 {
	buf := make([]byte, 32<<10)
	var tr wire.Tracker
	var total int64
	var killBy time.Time
	for {
		n, err := s.backend.Read(buf)
		msg := s.kill.Load()
		if n > 0 {
			wasBoundary := tr.AtBoundary()
			last := tr.Advance(buf[:n])
			if msg != nil && (last > 0 || wasBoundary) {
				// Cut at the last boundary in this chunk and end here.
				if last > 0 {
					w, _ := s.client.Write(buf[:last])
					total += int64(w)
				}
				s.sendFinal(msg)
				return total
			}
			w, werr := s.client.Write(buf[:n])
			total += int64(w)
			if werr != nil {
				return total
			}
		}
		if err != nil {
			if msg == nil || !isTimeout(err) {
				return total
			}
			if killBy.IsZero() {
				killBy = time.Now().Add(killGrace)
			}
			if tr.AtBoundary() {
				s.sendFinal(msg)
				return total
			}
			if time.Now().After(killBy) {
				return total // no boundary in time: cut without a message
			}
			_ = s.backend.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		}
	}
}

func (s *session) sendFinal(msg *pgproto3.ErrorResponse) {
	_ = s.client.SetWriteDeadline(time.Now().Add(time.Second))
	_ = wire.Send(s.client, msg)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}
