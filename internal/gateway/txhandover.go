package gateway

import (
	"bytes"
	"fmt"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/pgbackend"
)

// Transaction pooling's hand-over of a backend to another client, sent in
// the same write as the client's first messages instead of a round trip
// ahead of them (with 200 clients on 20 backends nearly every transaction
// changes client, and the backend sat idle while the gateway waited).
//
// What makes that safe is pgshield_guard, not the gateway: the rebind
// carries expect= (the backend's settings digest), and the guard runs the
// hand-over check inside it and ends the backend (FATAL) unless the session
// is clean and its role may still open it. PostgreSQL reads a message only
// after it has finished the one before, so nothing of the client's runs on
// a backend that refused. The gateway then sends the same bytes to another
// backend, handed over with a round trip, as before. The rebind cannot end
// in a mere ERROR instead (which would let the client's messages run on a
// session still bound to the last client): it is a SET, which reaches the
// guard's utility hook with no catalog lookup or lock wait before it, and
// from the end of the last transaction until then the guard holds cancels
// (pg_cancel_backend, statement and lock timeouts), then drops them.
//
// The gateway knows whether the backend needs DISCARD ALL first from the
// guard: a backend bound with Report says so in a ParameterStatus
// (pgbackend.DirtyParam) at the end of a transaction that leaves session
// state; the rebind refuses a session that is dirty anyway, so the report
// is advice, never trusted for isolation.
//
// The prefix, each message its own: DISCARD ALL (if reported dirty), then
// Close of the unnamed statement and portal, and the rebind, SET
// pgshield_guard.bind_client: a utility statement, so no name is resolved
// (a hostile administrator's objects are never reached) and nothing is
// planned. (A FunctionCall of set_config by OID was tried first: its
// lookup of the function waits on a lock a database owner can hold with
// VACUUM FULL pg_catalog.pg_proc, before the guard runs.)

// handoverSeg marks, in txRelay's segs, a segment of the hand-over (a
// swallowed answer with no statement names); a re-preparation's entry
// always names one.
var handoverSeg = []string{}

func isHandoverSeg(s []string) bool { return s != nil && len(s) == 0 }

// handover is a hand-over of p to the client, built by handoverMsgs.
type handover struct {
	msgs []pgproto3.FrontendMessage
	segs int  // ReadyForQuery answers it gets
	full bool // with DISCARD ALL
}

// handoverMsgs builds the hand-over of p to this client. p must have a
// settings digest (recordSettings at its start).
func (t *txRelay) handoverMsgs(p *pooled) (*handover, error) {
	if p.b.CancelUnconfirmed() {
		return nil, fmt.Errorf("%w: a cancel for it may still arrive", errNotReusable)
	}
	if !p.settingsSeen {
		return nil, fmt.Errorf("%w: no settings digest", errNotReusable)
	}
	if t.idEnc == nil { // encoded once: the client's identity does not change
		id := t.c.clientIdentity(t.login)
		id.Report = true
		e, err := id.Encode()
		if err != nil {
			return nil, err
		}
		t.idEnc = &e
	}
	bind, err := p.b.BindEncoded(*t.idEnc, p.settings)
	if err != nil {
		return nil, err
	}
	ho := &handover{segs: 1, full: p.dirty}
	if ho.full {
		ho.msgs = append(ho.msgs, &pgproto3.Query{String: resetSQL})
		ho.segs++
	}
	// BindEncoded's value is percent-encoded: nothing in it ends the literal.
	ho.msgs = append(ho.msgs, &pgproto3.Close{ObjectType: 'S'}, &pgproto3.Close{ObjectType: 'P'},
		&pgproto3.Query{String: "SET " + pgbackend.BindSetting + " = '" + bind + "'"})
	return ho, nil
}

// bytes encodes the hand-over's messages.
func (ho *handover) bytes() ([]byte, error) {
	var buf []byte
	for _, m := range ho.msgs {
		var err error
		if buf, err = m.Encode(buf); err != nil {
			return nil, err
		}
	}
	return buf, nil
}

// handedOver records a hand-over of p to this client that succeeded.
func (t *txRelay) handedOver(p *pooled, full bool) {
	// The rebind dropped every named statement inside PostgreSQL, whatever
	// the gateway counted; the re-preparations sent behind it are counted
	// in p.stmts already.
	p.owner, p.dirty = t.id, false
	if full {
		t.c.srv.handovers.full.Add(1)
	} else {
		t.c.srv.handovers.light.Add(1)
	}
}

// errField is an ErrorResponse body's field of that code ("" if none).
func errField(body []byte, code byte) string {
	for len(body) > 1 {
		c := body[0]
		end := bytes.IndexByte(body[1:], 0)
		if end < 0 {
			return ""
		}
		if c == code {
			return string(body[1 : 1+end])
		}
		body = body[2+end:]
	}
	return ""
}

// awaitHandover waits for the verdict on the hand-over just written with
// the client's first bytes (replay). A backend that refused (or died) ran
// none of them, and its downstream copy ended without a word to the
// client: the bytes go to another backend, handed over with a round trip.
// false ends the session.
func (t *txRelay) awaitHandover(cur **held, replay []byte, w *hoWait) bool {
	t.mu.Lock()
	down := t.mu.down
	t.mu.Unlock()
	select {
	case ok := <-w.verdict:
		if ok {
			return true
		}
	case <-t.failed:
		return false
	}
	<-down
	old := *cur
	t.c.srv.handovers.refused.Add(1)
	t.c.log.Info("A pooled backend refused its hand-over; the client's transaction goes to another.",
		"pg_backend_pid", old.b.PID, "reason", w.why)
	stmts := old.lease.Conn.stmts // re-preparations sent behind the hand-over
	t.mu.Lock()
	t.mu.h = nil
	t.mu.Unlock()
	t.c.srv.pool.Discard(old.lease)
	h, _, errResp := t.acquire(false, true)
	if errResp != nil {
		if t.sess.kill.Load() == nil {
			t.sess.sendFinal(errResp)
		}
		return false
	}
	for name, body := range stmts {
		h.lease.Conn.stmts[name] = body
	}
	t.mu.Lock()
	n := 0
	for n < len(t.mu.segs) && isHandoverSeg(t.mu.segs[n]) {
		n++
	}
	t.mu.segs = t.mu.segs[n:]
	t.mu.h, t.mu.down, t.mu.status, t.mu.ho = h, make(chan struct{}), 'I', nil
	down = t.mu.down
	killed := t.sess.kill.Load() != nil
	t.mu.Unlock()
	*cur = h
	go t.downstream(h, down)
	if killed { // the downstream copy ends the session
		return false
	}
	wn, err := h.b.Conn.Write(replay)
	t.up.Add(int64(wn))
	return err == nil
}

// handoverLost tells the upstream that the backend went away before the
// hand-over's answer (a refusal is FATAL): true if one was awaited.
func (t *txRelay) handoverLost(why string) bool {
	t.mu.Lock()
	w := t.mu.ho
	t.mu.ho = nil
	t.mu.Unlock()
	if w == nil {
		return false
	}
	w.why = why
	w.verdict <- false
	return true
}
