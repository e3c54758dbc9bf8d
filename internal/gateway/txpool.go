package gateway

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/pgbackend"
	"github.com/pgshield/pgshield/internal/pool"
	"github.com/pgshield/pgshield/internal/wire"
)

// Transaction pooling (pgshield.pool_mode = transaction), as PgBouncer's
// transaction mode: a client holds a backend only from its first message
// after an idle point to the next ReadyForQuery 'I' with nothing
// outstanding (every Query, Sync and FunctionCall answered, no extended
// message after the last Sync, nothing still to be written). Between
// transactions the backend is back in the pool, and the client's next
// message takes one (pgshield.pool_wait_timeout, then 53300).
//
// Isolation is session pooling's: a backend that changes clients is
// checked, reset (DISCARD ALL when pgshield_guard reports state to clear)
// and rebound to the new client, and none of the client's messages runs
// unless that succeeded; the hand-over travels in the same write as the
// client's first messages (txhandover.go). Only a backend that comes back
// to the client that used it last is not handed over. Session features
// pin the client to its backend (needsPin). The client's named statements
// are re-prepared where they are missing.

// maxPreparedStatements bounds the named statements tracked per client
// (PgBouncer's max_prepared_statements); a client that prepares more is
// pinned, as its statements then live on its backend alone.
const maxPreparedStatements = 200

// maxOutstanding bounds the answers a client may await at once (a client
// pipelining more without reading is ended).
const maxOutstanding = 1 << 16

// maxPreparedBytes bounds the Parse bodies kept per client; past it the
// client is pinned, as past maxPreparedStatements.
const maxPreparedBytes = 1 << 20

// holdBack is how much of an extended-protocol batch without its Sync
// the gateway keeps before forwarding it anyway (statements it references
// can then no longer be re-prepared ahead of it).
const holdBack = 64 << 10

// txClientIDs names transaction-mode clients for pooled.owner.
var txClientIDs atomic.Uint64

// txRelay is one transaction-mode client's relay.
type txRelay struct {
	c      *clientConn
	sess   *session
	login  loginResult
	target *cancelTarget
	key    pool.Key
	id     uint64
	pid0   uint32 // the login's backend, for the audit
	// stmts are the client's named statements (name -> Parse body); only
	// upstream touches it.
	stmts     map[string][]byte
	stmtBytes int // the sum of stmts' bodies
	// idEnc is the client's identity as every hand-over binds it
	// (handoverMsgs; only upstream touches it).
	idEnc *pgbackend.EncodedIdentity

	up, down atomic.Int64
	failOnce sync.Once
	failed   chan struct{}
	// ctx ends when the session does: a wait for a backend ends with it.
	ctx    context.Context
	cancel context.CancelFunc

	mu struct {
		sync.Mutex
		h *held // the backend serving the client; nil between transactions
		// down is closed when h's downstream copy ends.
		down chan struct{}
		// segs has one entry per ReadyForQuery to come: nil for the
		// client's, the names re-prepared for an injected Parse + Sync
		// (whose answers the client never sees).
		segs     [][]string
		dirty    bool // an extended-protocol message since the last Sync
		unsent   bool // bytes for h not yet written
		pinned   bool
		stopping bool
		status   byte
		clean    bool // the downstream stopped at a boundary for stopping
		// ho is the pipelined hand-over of h awaiting its answer (nil
		// once answered, or if h needed none).
		ho *hoWait
	}
}

// hoWait is a pipelined hand-over in flight: the downstream copy sends
// its verdict (true: handed over) once it has read the answer.
type hoWait struct {
	verdict chan bool
	full    bool
	why     string // a refusal's message, set before the verdict
}

// newTxRelay sets up a transaction-mode session on sess (before any
// policy can end it: its wake is the relay's). h0, the backend the client
// logged in on, bound to it, goes back to the pool at once.
func (c *clientConn) newTxRelay(sess *session, h0 *held, login loginResult, target *cancelTarget) *txRelay {
	t := &txRelay{c: c, sess: sess, login: login, target: target, key: h0.key, id: txClientIDs.Add(1),
		stmts: map[string][]byte{}, failed: make(chan struct{}), pid0: h0.b.PID}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	t.mu.status = 'I'
	sess.wake = t.wake
	h0.lease.Conn.owner, h0.lease.Conn.stmts = t.id, map[string][]byte{}
	t.park(h0)
	return t
}

// run relays until either side ends; the result is the backend held at
// the end (nil if none) and whether it may be pooled.
func (t *txRelay) run() (*held, bool) {
	c, sess := t.c, t.sess

	upDone := make(chan struct{})
	var clientEnded bool
	go func() {
		defer close(upDone)
		clientEnded = t.upstream()
	}()
	select {
	case <-upDone:
	case <-t.failed:
	}
	t.mu.Lock()
	t.mu.stopping = true
	h, down := t.mu.h, t.mu.down
	t.mu.Unlock()
	reusable := false
	select {
	case <-upDone:
		if clientEnded && h != nil {
			// Stop the downstream copy at a boundary, keeping the backend.
			_ = h.b.Conn.SetReadDeadline(time.Now())
			<-down
			t.mu.Lock()
			reusable = t.mu.clean && len(t.mu.segs) == 0 && !t.mu.dirty && !t.mu.unsent &&
				t.mu.status == 'I' && sess.kill.Load() == nil
			t.mu.Unlock()
		}
	default:
	}
	if h != nil && down != nil && sess.kill.Load() != nil {
		// The downstream copy ends the session with the kill's message,
		// at a boundary or within killGrace: let it, before the close.
		<-down
	}
	c.conn.Close()
	if h != nil && !reusable {
		h.b.Conn.Close()
	}
	<-upDone
	t.cancel()
	if down != nil {
		<-down
	}
	if reusable {
		_ = h.b.Conn.SetDeadline(time.Time{})
	}
	dur := c.srv.cfg.Now().Sub(c.start).Seconds()
	c.log.Info("Session closed.", "duration", fmt.Sprintf("%.2fs", dur), "bytes_in", t.up.Load(), "bytes_out", t.down.Load())
	c.srv.cfg.Audit(auditEnd(c, dur, t.up.Load(), t.down.Load(), t.pid0))
	return h, reusable
}

func (t *txRelay) fail() { t.failOnce.Do(func() { close(t.failed) }) }

// wake is session.terminate's: the backend reader if a backend serves the
// client, else the client reader (upstream), to end at a boundary.
func (t *txRelay) wake() {
	t.cancel() // a wait for a backend
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.mu.h != nil {
		_ = t.mu.h.b.Conn.SetReadDeadline(time.Now())
		return
	}
	_ = t.sess.client.SetReadDeadline(time.Now())
}

// park returns h to the pool, still bound to this client; the client's
// cancel key first stops pointing at it (after a cancel on its way).
func (t *txRelay) park(h *held) {
	t.target.clear(h.b)
	t.c.srv.pool.Put(h.lease)
}

// upstream forwards the client's messages, taking a backend when one is
// needed; true when the client ended cleanly (see session.upstream).
func (t *txRelay) upstream() (clientEnded bool) {
	br := newMsgReader(t.sess.client) // small while idle (relaybuf.go)
	defer br.Close()
	out := make([]byte, 0, 4<<10) // grows with the batches; small while idle
	var cur *held
	segStart := 0       // where the client's current batch begins in out
	segFlushed := false // part of it was written already
	sawFlush := false
	copyUnsent := false // COPY data in out: the backend may not go yet
	hoLen := 0          // a hand-over at the start of out, to be written
	var hoW *hoWait     // its verdict, awaited after that write
	write := func(p []byte) bool {
		n, err := cur.b.Conn.Write(p)
		if hoLen == 0 {
			t.up.Add(int64(n))
			return err == nil
		}
		t.up.Add(int64(max(n-hoLen, 0)))
		if err != nil {
			return false
		}
		// Nothing more goes to the backend before the hand-over's answer:
		// if it refused, these bytes go to another backend instead.
		replay, w := p[hoLen:], hoW
		hoLen, hoW = 0, nil
		return t.awaitHandover(&cur, replay, w)
	}
	// flush writes out, but keeps back an incomplete extended batch so
	// that statements it references can still be re-prepared ahead of it.
	flush := func(all bool) bool {
		if cur == nil || len(out) == 0 {
			return true
		}
		t.mu.Lock()
		dirty := t.mu.dirty
		t.mu.Unlock()
		n := len(out)
		if dirty && !all && !sawFlush && len(out) < holdBack {
			n = segStart
		} else if dirty {
			segFlushed = true
		}
		ok := n == 0 || write(out[:n])
		out = append(out[:0], out[n:]...)
		segStart -= n
		sawFlush = false
		if copyUnsent && len(out) == 0 {
			copyUnsent = false
			t.clearUnsent(cur)
		}
		return ok
	}
	killed := func() bool {
		msg := t.sess.kill.Load()
		if msg == nil {
			return false
		}
		t.mu.Lock()
		h := t.mu.h
		t.mu.Unlock()
		if h == nil { // no downstream copy to end the session
			t.sess.sendFinal(msg)
		}
		return true
	}
	for {
		if br.Buffered() < 5 && !flush(false) {
			return false
		}
		hdr, err := br.Peek(5)
		if err != nil {
			if isTimeout(err) { // wake's deadline
				_ = t.sess.client.SetReadDeadline(time.Time{})
				if killed() {
					return false
				}
				continue
			}
			if killed() {
				return false
			}
			flush(true)
			t.mu.Lock()
			dirty := t.mu.dirty
			t.mu.Unlock()
			return isHangup(err) && len(hdr) == 0 && !dirty
		}
		typ, n := hdr[0], binary.BigEndian.Uint32(hdr[1:])
		if n < 4 || n > maxClientMsg {
			flush(true)
			return false
		}
		if typ == 'X' {
			if !flush(true) {
				return false
			}
			t.mu.Lock()
			dirty := t.mu.dirty
			t.mu.Unlock()
			return !dirty
		}
		size := int(n) + 1
		var msg []byte // the whole message, if it fits the buffer
		if size <= br.Size() {
			if msg, err = br.Peek(size); err != nil {
				if isTimeout(err) {
					_ = t.sess.client.SetReadDeadline(time.Time{})
					if killed() {
						return false
					}
					continue
				}
				return false
			}
		}
		// A message too large to hold whole: a Bind or Describe (large
		// parameters) still names its statement at its start.
		head := msg
		if msg == nil && (typ == 'B' || typ == 'D' || typ == 'C') {
			if head, err = br.Peek(br.Size()); err != nil {
				if isTimeout(err) {
					_ = t.sess.client.SetReadDeadline(time.Time{})
					if killed() {
						return false
					}
					continue
				}
				return false
			}
		}
		if killed() {
			return false
		}

		t.mu.Lock()
		if t.mu.h == nil {
			if typ == 'd' || typ == 'c' || typ == 'f' {
				// COPY data outside a COPY: PostgreSQL ignores it too.
				t.mu.Unlock()
				if _, err := br.Discard(size); err != nil {
					return false
				}
				continue
			}
			t.mu.Unlock()
			h, ho, err := t.acquire(true, false)
			if err != nil {
				if !killed() {
					t.sess.sendFinal(err)
				}
				return false
			}
			if ho != nil {
				prefix, err := ho.bytes()
				if err != nil {
					t.c.srv.pool.Discard(h.lease)
					t.sess.sendFinal(wire.ErrorResponse(errUnavailable()))
					return false
				}
				rest := len(out) // none expected: a message waits for a backend
				out = append(out, prefix...)
				copy(out[len(prefix):], out[:rest])
				copy(out, prefix)
				hoLen = len(prefix)
			}
			t.mu.Lock()
			if t.sess.kill.Load() != nil {
				t.mu.Unlock()
				t.target.set(nil)
				t.c.srv.pool.Discard(h.lease)
				killed()
				return false
			}
			t.mu.h, t.mu.down, t.mu.status = h, make(chan struct{}), 'I'
			t.mu.ho = nil
			if ho != nil {
				for range ho.segs {
					t.mu.segs = append(t.mu.segs, handoverSeg)
				}
				t.mu.ho = &hoWait{verdict: make(chan bool, 1), full: ho.full}
				hoW = t.mu.ho // kept: the downstream clears t.mu.ho when it answers
			}
			go t.downstream(h, t.mu.down)
			cur, segStart, segFlushed = h, hoLen, false
		}
		// Track the message (under the lock the downstream decides a
		// release by).
		startBatch := !t.mu.dirty
		switch typ {
		case 'Q', 'F', 'S':
			if len(t.mu.segs) >= maxOutstanding {
				t.mu.Unlock()
				return false
			}
			t.mu.segs = append(t.mu.segs, nil)
			if typ == 'S' {
				t.mu.dirty = false
			}
			if typ == 'F' {
				t.mu.pinned = true // a fastpath call can do anything
			}
			if typ == 'Q' && !t.mu.pinned && (msg == nil || needsPin(cstr(msg[5:]))) {
				t.mu.pinned = true
			}
		case 'd', 'c', 'f':
			// COPY data belongs to the Query in progress; outside one,
			// PostgreSQL ignores it, and so does the gateway. Until it is
			// written, the backend may not go (nothing else holds it).
			if len(t.mu.segs) == 0 {
				t.mu.Unlock()
				if _, err := br.Discard(size); err != nil {
					return false
				}
				continue
			}
			t.mu.unsent, copyUnsent = true, true
		default:
			t.mu.dirty = true
			if typ == 'H' {
				sawFlush = true
			}
			// A pinned client keeps its backend, but statements it prepared
			// before were dropped by that backend's rebind: they are still
			// re-prepared where a Bind or Describe names them.
			if (!t.mu.pinned || typ == 'B' || typ == 'D' || typ == 'C') && head != nil && (msg != nil || typ != 'P') {
				if inj := t.trackExtended(typ, head, cur); inj != nil {
					if !startBatch && segFlushed {
						// Too late to re-prepare ahead: the client gets
						// PostgreSQL's 26000, as without pooling after a
						// DEALLOCATE.
					} else {
						if len(t.mu.segs) >= maxOutstanding {
							t.mu.Unlock()
							return false
						}
						at := segStart
						if startBatch {
							at = len(out)
						}
						out = append(out[:at], append(inj.bytes, out[at:]...)...)
						segStart = at + len(inj.bytes)
						t.mu.segs = append(t.mu.segs, inj.names)
						for i, name := range inj.names {
							cur.lease.Conn.stmts[name] = inj.bodies[i]
						}
					}
				}
			} else if msg == nil && (typ == 'P') {
				t.mu.pinned = true // too large to keep for re-preparing
			}
		}
		t.mu.Unlock()
		if msg != nil {
			out = append(out, msg...)
			_, _ = br.Discard(size)
		} else {
			if !flush(true) {
				return false
			}
			w, err := io.CopyN(cur.b.Conn, br, int64(size))
			t.up.Add(w)
			if err != nil {
				return false
			}
			if copyUnsent {
				copyUnsent = false
				t.clearUnsent(cur)
			}
			segFlushed = true
		}
		t.mu.Lock()
		if !t.mu.dirty {
			segStart, segFlushed = len(out), false
		}
		t.mu.Unlock()
		if len(out) >= 32<<10 && !flush(false) {
			return false
		}
	}
}

// injection is a Parse + Sync for each statement a message references that
// the backend lacks.
type injection struct {
	bytes  []byte
	names  []string
	bodies [][]byte
}

// trackExtended notes the client's named Parse and Close, and returns the
// re-preparation a Bind or Describe of a statement the backend lacks
// needs. Called with t.mu held.
func (t *txRelay) trackExtended(typ byte, msg []byte, cur *held) *injection {
	body := msg[5:]
	bstmts := cur.lease.Conn.stmts
	switch typ {
	case 'P':
		name := cstr(body)
		if t.mu.pinned {
			return nil
		}
		if needsPin(cstr(body[min(len(name)+1, len(body)):])) {
			t.mu.pinned = true
			return nil
		}
		if name == "" {
			return nil
		}
		old, had := t.stmts[name]
		if (!had && len(t.stmts) >= maxPreparedStatements) || t.stmtBytes-len(old)+len(body) > maxPreparedBytes {
			t.mu.pinned = true // its statements then live on this backend only
			return nil
		}
		b := bytes.Clone(body)
		t.stmtBytes += len(b) - len(old)
		t.stmts[name] = b
		bstmts[name] = b
	case 'C':
		if len(body) > 0 && body[0] == 'S' {
			name := cstr(body[1:])
			t.stmtBytes -= len(t.stmts[name])
			delete(t.stmts, name)
			delete(bstmts, name)
		}
	case 'B', 'D':
		var name string
		if typ == 'B' {
			portal := cstr(body)
			if len(portal)+1 > len(body) {
				return nil
			}
			name = cstr(body[len(portal)+1:])
		} else if len(body) > 0 && body[0] == 'S' {
			name = cstr(body[1:])
		}
		want, ok := t.stmts[name]
		if name == "" || !ok {
			return nil
		}
		if have, ok := bstmts[name]; ok && bytes.Equal(have, want) {
			return nil
		}
		var inj injection
		if _, ok := bstmts[name]; ok { // another text under the name: close it first
			inj.bytes = appendMsg(inj.bytes, 'C', append([]byte{'S'}, append([]byte(name), 0)...))
		}
		inj.bytes = appendMsg(inj.bytes, 'P', want)
		inj.bytes = appendMsg(inj.bytes, 'S', nil)
		inj.names, inj.bodies = []string{name}, [][]byte{want}
		return &inj
	}
	return nil
}

func appendMsg(dst []byte, typ byte, body []byte) []byte {
	dst = append(dst, typ, 0, 0, 0, 0)
	binary.BigEndian.PutUint32(dst[len(dst)-4:], uint32(len(body)+4))
	return append(dst, body...)
}

// cstr is the NUL-terminated string at the start of b (all of b if none).
func cstr(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return string(b[:i])
	}
	return string(b)
}

// downstream forwards h's messages to the client, drops the answers to
// injected re-preparations, and gives h back to the pool at an idle point.
func (t *txRelay) downstream(h *held, done chan struct{}) {
	defer close(done)
	// Buffers borrowed per transaction, not allocated (relaybuf.go).
	br := newMsgReader(h.b.Conn)
	defer br.Close()
	outBuf := bigBufs.Get().(*[]byte)
	out := (*outBuf)[:0]
	defer func() {
		if cap(out) == bigBuf { // not outgrown (append made a new one)
			bigBufs.Put(outBuf)
		}
	}()
	var killBy time.Time
	inSeg, swallow, segErr := false, false, false
	hoSeg, hoWhy := false, "" // in the hand-over's answer; its error
	flush := func() bool {
		if len(out) == 0 {
			return true
		}
		n, err := t.sess.client.Write(out)
		t.down.Add(int64(n))
		out = out[:0]
		return err == nil
	}
	end := func() { flush(); t.fail() }
	for {
		if msg := t.sess.kill.Load(); msg != nil {
			flush()
			t.sess.sendFinal(msg)
			t.fail()
			return
		}
		if br.Buffered() < 5 && !flush() {
			t.fail()
			return
		}
		hdr, err := br.Peek(5)
		if err != nil {
			if !isTimeout(err) || len(hdr) > 0 {
				if len(hdr) > 0 && isTimeout(err) && t.waitMore(h, &killBy) {
					continue
				}
				if !isTimeout(err) && t.handoverLost(hoWhy) {
					return // nothing reached the client; the upstream goes on elsewhere
				}
				end()
				return
			}
			// A deadline set to wake this copy: cleared first, so that a
			// kill or stop set before it is seen below.
			_ = h.b.Conn.SetReadDeadline(time.Time{})
			if t.sess.kill.Load() != nil {
				continue // handled at the top, at this boundary
			}
			t.mu.Lock()
			stopping := t.mu.stopping
			if stopping {
				t.mu.clean = true
			}
			release := !stopping && t.releasableLocked(br)
			if release {
				t.mu.h = nil
			}
			t.mu.Unlock()
			if stopping {
				return
			}
			if release {
				t.park(h)
				return
			}
			continue
		}
		typ, n := hdr[0], binary.BigEndian.Uint32(hdr[1:])
		if n < 4 {
			end()
			return
		}
		size := int(n) + 1
		if !inSeg {
			t.mu.Lock()
			if len(t.mu.segs) > 0 {
				inSeg, swallow, segErr = true, t.mu.segs[0] != nil, false
				hoSeg = isHandoverSeg(t.mu.segs[0])
			}
			t.mu.Unlock()
		}
		if size > br.Size() {
			// A large message (a wide row): streamed, never swallowed
			// (an injected Parse + Sync has only small answers).
			if swallow || !flush() {
				end()
				return
			}
			if err := t.copyN(h, br, int64(size), &killBy); err != nil {
				t.fail()
				return
			}
			continue
		}
		msg, err := br.Peek(size)
		if err != nil {
			if isTimeout(err) && t.waitMore(h, &killBy) {
				continue
			}
			end()
			return
		}
		if typ == 'E' && swallow {
			segErr = true
			if hoSeg {
				hoWhy = errField(msg[5:], 'M')
			}
		}
		if typ == 'S' && cstr(msg[5:]) == pgbackend.DirtyParam { // the parameter's name
			// pgshield_guard's report for the gateway, not the client's.
			h.lease.Conn.dirty = true
			_, _ = br.Discard(size)
			continue
		}
		if !swallow {
			out = append(out, msg...)
		}
		var status byte
		if typ == 'Z' && len(msg) == 6 {
			status = msg[5]
		}
		_, _ = br.Discard(size)
		if typ != 'Z' {
			if len(out) >= 32<<10 && !flush() {
				t.fail()
				return
			}
			continue
		}
		// ReadyForQuery: the end of a segment. The client sees it before
		// the backend may go: a client's next message then either finds
		// this backend (counted before the release check) or takes another.
		if !flush() {
			t.fail()
			return
		}
		t.mu.Lock()
		if len(t.mu.segs) > 0 {
			if names := t.mu.segs[0]; names != nil && segErr {
				for _, name := range names {
					delete(h.lease.Conn.stmts, name)
				}
			}
			t.mu.segs = t.mu.segs[1:]
		}
		var handed *hoWait
		lastHO := hoSeg && (len(t.mu.segs) == 0 || !isHandoverSeg(t.mu.segs[0]))
		if lastHO && segErr {
			// An ERROR, not the guard's FATAL refusal, in the rebind itself
			// (one before the guard's hook: a cancel at PostgreSQL's first
			// interrupt check). pgshield_guard has poisoned the session: it
			// ends at the first hook of anything the client sent, so none
			// of it runs. The backend is closed and the client's bytes go
			// to another, as after a refusal. (An error in a DISCARD ALL
			// ahead is the rebind's to judge: it refuses a dirty session.)
			t.mu.Unlock()
			_ = h.b.Conn.Close()
			if t.handoverLost(hoWhy) {
				return
			}
			t.fail()
			return
		}
		if w := t.mu.ho; w != nil && lastHO {
			t.mu.ho, handed = nil, w
		}
		inSeg, hoSeg = false, false
		t.mu.status = status
		release := t.releasableLocked(br)
		if release {
			t.mu.h = nil
		}
		t.mu.Unlock()
		if handed != nil {
			t.handedOver(h.lease.Conn, handed.full)
			t.target.set(h.b) // cancels reach it from now on
			handed.verdict <- true
		}
		if release {
			t.park(h)
			return
		}
	}
}

// releasableLocked: the backend may go back to the pool, all answered,
// nothing pending to it, at an idle point.
func (t *txRelay) releasableLocked(br *msgReader) bool {
	return len(t.mu.segs) == 0 && !t.mu.dirty && !t.mu.unsent && !t.mu.pinned && !t.mu.stopping &&
		t.mu.status == 'I' && br.Buffered() == 0 && t.sess.kill.Load() == nil
}

// clearUnsent notes that COPY data the client sent is written to cur; if
// that is all that kept cur, its downstream copy is woken to release it.
func (t *txRelay) clearUnsent(cur *held) {
	t.mu.Lock()
	t.mu.unsent = false
	nudge := t.mu.h == cur && len(t.mu.segs) == 0 && !t.mu.dirty && !t.mu.pinned && !t.mu.stopping && t.mu.status == 'I'
	t.mu.Unlock()
	if nudge {
		_ = cur.b.Conn.SetReadDeadline(time.Now())
	}
}

// waitMore handles a read timeout inside a message: a kill waits up to
// killGrace for the message to end; anything else is not ours to act on.
func (t *txRelay) waitMore(h *held, killBy *time.Time) bool {
	if t.sess.kill.Load() == nil {
		t.mu.Lock()
		stopping := t.mu.stopping
		t.mu.Unlock()
		if !stopping {
			_ = h.b.Conn.SetReadDeadline(time.Time{}) // a release nudge: not ours here
		}
		return !stopping
	}
	if killBy.IsZero() {
		*killBy = time.Now().Add(killGrace)
	}
	if time.Now().After(*killBy) {
		return false
	}
	_ = h.b.Conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	return true
}

func (t *txRelay) copyN(h *held, br *msgReader, n int64, killBy *time.Time) error {
	for n > 0 {
		w, err := io.CopyN(t.sess.client, br, n)
		t.down.Add(w)
		n -= w
		if err != nil {
			if isTimeout(err) && t.waitMore(h, killBy) {
				continue
			}
			return err
		}
	}
	return nil
}

// acquire takes a backend for the client's next transaction: the one it
// used last if idle (nothing to do, but close statements it has since
// closed), else another of its key, handed over to this client
// (txhandover.go), or a new one. With pipelined, a hand-over is returned
// to be sent ahead of the client's messages, unanswered yet (and the
// client's cancel key not yet pointing at the backend); without, it is
// run and answered here. Bounded by pgshield.pool_wait_timeout, then
// 53300; a backend failing its hand-over is closed and another tried.
//
// After a refusal (retry), the client's own last backend is not preferred,
// and is handed over like any other if it comes: the bytes resent hold the
// client's re-preparations, which must not meet statements of its own.
func (t *txRelay) acquire(pipelined, retry bool) (*held, *handover, *pgproto3.ErrorResponse) {
	c := t.c
	pp := c.srv.rt.Load().params.Pool
	ctx := t.ctx
	// A database whose backends fail the check (handoverCheck's
	// extensions) fails it on every idle one: room to go through them and
	// open a new one.
	for try := 0; try <= maxStaleTries+pp.Size; try++ {
		// The backend this client used last needs no reset for it.
		prefer := t.preferOwn
		if retry {
			prefer = nil
		}
		l, err := c.srv.pool.GetPreferWithin(ctx, t.key, prefer, pp.WaitTimeout)
		if err != nil {
			c.log.Warn("No backend available in the pool.", "wait_timeout", pp.WaitTimeout.String())
			return nil, nil, wire.ErrorResponse(clienterr.New(wire.CodeTooManyConnections,
				"sorry, too many clients already: no backend became free within %s (pgshield.pool_wait_timeout)", pp.WaitTimeout))
		}
		var ho *handover
		if !l.Reused {
			b, err := c.connectBackend(ctx, t.login)
			if err != nil {
				c.srv.pool.Discard(l)
				var be *pgbackend.BackendError
				if errors.As(err, &be) {
					return nil, nil, be.Msg
				}
				if ce, ok := wire.ClientError(err); ok {
					return nil, nil, wire.ErrorResponse(ce)
				}
				return nil, nil, wire.ErrorResponse(errUnavailable())
			}
			l.Conn = &pooled{b: b, owner: t.id, stmts: map[string][]byte{}}
			if err := recordSettings(l.Conn); err != nil {
				c.srv.pool.Discard(l)
				return nil, nil, wire.ErrorResponse(errUnavailable())
			}
		} else if peerGone(l.Conn.b.Conn) {
			c.log.Info("A pooled backend was closed by PostgreSQL; replaced.", "pg_backend_pid", l.Conn.b.PID)
			c.srv.pool.Discard(l)
			continue
		} else if l.Conn.owner == t.id && !retry {
			if err := t.setup(l.Conn); err != nil {
				c.log.Info("A pooled backend failed its setup; closed.", "pg_backend_pid", l.Conn.b.PID, "error", err)
				c.srv.pool.Discard(l)
				continue
			}
		} else {
			p := l.Conn
			if ho, err = t.handoverMsgs(p); err == nil && !pipelined {
				_, err = pipeline(p, ho.msgs, ho.segs)
			}
			if err != nil {
				c.log.Info("A pooled backend failed its hand-over; closed.", "pg_backend_pid", p.b.PID, "error", err)
				c.srv.pool.Discard(l)
				continue
			}
			p.owner, p.stmts = 0, map[string][]byte{} // until it passes
			if !pipelined {
				t.handedOver(p, ho.full)
				ho = nil
			}
		}
		h := &held{b: l.Conn.b, lease: l, key: t.key}
		if ho == nil {
			t.target.set(h.b)
		}
		return h, ho, nil
	}
	return nil, nil, wire.ErrorResponse(errUnavailable())
}

// setup makes p, which this client used last, fit to serve it again: a
// Close of each statement it has since closed or replaced.
func (t *txRelay) preferOwn(p *pooled) bool { return p.owner == t.id }

func (t *txRelay) setup(p *pooled) error {
	var msgs []pgproto3.FrontendMessage
	for name, body := range p.stmts {
		if want, ok := t.stmts[name]; !ok || !bytes.Equal(want, body) {
			msgs = append(msgs, &pgproto3.Close{ObjectType: 'S', Name: name})
			delete(p.stmts, name)
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	msgs = append(msgs, &pgproto3.Sync{})
	_, err := pipeline(p, msgs, 1)
	return err
}

// runPipeline writes msgs to an idle backend and reads the answers up to
// the rfqs-th ReadyForQuery, within resetTimeout; any ErrorResponse, COPY or
// status but idle fails it. With checkRow, the last DataRow's first
// column must be handoverCheck's pass for role.
func runPipeline(p *pooled, msgs []pgproto3.FrontendMessage, rfqs int, role string, checkRow bool) error {
	row, err := pipeline(p, msgs, rfqs)
	if err != nil {
		return err
	}
	if checkRow {
		return p.checkPass(firstCol(row), role)
	}
	return nil
}

// pipeline writes msgs to an idle backend and reads the answers up to the
// rfqs-th ReadyForQuery, within resetTimeout; any ErrorResponse, COPY or
// status but idle fails it. It returns the last DataRow.
func pipeline(p *pooled, msgs []pgproto3.FrontendMessage, rfqs int) ([]string, error) {
	b := p.b
	_ = b.Conn.SetDeadline(time.Now().Add(resetTimeout))
	defer b.Conn.SetDeadline(time.Time{})
	var buf []byte
	for _, m := range msgs {
		var err error
		if buf, err = m.Encode(buf); err != nil {
			return nil, err
		}
	}
	if _, err := b.Conn.Write(buf); err != nil {
		return nil, err
	}
	fe := pgproto3.NewFrontend(b.Conn, nil)
	fe.SetMaxBodyLen(1 << 20)
	var row []string
	seen := 0
	for i := 0; i < 1000 && seen < rfqs; i++ {
		msg, err := fe.Receive()
		if err != nil {
			return nil, err
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			return nil, fmt.Errorf("%w: %s %s", errNotReusable, m.Code, m.Message)
		case *pgproto3.DataRow:
			row = row[:0]
			for _, v := range m.Values {
				row = append(row, string(v))
			}
		case *pgproto3.ReadyForQuery:
			seen++
			b.TxStatus = m.TxStatus
			if m.TxStatus != 'I' {
				return nil, fmt.Errorf("%w: transaction status %q", errNotReusable, m.TxStatus)
			}
		case *pgproto3.CopyInResponse, *pgproto3.CopyOutResponse, *pgproto3.CopyBothResponse:
			return nil, fmt.Errorf("%w: COPY during setup", errNotReusable)
		}
	}
	if seen < rfqs {
		return nil, fmt.Errorf("%w: no reply to the setup", errNotReusable)
	}
	return row, nil
}

// auditEnd is the session.end event of a transaction-mode session.
func auditEnd(c *clientConn, dur float64, up, down int64, pid uint32) audit.Event {
	return audit.Event{Type: "session.end", Client: c.src.String(), User: c.user, Database: c.db,
		Fields: map[string]any{"duration_seconds": dur, "bytes_in": up, "bytes_out": down, "pg_backend_pid": pid,
			"pool_mode": "transaction"}}
}
