package gateway

// A hostile tenant against transaction pooling's light hand-over (no
// DISCARD ALL while pgshield_guard reports the session clean): client a
// leaves something on the one backend (pool_size 1), client b of the same
// role, next on that backend, must not see it or be affected by it. Each
// test asserts the safe behaviour; a leak shows as a failure.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/testutil/pgtest"
)

// rawBatch writes msgs to c's connection as they are and reads up to one
// ReadyForQuery per Sync or Query; it returns the SQLSTATEs of the errors.
func rawBatch(t *testing.T, c *pgx.Conn, msgs ...pgproto3.FrontendMessage) []string {
	t.Helper()
	pc := c.PgConn()
	fe := pc.Frontend()
	want := 0
	for _, m := range msgs {
		fe.Send(m)
		switch m.(type) {
		case *pgproto3.Sync, *pgproto3.Query:
			want++
		}
	}
	_ = pc.Conn().SetDeadline(time.Now().Add(20 * time.Second))
	defer pc.Conn().SetDeadline(time.Time{})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var codes []string
	for want > 0 {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("raw batch: %v", err)
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			codes = append(codes, m.Code)
		case *pgproto3.ReadyForQuery:
			want--
		}
	}
	return codes
}

// pgxStmtName is the name pgx's statement cache gives sql (internal/stmtcache).
func pgxStmtName(sql string) string {
	d := sha256.Sum256([]byte(sql))
	return "stmtcache_" + hex.EncodeToString(d[:24])
}

type lightEnv struct {
	env   *gatewayEnv
	super *pgx.Conn
	a, b  *pgx.Conn
}

func newLightEnv(t *testing.T, role string, setup []string, cleanup string) lightEnv {
	t.Helper()
	srv := pgtest.Shared(t)
	checkGoroutines(t)
	srv.CreateRole(t, role, goodPassword, "LOGIN")
	super := srv.Conn(t)
	ctx := context.Background()
	t.Cleanup(func() { _, _ = super.Exec(ctx, cleanup) })
	for _, q := range setup {
		if _, err := super.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	env := txEnv(t, srv, "1")
	a, err := env.connectPgx(t, role, goodPassword, "")
	if err != nil {
		t.Fatal(err)
	}
	b, err := env.connectPgx(t, role, goodPassword, "")
	if err != nil {
		t.Fatal(err)
	}
	return lightEnv{env: env, super: super, a: a, b: b}
}

func (e lightEnv) counts() (uint64, uint64) {
	return e.env.srv.handovers.light.Load(), e.env.srv.handovers.full.Load()
}

// TestRealTxLightAttackSkippedClose: a's Close of its named statement sent
// after an error in the same extended-protocol batch is skipped by
// PostgreSQL (everything up to Sync is), but the gateway forgets the
// statement anyway; the backend then looks statement-free, is handed to b
// without DISCARD ALL, and b finds a's statement (pg_prepared_statements,
// a Bind to it, a Parse of the same name refused).
func TestRealTxLightAttackSkippedClose(t *testing.T) {
	const role = "gw_la_sc"
	e := newLightEnv(t, role, nil, "SELECT 1")
	ctx := context.Background()
	var one int
	simple(t, e.a, "SELECT 1", &one)
	const leak = "gw_la_sc_leak"
	if codes := rawBatch(t, e.a, &pgproto3.Parse{Name: leak, Query: "SELECT 'a''s secret'::text"}, &pgproto3.Sync{}); len(codes) != 0 {
		t.Fatalf("a's Parse: %v", codes)
	}
	codes := rawBatch(t, e.a, &pgproto3.Parse{Query: "SELECT 1/0"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Close{ObjectType: 'S', Name: leak}, &pgproto3.Sync{})
	if len(codes) != 1 || codes[0] != "22012" {
		t.Fatalf("a's failing batch: %v; want one 22012", codes)
	}
	pa, _ := backendOf(t, e.a)
	light0, _ := e.counts()

	var n int
	var text string
	simple(t, e.b, "SELECT pg_catalog.count(*)::int, coalesce(pg_catalog.max(statement), '') FROM pg_catalog.pg_prepared_statements", &n, &text)
	pb, _ := backendOf(t, e.b)
	light1, _ := e.counts()
	if pa != pb {
		t.Fatalf("backends %d and %d with pool_size 1", pa, pb)
	}
	t.Logf("light hand-overs to b: %d", light1-light0)
	if n != 0 {
		t.Errorf("b sees %d prepared statement(s) of a's: %q; want none", n, text)
	}
	if rr := e.b.PgConn().ExecPrepared(ctx, leak, nil, nil, nil).Read(); rr.Err == nil {
		t.Errorf("b: Bind to a's statement %q ran it: %q", leak, rr.Rows)
	}
	if _, rr := e.b.PgConn().Prepare(ctx, leak, "SELECT 2", nil); rr != nil {
		var pe *pgconn.PgError
		if errors.As(rr, &pe) && pe.Code == "42P05" {
			t.Errorf("b: Parse of %q refused, a's statement is still there: %v", leak, rr)
		}
	}
}

// TestRealTxLightAttackStmtSubstitution: the skipped Close used against
// pgx's statement cache. b prepared a query (its cache name is the query's
// SHA-256); a plants another statement under that name on the backend and
// "closes" it after an error; b, handed the backend without DISCARD ALL,
// sends only a Bind: the gateway's re-Parse for b fails (42P05, swallowed)
// and b's Bind runs a's statement with b's parameters.
func TestRealTxLightAttackStmtSubstitution(t *testing.T) {
	const role = "gw_la_ss"
	e := newLightEnv(t, role, []string{
		"CREATE TABLE public.gw_la_ss_cap (v text)",
		"GRANT INSERT, SELECT ON public.gw_la_ss_cap TO " + role,
	}, "DROP TABLE IF EXISTS public.gw_la_ss_cap")
	ctx := context.Background()
	const q = "SELECT $1::text || ' (b)'"
	var got string
	if err := e.b.QueryRow(ctx, q, "warm-up").Scan(&got); err != nil { // b's statement, cached by pgx
		t.Fatal(err)
	}
	name := pgxStmtName(q)
	// b's statement itself must not reach a (a full hand-over: b left one).
	var seen int
	simple(t, e.a, "SELECT pg_catalog.count(*)::int FROM pg_catalog.pg_prepared_statements", &seen)
	if seen != 0 {
		t.Fatalf("a sees %d prepared statement(s) of b's", seen)
	}
	evil := "WITH c AS (INSERT INTO public.gw_la_ss_cap (v) VALUES ($1::text) RETURNING v) SELECT 'forged by a: ' || v FROM c"
	if codes := rawBatch(t, e.a, &pgproto3.Parse{Name: name, Query: evil}, &pgproto3.Sync{}); len(codes) != 0 {
		t.Fatalf("a's Parse: %v", codes)
	}
	if codes := rawBatch(t, e.a, &pgproto3.Parse{Query: "SELECT 1/0"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Close{ObjectType: 'S', Name: name}, &pgproto3.Sync{}); len(codes) != 1 {
		t.Fatalf("a's failing batch: %v", codes)
	}
	pa, _ := backendOf(t, e.a)
	light0, _ := e.counts()
	err := e.b.QueryRow(ctx, q, "b's secret").Scan(&got)
	pb, _ := backendOf(t, e.b)
	light1, _ := e.counts()
	if pa != pb {
		t.Fatalf("backends %d and %d with pool_size 1", pa, pb)
	}
	t.Logf("light hand-overs to b: %d", light1-light0)
	if err != nil || got != "b's secret (b)" {
		t.Errorf("b's cached query = %q, %v; want \"b's secret (b)\"", got, err)
	}
	var captured []string
	rows, err := e.super.Query(ctx, "SELECT v FROM public.gw_la_ss_cap")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var v string
		_ = rows.Scan(&v)
		captured = append(captured, v)
	}
	rows.Close()
	if len(captured) != 0 {
		t.Errorf("a's planted statement captured b's parameters: %q", captured)
	}
}

// lightProbe is one thing a leaves through a function the pin scanner
// cannot see into, and what b, next on the backend, must find instead.
type lightProbe struct {
	name  string
	act   string // a's statement
	probe string // b's, one text column
	want  string
	// wantErr: a's statement fails (the state it set must not stay).
	wantErr bool
}

// TestRealTxLightAttackHidden: state made by functions, set_config
// variants, SET LOCAL forms that the DIRTY flag ignores, extension
// functions with session state, sequence caches, the random() seed, large
// object descriptors, and the client identity: b never sees a's, whichever
// hand-over (light or full) the check chose.
func TestRealTxLightAttackHidden(t *testing.T) {
	const role = "gw_la_hd"
	setup := []string{
		"CREATE SCHEMA gw_la",
		"GRANT USAGE ON SCHEMA gw_la TO " + role,
		"CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA gw_la",
		"CREATE SEQUENCE gw_la.seq CACHE 10",
		"GRANT USAGE ON SEQUENCE gw_la.seq TO " + role,
		"CREATE TABLE gw_la.ident (id int GENERATED BY DEFAULT AS IDENTITY (CACHE 10), x int)",
		"GRANT INSERT, SELECT ON gw_la.ident TO " + role,
		"GRANT USAGE ON SEQUENCE gw_la.ident_id_seq TO " + role,
		// A SECURITY DEFINER function with its own SET, and a session-level
		// set_config inside: restored at exit.
		`CREATE FUNCTION gw_la.definer_set() RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET work_mem = '11MB' AS $$
BEGIN PERFORM pg_catalog.set_config('work_mem', '12MB', false); RETURN pg_catalog.current_setting('work_mem'); END $$`,
		`CREATE FUNCTION gw_la.trgm() RETURNS real LANGUAGE sql AS 'SELECT gw_la.set_limit(0.9)'`,
		`CREATE FUNCTION gw_la.locks() RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_catalog.pg_advisory_lock_shared(71);
  PERFORM pg_catalog.pg_try_advisory_lock(72);
  PERFORM pg_catalog.pg_try_advisory_lock_shared(73);
  PERFORM pg_catalog.pg_advisory_lock(7, 4);
  PERFORM pg_catalog.pg_advisory_lock_shared(7, 5);
  PERFORM pg_catalog.pg_try_advisory_lock(7, 6);
  PERFORM pg_catalog.pg_advisory_lock(74);
  PERFORM pg_catalog.pg_advisory_lock(74);
  RETURN 'ok';
END $$`,
		`CREATE FUNCTION gw_la.seqs() RETURNS text LANGUAGE sql AS $$SELECT pg_catalog.nextval('gw_la.seq')::text$$`,
		`CREATE FUNCTION gw_la.ident_ins() RETURNS int LANGUAGE sql AS 'INSERT INTO gw_la.ident (x) VALUES (1) RETURNING id'`,
		`CREATE FUNCTION gw_la.seed() RETURNS float8 LANGUAGE sql AS 'SELECT pg_catalog.setseed(0.25); SELECT pg_catalog.random()'`,
		`CREATE FUNCTION gw_la.holdcur() RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE 'DECLARE gw_la_c CURSOR WITH HOLD FOR SELECT 1'; RETURN 'ok'; END $$`,
		`CREATE FUNCTION gw_la.listen() RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE 'LISTEN gw_la_ch'; RETURN 'ok'; END $$`,
		`CREATE FUNCTION gw_la.prep() RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE 'PREPARE gw_la_p AS SELECT 1'; RETURN 'ok'; END $$`,
		`CREATE FUNCTION gw_la.set_then_fail() RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_catalog.set_config('work_mem', '13MB', false); PERFORM 1/0; RETURN 'no'; END $$`,
		`CREATE FUNCTION gw_la.setlocal() RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  SET LOCAL search_path = gw_la;
  SET LOCAL SESSION CHARACTERISTICS AS TRANSACTION READ ONLY;
  SET LOCAL statement_timeout = 1;
  PERFORM pg_catalog.set_config('idle_session_timeout', '1', true);
  RETURN 'ok';
END $$`,
		`CREATE FUNCTION gw_la.lo() RETURNS int LANGUAGE sql AS 'SELECT pg_catalog.lo_open(pg_catalog.lo_creat(-1), 393216)'`,
		`CREATE FUNCTION gw_la.bindempty() RETURNS text LANGUAGE sql AS $$SELECT pg_catalog.set_config('pgshield_guard.bind_client', '', false)$$`,
		"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA gw_la TO " + role,
	}
	e := newLightEnv(t, role, setup, "SELECT pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata WHERE lomowner = '"+role+"'::regrole; DROP SCHEMA IF EXISTS gw_la CASCADE")
	ctx := context.Background()
	var seedWant string
	simple(t, e.super, "SELECT pg_catalog.setseed(0.25)::text", new(string))
	simple(t, e.super, "SELECT pg_catalog.random()::text", &seedWant)

	probes := []lightProbe{
		{"definer SET + set_config", "SELECT gw_la.definer_set()", "SELECT pg_catalog.current_setting('work_mem')", "4MB", false},
		{"pg_trgm set_limit", "SELECT gw_la.trgm()::text", "SELECT gw_la.show_limit()::text", "0.3", false},
		{"advisory lock variants", "SELECT gw_la.locks()",
			"SELECT pg_catalog.count(*)::text FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()", "0", false},
		{"sequence cache and setval", "SELECT gw_la.seqs()",
			"SELECT pg_catalog.nextval('gw_la.seq')::text || ' ' || pg_catalog.lastval()::text", "11 11", false},
		{"identity column cache", "SELECT gw_la.ident_ins()::text",
			"SELECT pg_catalog.nextval('gw_la.ident_id_seq')::text", "11", false},
		{"setseed", "SELECT gw_la.seed()::text", "SELECT (pg_catalog.random()::text = '" + seedWant + "')::text", "false", false},
		{"WITH HOLD cursor via EXECUTE", "SELECT gw_la.holdcur()", "SELECT pg_catalog.count(*)::text FROM pg_catalog.pg_cursors", "0", false},
		{"LISTEN via EXECUTE", "SELECT gw_la.listen()", "SELECT pg_catalog.count(*)::text FROM pg_catalog.pg_listening_channels()", "0", false},
		{"PREPARE via EXECUTE", "SELECT gw_la.prep()", "SELECT pg_catalog.count(*)::text FROM pg_catalog.pg_prepared_statements", "0", false},
		{"set_config then error", "SELECT gw_la.set_then_fail()", "SELECT pg_catalog.current_setting('work_mem')", "4MB", true},
		{"SET LOCAL forms", "SELECT gw_la.setlocal()",
			"SELECT pg_catalog.current_setting('search_path') || ' ' || pg_catalog.current_setting('default_transaction_read_only') || ' ' || pg_catalog.current_setting('statement_timeout') || ' ' || pg_catalog.current_setting('idle_session_timeout')",
			`"$user", public off 0 0`, false},
		{"large object descriptor", "SELECT gw_la.lo()::text", "SELECT 'x'", "x", false},
		{"empty bind_client", "SELECT gw_la.bindempty()", "SELECT pg_catalog.inet_client_port()::text", "", false},
	}
	for _, p := range probes {
		light0, full0 := e.counts()
		var out string
		err := e.a.QueryRow(ctx, p.act, pgx.QueryExecModeSimpleProtocol).Scan(&out)
		if (err != nil) != p.wantErr {
			t.Fatalf("%s: a: %s = %q, %v", p.name, p.act, out, err)
		}
		pa, _ := backendOf(t, e.a)
		want := p.want
		if p.name == "empty bind_client" {
			want = localPort(e.b)
		}
		var got string
		simple(t, e.b, p.probe, &got)
		pb, portb := backendOf(t, e.b)
		light1, full1 := e.counts()
		if pa != pb {
			t.Fatalf("%s: backends %d and %d with pool_size 1", p.name, pa, pb)
		}
		if itoa(int(portb)) != localPort(e.b) {
			t.Errorf("%s: pg_stat_activity shows client_port %d for b; want b's %s", p.name, portb, localPort(e.b))
		}
		t.Logf("%-30s a=%q  b: %q  (light %d, full %d)", p.name, out, got, light1-light0, full1-full0)
		if got != want {
			t.Errorf("%s: b sees %q after a's %s; want %q", p.name, got, p.act, want)
		}
		if p.name == "large object descriptor" {
			var pe *pgconn.PgError
			var pos int64
			err := e.b.QueryRow(ctx, "SELECT pg_catalog.lo_tell("+out+")", pgx.QueryExecModeSimpleProtocol).Scan(&pos)
			if !errors.As(err, &pe) {
				t.Errorf("b: lo_tell(%s) of a's descriptor = %d, %v; want an error", out, pos, err)
			}
		}
	}
}

// TestRealTxLightAttackPlaceholder: a custom setting a sets only for its
// transaction (set_config(..., true), SET LOCAL) leaves the placeholder
// behind: b's current_setting(name, true) is the empty string, not NULL, which
// tells b the name a used. DISCARD ALL does not remove it either.
func TestRealTxLightAttackPlaceholder(t *testing.T) {
	t.Skip("finding (pre-existing, PostgreSQL's, both hand-overs): a transaction-local custom setting leaves its placeholder; see report")
	const role = "gw_la_ph"
	e := newLightEnv(t, role, []string{
		`CREATE FUNCTION public.gw_la_ph_fn() RETURNS text LANGUAGE sql AS $$SELECT pg_catalog.set_config('gw_la_app.tenant', 'tenant-42', true)$$`,
		`CREATE FUNCTION public.gw_la_ph_fn2() RETURNS text LANGUAGE sql AS $$SELECT pg_catalog.set_config('gw_la_app.other', 'x', true) || pg_catalog.set_config('work_mem', '5MB', false)$$`,
		"GRANT EXECUTE ON FUNCTION public.gw_la_ph_fn(), public.gw_la_ph_fn2() TO " + role,
	}, "DROP FUNCTION IF EXISTS public.gw_la_ph_fn(), public.gw_la_ph_fn2()")
	var v string
	simple(t, e.a, "SELECT public.gw_la_ph_fn()", &v)
	pa, _ := backendOf(t, e.a)
	light0, _ := e.counts()
	var isNull bool
	simple(t, e.b, "SELECT pg_catalog.current_setting('gw_la_app.tenant', true) IS NULL", &isNull)
	light1, _ := e.counts()
	t.Logf("light hand-overs to b: %d", light1-light0)
	pb, _ := backendOf(t, e.b)
	if pa != pb {
		t.Fatalf("backends %d and %d with pool_size 1", pa, pb)
	}
	if !isNull {
		t.Errorf("b: current_setting('gw_la_app.tenant', true) is not NULL: a's transaction-local placeholder is visible (light hand-over)")
	}
	// The same over the full hand-over (a's session-level work_mem forces
	// DISCARD ALL): RESET ALL keeps placeholders.
	_, full0 := e.counts()
	simple(t, e.a, "SELECT public.gw_la_ph_fn2()", &v)
	simple(t, e.b, "SELECT pg_catalog.current_setting('gw_la_app.other', true) IS NULL", &isNull)
	if _, full1 := e.counts(); full1 == full0 {
		t.Errorf("no full hand-over after a's session-level set_config")
	}
	if !isNull {
		t.Errorf("b: current_setting('gw_la_app.other', true) is not NULL after DISCARD ALL too")
	}
}

// TestRealTxLightAttackTrackedStmt: a named statement b prepared (pgx's
// statement cache) never reaches a, whichever hand-over a gets: the light
// one may drop the gateway's count of b's statements only if PostgreSQL
// dropped them too.
func TestRealTxLightAttackTrackedStmt(t *testing.T) {
	const role = "gw_la_ts"
	e := newLightEnv(t, role, nil, "SELECT 1")
	var got string
	if err := e.b.QueryRow(context.Background(), "SELECT $1::text || ' (b)'", "b's").Scan(&got); err != nil {
		t.Fatal(err)
	}
	pb, _ := backendOf(t, e.b)
	var n int
	var text string
	simple(t, e.a, "SELECT pg_catalog.count(*)::int, coalesce(pg_catalog.max(statement), '') FROM pg_catalog.pg_prepared_statements", &n, &text)
	pa, _ := backendOf(t, e.a)
	if pa != pb {
		t.Fatalf("backends %d and %d with pool_size 1", pa, pb)
	}
	if n != 0 {
		t.Errorf("a sees %d prepared statement(s) of b's: %q; want none", n, text)
	}
}
