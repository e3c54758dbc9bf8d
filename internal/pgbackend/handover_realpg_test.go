package pgbackend_test

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/pgbackend"
	"github.com/pgshield/pgshield/internal/testutil/pgtest"
)

// pipelined is what came back from a hand-over written with a client's
// statement behind it, in one write, as transaction pooling sends it.
type pipelined struct {
	fatal  *pgproto3.ErrorResponse // the guard's refusal
	errs   []string                // SQLSTATEs of ERRORs
	closed bool                    // the backend hung up
	rfqs   int
	dirty  int // pgshield_guard.dirty reports seen
}

// sendPipelined writes the hand-over of b (a rebind with expect, after
// DISCARD ALL if full) and then stmt, without waiting, and reads until
// both are answered or the backend is gone.
func sendPipelined(t *testing.T, b *pgbackend.Backend, expect string, full bool, stmt string) pipelined {
	t.Helper()
	return sendPipelinedSQL(t, b, expect, full, "", stmt)
}

// sendPipelinedSQL is sendPipelined with trailer appended to the rebind's
// SQL (a syntax error there fails it before pgshield_guard's hook).
func sendPipelinedSQL(t *testing.T, b *pgbackend.Backend, expect string, full bool, trailer string, stmts ...string) pipelined {
	t.Helper()
	id := pgbackend.ClientIdentity{Addr: netip.MustParseAddrPort("10.77.9.3:42000"), Method: pgbackend.ClientMethodSCRAM,
		Report: true, Expect: expect}
	bind, err := b.BindValue(id)
	if err != nil {
		t.Fatal(err)
	}
	var msgs []pgproto3.FrontendMessage
	want := 2
	if full {
		msgs = append(msgs, &pgproto3.Query{String: "DISCARD ALL"})
		want++
	}
	msgs = append(msgs, &pgproto3.Close{ObjectType: 'S'}, &pgproto3.Close{ObjectType: 'P'},
		&pgproto3.Query{String: "SET " + pgbackend.BindSetting + " = '" + bind + "'" + trailer})
	for _, q := range stmts {
		msgs = append(msgs, &pgproto3.Query{String: q})
	}
	want += len(stmts) - 1
	var buf []byte
	for _, m := range msgs {
		if buf, err = m.Encode(buf); err != nil {
			t.Fatal(err)
		}
	}
	_ = b.Conn.SetDeadline(time.Now().Add(20 * time.Second))
	defer b.Conn.SetDeadline(time.Time{})
	if _, err := b.Conn.Write(buf); err != nil {
		t.Fatal(err)
	}
	fe := pgproto3.NewFrontend(b.Conn, b.Conn)
	var r pipelined
	for r.rfqs < want {
		m, err := fe.Receive()
		if err != nil {
			r.closed = true
			return r
		}
		switch m := m.(type) {
		case *pgproto3.ErrorResponse:
			if m.Severity == "FATAL" || m.SeverityUnlocalized == "FATAL" {
				c := *m
				r.fatal = &c
			} else if trailer == "" {
				t.Fatalf("hand-over + %q: error %s %s", stmts, m.Code, m.Message)
			} else {
				r.errs = append(r.errs, m.Code)
			}
		case *pgproto3.ParameterStatus:
			if m.Name == pgbackend.DirtyParam {
				r.dirty++
			}
		case *pgproto3.ReadyForQuery:
			r.rfqs++
		}
	}
	return r
}

// handoverDigest is the settings digest of b's hand-over check.
func handoverDigest(t *testing.T, b *pgbackend.Backend) string {
	t.Helper()
	rows, er := query(t, b, "SELECT pg_catalog.current_setting('pgshield_guard.handover_check')")
	if er != nil || len(rows) != 1 {
		t.Fatalf("handover_check: %v %v", rows, er)
	}
	f := strings.Fields(rows[0])
	if len(f) < 8 || f[0] != "v4" {
		t.Fatalf("handover_check = %q", rows[0])
	}
	return f[6]
}

// countDirty runs q and counts the pgshield_guard.dirty reports in its answer.
func countDirty(t *testing.T, b *pgbackend.Backend, q string) int {
	t.Helper()
	_ = b.Conn.SetDeadline(time.Now().Add(20 * time.Second))
	defer b.Conn.SetDeadline(time.Time{})
	fe := pgproto3.NewFrontend(b.Conn, b.Conn)
	fe.Send(&pgproto3.Query{String: q})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		m, err := fe.Receive()
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		switch m := m.(type) {
		case *pgproto3.ParameterStatus:
			if m.Name == pgbackend.DirtyParam {
				if m.Value != "on" {
					t.Fatalf("%s = %q", m.Name, m.Value)
				}
				n++
			}
		case *pgproto3.ReadyForQuery:
			return n
		}
	}
}

// TestRealPipelinedHandover: the guard's side of transaction pooling's
// hand-over without a round trip. A rebind with expect= is refused with
// FATAL, and the statement written behind it never runs, whenever the
// session is dirty (hidden set_config, PREPARE, SET ROLE), its settings
// digest differs, or its role may no longer log in; a clean session is
// handed over (random() reseeded, advisory locks, named statements and
// sequence state gone) and the statement runs once. With DISCARD ALL
// ahead of the rebind, a dirty session is handed over too. The report:
// one ParameterStatus at the end of the first transaction that leaves
// state, none after until DISCARD ALL, none without report=1.
func TestRealPipelinedHandover(t *testing.T) {
	srv := pgtest.Shared(t)
	pgbackend.CheckGoroutines(t)
	const role = "backend_pipe"
	srv.CreateRole(t, role, "", "LOGIN")
	super := srv.Conn(t)
	ctx := context.Background()
	for _, q := range []string{"CREATE TABLE public.backend_pipe_t (n int)", "GRANT INSERT, SELECT ON public.backend_pipe_t TO " + role,
		"CREATE SEQUENCE public.backend_pipe_s", "GRANT USAGE ON public.backend_pipe_s TO " + role} {
		if _, err := super.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		_, _ = super.Exec(ctx, "DROP TABLE IF EXISTS public.backend_pipe_t; DROP SEQUENCE IF EXISTS public.backend_pipe_s")
		_, _ = super.Exec(ctx, "ALTER ROLE "+role+" LOGIN")
	})
	open := func(report bool) (*pgbackend.Backend, string) {
		t.Helper()
		id := pgbackend.ClientIdentity{Addr: netip.MustParseAddrPort("10.77.9.2:41000"), Method: pgbackend.ClientMethodSCRAM, Report: report}
		params := map[string]string{"user": role, "database": "postgres"}
		if err := pgbackend.SetClient(params, id); err != nil {
			t.Fatal(err)
		}
		b := connect(t, srv, params)
		return b, handoverDigest(t, b)
	}
	rowsOf := func(n int) int {
		t.Helper()
		var c int
		if err := super.QueryRow(ctx, "SELECT count(*) FROM public.backend_pipe_t WHERE n = $1", n).Scan(&c); err != nil {
			t.Fatal(err)
		}
		return c
	}
	insert := func(n int) string { return "INSERT INTO public.backend_pipe_t VALUES (" + strconv.Itoa(n) + ")" }

	// Refusals: the backend ends, the statement behind never ran.
	for i, c := range []struct {
		name, dirty string
		digest      string // "" the backend's own
		why         string
	}{
		{"hidden set_config", "SELECT pg_catalog.set_config('search_path', 'public', false)", "", "holds state"},
		{"PREPARE", "PREPARE p AS SELECT 1", "", "holds state"},
		{"SET ROLE", "SET ROLE " + role, "", "holds state"},
		{"other digest", "SELECT 1", strings.Repeat("0", 64), "SET changed"},
		{"NOLOGIN", "SELECT 1", "", "no longer log in"},
	} {
		b, digest := open(true)
		if c.digest != "" {
			digest = c.digest
		}
		if _, er := query(t, b, c.dirty); er != nil {
			t.Fatalf("%s: %v", c.name, er)
		}
		if c.name == "NOLOGIN" {
			if _, err := super.Exec(ctx, "ALTER ROLE "+role+" NOLOGIN"); err != nil {
				t.Fatal(err)
			}
		}
		n := 100 + i
		r := sendPipelined(t, b, digest, false, insert(n))
		if c.name == "NOLOGIN" {
			if _, err := super.Exec(ctx, "ALTER ROLE "+role+" LOGIN"); err != nil {
				t.Fatal(err)
			}
		}
		if r.fatal == nil || r.fatal.Code != "55000" || !strings.Contains(r.fatal.Message, c.why) || !r.closed {
			t.Errorf("%s: hand-over = %+v; want FATAL 55000 %q and the backend gone", c.name, r, c.why)
		}
		if got := rowsOf(n); got != 0 {
			t.Errorf("%s: the statement behind the refused hand-over ran (%d rows)", c.name, got)
		}
	}

	// A clean session: handed over, the statement runs once, and what
	// the last client left that no utility statement marks is gone.
	b, digest := open(true)
	if _, er := query(t, b, "SELECT pg_catalog.pg_advisory_lock(77), pg_catalog.nextval('public.backend_pipe_s'), pg_catalog.setseed(0.5)"); er != nil {
		t.Fatal(er)
	}
	probe := connect(t, srv, map[string]string{"user": role, "database": "postgres"})
	if _, er := query(t, probe, "SELECT pg_catalog.setseed(0.5)"); er != nil {
		t.Fatal(er)
	}
	seeded, er := query(t, probe, "SELECT pg_catalog.random()::text")
	if er != nil {
		t.Fatal(er)
	}
	if r := sendPipelined(t, b, digest, false, insert(200)); r.fatal != nil || r.closed || r.dirty != 0 {
		t.Fatalf("clean hand-over = %+v; want it accepted, no report", r)
	}
	if got := rowsOf(200); got != 1 {
		t.Fatalf("statement behind the hand-over ran %d times; want 1", got)
	}
	rows, er := query(t, b, "SELECT pg_catalog.random()::text")
	if er != nil || len(rows) != 1 || rows[0] == seeded[0] {
		t.Errorf("random() after the hand-over = %v %v; the last client's seed gave %v", rows, er, seeded)
	}
	if rows, er := query(t, b, "SELECT count(*)::text FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()"); er != nil || rows[0] != "0" {
		t.Errorf("advisory locks after the hand-over = %v %v; want 0", rows, er)
	}
	if _, er := query(t, b, "SELECT pg_catalog.currval('public.backend_pipe_s')"); er == nil || er.Code != "55000" {
		t.Errorf("currval after the hand-over = %v; want 55000 (not yet defined in this session)", er)
	}

	// Reports: the first dirtying transaction says so, once.
	if n := countDirty(t, b, "SELECT pg_catalog.set_config('work_mem', '8MB', false)"); n != 1 {
		t.Errorf("reports after a hidden set_config = %d; want 1", n)
	}
	if n := countDirty(t, b, "PREPARE q AS SELECT 1"); n != 0 {
		t.Errorf("reports after a second dirtying statement = %d; want 0 (sent once)", n)
	}
	// With DISCARD ALL ahead, the dirty session is handed over.
	if r := sendPipelined(t, b, digest, true, insert(201)); r.fatal != nil || r.closed {
		t.Fatalf("hand-over with DISCARD ALL = %+v; want it accepted", r)
	}
	if got := rowsOf(201); got != 1 {
		t.Fatalf("statement behind the full hand-over ran %d times; want 1", got)
	}
	if n := countDirty(t, b, "CREATE TEMP TABLE tt (x int)"); n != 1 {
		t.Errorf("reports after DISCARD ALL and a temp table = %d; want 1", n)
	}
	if n := countDirty(t, b, "BEGIN; SELECT pg_catalog.set_config('work_mem', '9MB', false); ROLLBACK"); n != 0 {
		t.Errorf("reports after a rolled-back set_config in a reported session = %d; want 0", n)
	}
	// A pipelined rebind that fails with an ERROR before the guard's hook
	// (here a syntax error; in life a cancel at PostgreSQL's first interrupt
	// check) poisons the session: what follows ends it, and never runs, even
	// a statement after one that has no hook (an empty query), and in a
	// session bound without report=1 (session pooling's, handed over to a
	// transaction-mode client after a change of mode).
	for i, c := range []struct {
		report bool
		stmts  []string
	}{{true, []string{insert(300)}}, {true, []string{"", insert(301)}}, {false, []string{insert(303)}}} {
		pb, digest := open(c.report)
		if _, er := query(t, pb, "SELECT 1"); er != nil {
			t.Fatal(er)
		}
		r := sendPipelinedSQL(t, pb, digest, false, " garbage", c.stmts...)
		if len(r.errs) != 1 || r.errs[0] != "42601" || r.fatal == nil || !strings.Contains(r.fatal.Message, "hand-over failed") || !r.closed {
			t.Errorf("rebind with a syntax error + %q (report %v) = %+v; want 42601, then FATAL (poisoned) and the backend gone", c.stmts, c.report, r)
		}
		if n := []int{300, 301, 303}[i]; rowsOf(n) != 0 {
			t.Errorf("a statement behind a failed rebind ran (%d rows)", rowsOf(n))
		}
	}
	// A client's own error in such a session poisons nothing.
	pc, _ := open(true)
	if _, er := query(t, pc, "SELEC 1"); er == nil || er.Code != "42601" {
		t.Fatalf("syntax error = %v", er)
	}
	if _, er := query(t, pc, insert(302)); er != nil || rowsOf(302) != 1 {
		t.Errorf("after a client's own error: %v, %d rows; want the statement to run", er, rowsOf(302))
	}

	// Without report=1, nothing is ever reported.
	quiet, _ := open(false)
	if n := countDirty(t, quiet, "SELECT pg_catalog.set_config('work_mem', '8MB', false)"); n != 0 {
		t.Errorf("reports without report=1 = %d; want 0", n)
	}
}
