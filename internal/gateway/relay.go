package gateway

import (
	"encoding/binary"
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

// maxClientMsg bounds one message from an authenticated client, as
// PostgreSQL's PQ_LARGE_MESSAGE_LIMIT (1 GB) does; larger is a protocol
// violation and ends the session.
const maxClientMsg = 1 << 30

// session is the relaying state of one established connection that policy
// may end from outside.
type session struct {
	client, backend net.Conn
	kill            atomic.Pointer[pgproto3.ErrorResponse]
	once            sync.Once

	// stopping is set when the client has ended its session, to wake the
	// downstream copy without closing the backend (it may be pooled).
	stopping atomic.Bool
	// pending counts the Query, Sync and FunctionCall messages sent
	// whose ReadyForQuery has not come back; status is the last
	// ReadyForQuery's status byte. The upstream copy adds before it
	// forwards; the downstream copy subtracts before the client can see
	// the reply, so a client's Terminate always finds pending current.
	pending atomic.Int64
	status  atomic.Uint32
	// wake, if set, replaces waking the backend reader in terminate
	// (transaction pooling: the backend changes, or there is none).
	wake func()
}

// terminate asks the relay to end the session with msg at the next message
// boundary of the backend stream. Safe to call from any goroutine, any
// number of times; the first message wins.
func (s *session) terminate(msg *pgproto3.ErrorResponse) {
	s.once.Do(func() {
		s.kill.Store(msg)
		if s.wake != nil {
			s.wake()
			return
		}
		// Wake the downstream copy if it is waiting for the backend.
		_ = s.backend.SetReadDeadline(time.Now())
	})
}

// relay copies both ways until either side ends. Upstream, messages are
// read whole (a header, then the body) and forwarded in batches; the
// client's Terminate is kept from the backend. Downstream, a wire.Tracker
// follows message boundaries (a header read per message, no copying) so
// that terminate can inject its ErrorResponse between two messages, and
// notes each ReadyForQuery. reusable reports that the client ended the
// session cleanly with the backend idle at a message boundary, nothing
// outstanding and no transaction open: the backend is then left open, for
// the pool; otherwise both connections are closed.
func (s *session) relay() (up, down int64, reusable bool) {
	s.status.Store('I')
	var clientEnded, downClean bool
	upDone := make(chan struct{})
	downDone := make(chan struct{})
	go func() {
		defer close(upDone)
		up, clientEnded = s.upstream()
	}()
	go func() {
		defer close(downDone)
		down, downClean = s.downstream()
	}()
	select {
	case <-upDone:
		if clientEnded {
			s.stopping.Store(true)
			_ = s.backend.SetReadDeadline(time.Now())
			<-downDone
			reusable = downClean && s.kill.Load() == nil && s.pending.Load() == 0 && s.status.Load() == 'I'
		}
	case <-downDone:
	}
	s.client.Close()
	if !reusable {
		s.backend.Close()
	}
	<-upDone
	<-downDone
	if reusable {
		_ = s.backend.SetDeadline(time.Time{})
	}
	return up, down, reusable
}

// upstream forwards the client's messages until it ends the session.
// clientEnded is true for a Terminate or a hangup at a message boundary
// with no extended-protocol message after the last Sync (a Bind or Execute
// without its Sync would otherwise be committed by the pool's reset).
func (s *session) upstream() (total int64, clientEnded bool) {
	br := newMsgReader(s.client)
	defer br.Close()
	var out []byte // grows with the batches; small while idle
	dirty := false // an extended-protocol message since the last Sync
	flush := func() bool {
		if len(out) == 0 {
			return true
		}
		n, err := s.backend.Write(out)
		total += int64(n)
		out = out[:0]
		return err == nil
	}
	for {
		if br.Buffered() < 5 && !flush() {
			return total, false
		}
		hdr, err := br.Peek(5)
		if err != nil {
			flush()
			return total, isHangup(err) && len(hdr) == 0 && !dirty
		}
		typ, n := hdr[0], binary.BigEndian.Uint32(hdr[1:])
		if n < 4 || n > maxClientMsg {
			flush()
			return total, false
		}
		switch typ {
		case 'X':
			return total, flush() && !dirty
		case 'Q', 'F':
			s.pending.Add(1)
		case 'S':
			s.pending.Add(1)
			dirty = false
		case 'P', 'B', 'E', 'D', 'C', 'H':
			dirty = true
		}
		size := int(n) + 1
		if size <= br.Size() {
			if br.Buffered() < size && !flush() {
				return total, false
			}
			msg, err := br.Peek(size)
			if err != nil {
				flush()
				return total, false
			}
			out = append(out, msg...)
			_, _ = br.Discard(size)
			if len(out) >= 32<<10 && !flush() {
				return total, false
			}
			continue
		}
		if !flush() {
			return total, false
		}
		w, err := io.CopyN(s.backend, br, int64(size))
		total += w
		if err != nil {
			return total, false
		}
	}
}

// downstream forwards the backend's messages. clean is true when it
// stopped because the client ended the session (stopping) at a message
// boundary.
func (s *session) downstream() (total int64, clean bool) {
	// A small buffer while idle, a borrowed large one while reads fill
	// it (relaybuf.go).
	small := smallBufs.Get().(*[]byte)
	var big *[]byte
	defer func() {
		smallBufs.Put(small)
		if big != nil {
			bigBufs.Put(big)
		}
	}()
	var tr wire.Tracker
	var killBy time.Time
	full := false // the last read filled its buffer
	for {
		switch {
		case full && big == nil:
			big = bigBufs.Get().(*[]byte) // a stream: read it in large chunks
		case !full && big != nil:
			bigBufs.Put(big)
			big = nil
		}
		buf := *small
		if big != nil {
			buf = *big
		}
		n, err := s.backend.Read(buf)
		full = n == len(buf)
		msg := s.kill.Load()
		if n > 0 {
			wasBoundary := tr.AtBoundary()
			ready := tr.Ready
			last := tr.Advance(buf[:n])
			if d := tr.Ready - ready; d > 0 {
				// Before the client can see the reply (see pending).
				s.status.Store(uint32(tr.Status))
				s.pending.Add(-d)
			}
			if msg != nil && (last > 0 || wasBoundary) {
				// Cut at the last boundary in this chunk and end here.
				if last > 0 {
					w, _ := s.client.Write(buf[:last])
					total += int64(w)
				}
				s.sendFinal(msg)
				return total, false
			}
			w, werr := s.client.Write(buf[:n])
			total += int64(w)
			if werr != nil {
				return total, false
			}
		}
		if err != nil {
			if !isTimeout(err) {
				return total, false
			}
			if msg == nil {
				if s.stopping.Load() {
					return total, tr.AtBoundary()
				}
				continue // a stale deadline; not ours to act on
			}
			if killBy.IsZero() {
				killBy = time.Now().Add(killGrace)
			}
			if tr.AtBoundary() {
				s.sendFinal(msg)
				return total, false
			}
			if time.Now().After(killBy) {
				return total, false // no boundary in time: cut without a message
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
