package gateway

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// A pipelined hand-over. When a transaction-mode client's next batch finds
// a backend another client used last, the reset, the check and the rebind
// (setup) cost a round trip before the batch can go. Instead they go in
// the same write as the batch's first messages, in the extended protocol
// with no Sync between them and the client's:
//
//	Parse/Bind/Execute  DISCARD ALL        (first in its transaction, so
//	                                        allowed, and committed at once)
//	Parse/Bind/Execute  setseed(...)
//	Parse/Bind/Execute  handoverCheckSQL   (raises 22012 unless every
//	                                        condition holds)
//	Parse/Bind/Execute  SET pgshield_guard.bind_client = ...
//	Parse/Bind/Execute  COMMIT             (ends the setup's implicit
//	                                        transaction: a client ROLLBACK
//	                                        cannot undo the rebind)
//	Flush                                  (the setup's answers come now,
//	                                        not after the client's query)
//	the client's messages up to its first Query or Sync
//
// An error in any setup message puts PostgreSQL into skipping every
// message until the next Sync (postgres.c, ignore_till_sync; a Query is
// skipped too), so none of the client's messages runs on a backend that
// fails: the batch stops at the client's first Query or Sync, the only
// message that ends the skip, and what follows it is held back until the
// setup's answers are read. The gateway reads the setup's answers itself
// (up to its fifth CommandComplete); on an ErrorResponse it closes the
// backend and sends the same messages again with another one, so the
// client sees nothing of it. Anything else that stops the reading (a
// timeout, a lost connection, an answer out of place) leaves unknown
// whether the client's messages ran, so they are never sent again: the
// client's session ends with 08006, as on a connection lost mid-query. Named statements are not carried (a Bind of one may need
// it re-prepared first) are re-prepared after the setup, before the
// client's messages (handoverBatch).

// handoverCheckSQL is resetCheckSQL made to fail: division by zero unless
// the backend is its login role ($1), in a database without the
// extensions, which the role may still connect to, with the settings
// digest it started with ($2; the empty string for none, as
// recordSettings reads NULL).
// A NULL anywhere fails too (CASE takes ELSE).
const handoverCheckSQL = `SELECT 1 OPERATOR(pg_catalog./) CASE WHEN k.c0 AND k.c1 OPERATOR(pg_catalog.=) $1::pg_catalog.text
   AND NOT k.c2 AND k.c3 AND k.c4 AND COALESCE(k.c5, '') OPERATOR(pg_catalog.=) $2::pg_catalog.text THEN 1 ELSE 0 END
 FROM (` + resetCheckSQL + `) AS k (c0, c1, c2, c3, c4, c5)`

// handoverSetupAnswers is the number of CommandCompletes that end the
// setup's answers.
const handoverSetupAnswers = 5

// handoverBatch is the prefix of the client's buffered messages that may
// travel with a hand-over: whole messages up to and including the first
// Query or Sync, of the types the setup's error skip covers (Query, Parse,
// Bind, Describe, Execute, Sync); nil if there is none. A Bind or Describe
// may name a statement the client parsed earlier in the prefix, or one of
// known (the client's statements), which the hand-over then re-prepares
// (reprep) after the setup; then the prefix must end with a Sync, so that a
// failed re-preparation ends in the client's own ReadyForQuery.
func handoverBatch(br *msgReader, known map[string][]byte) (pre []byte, reprep []string) {
	buf, _ := br.Peek(br.Buffered())
	var parsed map[string]bool
	need := func(name string) bool {
		if name == "" || parsed[name] {
			return true
		}
		if _, ok := known[name]; !ok {
			return false // PostgreSQL's 26000 is the client's to get, not the hand-over's
		}
		for _, n := range reprep {
			if n == name {
				return true
			}
		}
		reprep = append(reprep, name)
		return true
	}
	for off := 0; off+5 <= len(buf); {
		n := binary.BigEndian.Uint32(buf[off+1:])
		if n < 4 || uint64(off)+1+uint64(n) > uint64(len(buf)) {
			return nil, nil
		}
		end := off + 1 + int(n)
		body := buf[off+5 : end]
		switch buf[off] {
		case 'S':
			return buf[:end], reprep
		case 'Q':
			if len(reprep) > 0 {
				return nil, nil
			}
			return buf[:end], nil
		case 'P':
			if name := cstr(body); name != "" {
				if parsed == nil {
					parsed = map[string]bool{}
				}
				parsed[name] = true
			}
		case 'E':
		case 'B':
			portal := cstr(body)
			if len(portal)+1 > len(body) || !need(cstr(body[len(portal)+1:])) {
				return nil, nil
			}
		case 'D':
			if len(body) == 0 || (body[0] == 'S' && !need(cstr(body[1:]))) {
				return nil, nil
			}
		default:
			return nil, nil
		}
		off = end
	}
	return nil, nil
}

// errHandoverLost is a pipelined hand-over that stopped where the client's
// messages may have run: they must not be sent again.
var errHandoverLost = errors.New("the backend was lost during the hand-over; the client's messages may have run")

// setupWith runs the hand-over of p to this client with pre, the client's
// first messages, in one write, and reads the setup's answers. On success
// the returned reader holds what was read past them (the client's first
// answers). On an error p must be closed; unless it wraps errHandoverLost,
// PostgreSQL refused the setup and none of pre ran.
func (t *txRelay) setupWith(p *pooled, pre []byte, reprep []string) (*msgReader, error) {
	bind, err := p.b.BindQuery(t.c.clientIdentity(t.login))
	if err != nil {
		return nil, err // nothing sent
	}
	p.owner, p.stmts = 0, map[string][]byte{} // until it passes
	var buf []byte
	for _, q := range []struct {
		sql    string
		params [][]byte
	}{
		{resetSQL, nil},
		{seedSQL(), nil},
		{handoverCheckSQL, [][]byte{[]byte(t.c.user), []byte(p.settings)}},
		{bind.String, nil},
		{"COMMIT", nil},
	} {
		for _, m := range []pgproto3.FrontendMessage{&pgproto3.Parse{Query: q.sql},
			&pgproto3.Bind{Parameters: q.params}, &pgproto3.Execute{}} {
			if buf, err = m.Encode(buf); err != nil {
				return nil, err
			}
		}
	}
	for _, name := range reprep {
		buf = appendMsg(buf, 'P', t.stmts[name])
	}
	buf = append(buf, 'H', 0, 0, 0, 4) // Flush
	buf = append(buf, pre...)
	conn := p.b.Conn
	_ = conn.SetDeadline(time.Now().Add(resetTimeout))
	defer conn.SetDeadline(time.Time{})
	if _, err := conn.Write(buf); err != nil {
		return nil, fmt.Errorf("%w: %v", errHandoverLost, err) // part may have gone
	}
	rd := newMsgReader(conn)
	lost := func(format string, a ...any) (*msgReader, error) {
		rd.Close()
		return nil, fmt.Errorf("%w: "+format, append([]any{errHandoverLost}, a...)...)
	}
	done := 0
	checked := false
	for i := 0; i < 1000 && done < handoverSetupAnswers; i++ {
		hdr, err := rd.Peek(5)
		if err != nil {
			return lost("%v", err)
		}
		size := int(binary.BigEndian.Uint32(hdr[1:])) + 1
		if size < 5 || size > rd.Size() {
			return lost("a message of %d bytes in the setup's answers", size)
		}
		msg, err := rd.Peek(size)
		if err != nil {
			return lost("%v", err)
		}
		switch msg[0] {
		case 'E':
			// PostgreSQL now skips to the client's first Query or Sync
			// and no further: none of pre runs.
			e := &pgproto3.ErrorResponse{}
			_ = e.Decode(msg[5:])
			rd.Close()
			return nil, fmt.Errorf("%w: %s %s", errNotReusable, e.Code, e.Message)
		case 'C':
			done++
		case 'D':
			checked = checked || done == 2 // the check's row: it passed
		case 'G', 'H', 'W', 'Z':
			return lost("%q in the setup's answers", msg[0])
		}
		// ParseComplete, BindComplete, the other rows, notices (COMMIT's
		// "no transaction in progress"), ParameterStatus from the reset,
		// notifications: dropped.
		_, _ = rd.Discard(size)
	}
	if done < handoverSetupAnswers || !checked {
		return lost("no complete answer to the setup")
	}
	p.owner = t.id
	// The re-preparations' ParseCompletes. An error is left for the
	// client: PostgreSQL skips its messages to its Sync, whose
	// ReadyForQuery ends the batch for it (a Bind of the statement that
	// is missing gets 26000 next time).
	for i := 0; i < len(reprep); {
		hdr, err := rd.Peek(5)
		if err != nil {
			return lost("%v", err)
		}
		size := int(binary.BigEndian.Uint32(hdr[1:])) + 1
		if size < 5 || size > rd.Size() {
			return lost("a message of %d bytes in the re-preparations' answers", size)
		}
		if hdr[0] == 'E' {
			break
		}
		switch hdr[0] {
		case '1':
			p.stmts[reprep[i]] = t.stmts[reprep[i]]
			i++
		case 'N', 'S', 'A':
		default:
			return lost("%q in the re-preparations' answers", hdr[0])
		}
		if _, err := rd.Peek(size); err != nil {
			return lost("%v", err)
		}
		_, _ = rd.Discard(size)
	}
	return rd, nil
}

// trackSent records pre's messages, already written with a hand-over, as
// the upstream loop records what it forwards. Called with t.mu held.
func (t *txRelay) trackSent(pre []byte, cur *held) {
	for off := 0; off < len(pre); {
		end := off + 1 + int(binary.BigEndian.Uint32(pre[off+1:]))
		msg := pre[off:end]
		switch typ := msg[0]; typ {
		case 'Q', 'S':
			t.mu.segs = append(t.mu.segs, nil)
			if typ == 'S' {
				t.mu.dirty = false
			} else if !t.mu.pinned && needsPin(cstr(msg[5:])) {
				t.mu.pinned = true
			}
		default:
			t.mu.dirty = true
			if !t.mu.pinned {
				_ = t.trackExtended(typ, msg, cur) // nothing to re-prepare: no statement named
			}
		}
		off = end
	}
}
