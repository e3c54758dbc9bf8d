package gateway

import (
	"bytes"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/pool"
)

func encodeMsg(t *testing.T, m pgproto3.FrontendMessage) []byte {
	t.Helper()
	b, err := m.Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestTxTrackExtended: a client's named statements are tracked, bounded,
// re-prepared only where missing or different, forgotten on Close.
func TestTxTrackExtended(t *testing.T) {
	tr := &txRelay{stmts: map[string][]byte{}}
	cur := &held{lease: &pool.Lease[*pooled]{Conn: &pooled{stmts: map[string][]byte{}}}}
	track := func(m pgproto3.FrontendMessage) *injection {
		b := encodeMsg(t, m)
		return tr.trackExtended(b[0], b, cur)
	}
	if inj := track(&pgproto3.Parse{Name: "s1", Query: "SELECT 1"}); inj != nil || tr.mu.pinned {
		t.Fatalf("Parse: %v, pinned %v", inj, tr.mu.pinned)
	}
	if inj := track(&pgproto3.Bind{PreparedStatement: "s1"}); inj != nil {
		t.Fatal("Bind of a statement the backend has: re-prepared")
	}
	// Another backend (reset: none of the client's statements).
	cur = &held{lease: &pool.Lease[*pooled]{Conn: &pooled{stmts: map[string][]byte{}}}}
	inj := track(&pgproto3.Bind{DestinationPortal: "p", PreparedStatement: "s1"})
	want := append(encodeMsg(t, &pgproto3.Parse{Name: "s1", Query: "SELECT 1"}), encodeMsg(t, &pgproto3.Sync{})...)
	if inj == nil || !bytes.Equal(inj.bytes, want) || len(inj.names) != 1 {
		t.Fatalf("Bind on a backend without s1: %+v; want Parse + Sync", inj)
	}
	if inj := track(&pgproto3.Describe{ObjectType: 'S', Name: "s1"}); inj == nil {
		t.Fatal("Describe on a backend without s1: not re-prepared")
	}
	cur.lease.Conn.stmts["s1"] = tr.stmts["s1"]
	if inj := track(&pgproto3.Describe{ObjectType: 'S', Name: "s1"}); inj != nil {
		t.Fatal("re-prepared twice")
	}
	// Another text under the name on the backend: closed, then prepared.
	cur.lease.Conn.stmts["s1"] = []byte("other")
	if inj := track(&pgproto3.Bind{PreparedStatement: "s1"}); inj == nil || inj.bytes[0] != 'C' {
		t.Fatalf("stale s1: %+v; want Close first", inj)
	}
	track(&pgproto3.Close{ObjectType: 'S', Name: "s1"})
	if _, ok := tr.stmts["s1"]; ok || tr.stmtBytes != 0 {
		t.Fatalf("after Close: %v, %d bytes", tr.stmts, tr.stmtBytes)
	}
	if inj := track(&pgproto3.Bind{PreparedStatement: "s1"}); inj != nil {
		t.Fatal("a closed statement re-prepared")
	}
	// Unknown and unnamed statements: nothing.
	if track(&pgproto3.Bind{PreparedStatement: "nope"}) != nil || track(&pgproto3.Bind{}) != nil {
		t.Fatal("re-prepared what the client never prepared")
	}
	// Bounded: the 201st statement pins the client.
	for i := 0; i < maxPreparedStatements; i++ {
		track(&pgproto3.Parse{Name: "n" + itoa(i), Query: "SELECT 1"})
	}
	if tr.mu.pinned || len(tr.stmts) != maxPreparedStatements {
		t.Fatalf("pinned %v with %d statements", tr.mu.pinned, len(tr.stmts))
	}
	track(&pgproto3.Parse{Name: "one-more", Query: "SELECT 1"})
	if !tr.mu.pinned {
		t.Fatal("not pinned past maxPreparedStatements")
	}
	// A session feature in a Parse pins.
	tr2 := &txRelay{stmts: map[string][]byte{}}
	b := encodeMsg(t, &pgproto3.Parse{Name: "x", Query: "LISTEN ch"})
	tr2.trackExtended('P', b, cur)
	if !tr2.mu.pinned {
		t.Fatal("LISTEN in a Parse: not pinned")
	}
}
