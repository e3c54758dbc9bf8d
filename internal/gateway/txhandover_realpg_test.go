package gateway

// Transaction pooling's hand-overs (a backend changing clients) against
// the real PostgreSQL.

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshield/pgshield/internal/testutil/pgtest"
)

// TestRealTxHandoverRefused: a backend whose hand-over check fails (the
// role's ALTER ROLE ... SET rows changed since it opened) never runs the
// client's statement; the statement runs once, on another backend. Simple
// and extended protocol.
func TestRealTxHandoverRefused(t *testing.T) {
	srv := pgtest.Shared(t)
	checkGoroutines(t)
	const role = "gw_tx_ho"
	srv.CreateRole(t, role, goodPassword, "LOGIN")
	super := srv.Conn(t)
	ctx := context.Background()
	for _, q := range []string{"CREATE TABLE public.gw_tx_ho_t (pid int, who text)", "GRANT INSERT, SELECT ON public.gw_tx_ho_t TO " + role} {
		if _, err := super.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		_, _ = super.Exec(ctx, "DROP TABLE IF EXISTS public.gw_tx_ho_t")
		_, _ = super.Exec(ctx, "ALTER ROLE "+role+" RESET ALL")
	})
	env := txEnv(t, srv, "1")
	a, err := env.connectPgx(t, role, goodPassword, "")
	if err != nil {
		t.Fatal(err)
	}
	b, err := env.connectPgx(t, role, goodPassword, "")
	if err != nil {
		t.Fatal(err)
	}
	for i, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
		// a holds the one backend last; then what it started with changes.
		pa, _ := backendOf(t, a)
		if _, err := super.Exec(ctx, "ALTER ROLE "+role+" SET work_mem = '"+itoa(5+i)+"MB'"); err != nil {
			t.Fatal(err)
		}
		who := "b" + itoa(i)
		if _, err := b.Exec(ctx, "INSERT INTO public.gw_tx_ho_t SELECT pg_catalog.pg_backend_pid(), $1", mode, who); err != nil {
			t.Fatalf("%v: INSERT: %v", mode, err)
		}
		pb, _ := backendOf(t, b)
		if got := env.srv.HandoversRefused(); got != uint64(i+1) {
			t.Fatalf("%v: %d hand-overs refused by pgshield_guard; want %d (the pipelined rebind refused, not the gateway)", mode, got, i+1)
		}
		var n, pid int32
		if err := super.QueryRow(ctx, "SELECT count(*), max(pid) FROM public.gw_tx_ho_t WHERE who = $1", who).Scan(&n, &pid); err != nil {
			t.Fatal(err)
		}
		if n != 1 || pid == pa || pid != pb {
			t.Fatalf("%v: %d rows, pid %d; want 1 row from the new backend %d, never from %d (failed its check)", mode, n, pid, pb, pa)
		}
		var wm string
		simple(t, b, "SELECT pg_catalog.current_setting('work_mem')", &wm)
		if wm != itoa(5+i)+"MB" {
			t.Fatalf("work_mem %s on the new backend; want %dMB", wm, 5+i)
		}
	}
}

// TestRealTxHandoverRollback: a transaction begun right after the
// hand-over and rolled back does not undo the rebind: the backend still
// shows the client that holds it.
func TestRealTxHandoverRollback(t *testing.T) {
	srv := pgtest.Shared(t)
	checkGoroutines(t)
	const role = "gw_tx_hr"
	srv.CreateRole(t, role, goodPassword, "LOGIN")
	env := txEnv(t, srv, "1")
	ctx := context.Background()
	a, err := env.connectPgx(t, role, goodPassword, "")
	if err != nil {
		t.Fatal(err)
	}
	b, err := env.connectPgx(t, role, goodPassword, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"simple", "extended"} {
		exec := func(sql string) {
			t.Helper()
			var err error
			if mode == "simple" {
				_, err = b.Exec(ctx, sql)
			} else {
				err = b.PgConn().ExecParams(ctx, sql, nil, nil, nil, nil).Read().Err
			}
			if err != nil {
				t.Fatalf("%s %s: %v", mode, sql, err)
			}
		}
		backendOf(t, a) // a is the backend's last client
		exec("BEGIN")
		_, port := backendOf(t, b)
		if itoa(int(port)) != localPort(b) {
			t.Fatalf("%v: in b's transaction client_port = %d; want b's %s", mode, port, localPort(b))
		}
		exec("ROLLBACK")
		// b used it last: no hand-over now, the binding is what is left.
		_, port = backendOf(t, b)
		if itoa(int(port)) != localPort(b) {
			t.Fatalf("%v: after b's ROLLBACK client_port = %d; want b's %s (the rebind was undone)", mode, port, localPort(b))
		}
	}
}

// TestRealTxHiddenState: state a called function leaves (a GUC set with
// set_config(..., false), a temporary table, a session advisory lock),
// which the pin scanner cannot see, does not reach the next client of the
// backend: the reset at every change of client is why it is never skipped.
func TestRealTxHiddenState(t *testing.T) {
	srv := pgtest.Shared(t)
	checkGoroutines(t)
	const role = "gw_tx_hs"
	srv.CreateRole(t, role, goodPassword, "LOGIN")
	super := srv.Conn(t)
	ctx := context.Background()
	if _, err := super.Exec(ctx, `CREATE FUNCTION public.gw_tx_hs_fn() RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_catalog.set_config('work_mem', '7MB', false);
  CREATE TEMP TABLE gw_tx_hs_leak (x int);
  PERFORM pg_catalog.pg_advisory_lock(4242);
  RETURN 1;
END $$`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = super.Exec(ctx, "DROP FUNCTION IF EXISTS public.gw_tx_hs_fn()") })
	env := txEnv(t, srv, "1")
	a, err := env.connectPgx(t, role, goodPassword, "")
	if err != nil {
		t.Fatal(err)
	}
	b, err := env.connectPgx(t, role, goodPassword, "")
	if err != nil {
		t.Fatal(err)
	}
	var one int
	simple(t, a, "SELECT public.gw_tx_hs_fn()", &one)
	pa, _ := backendOf(t, a)
	var wm string
	var leak bool
	var locks int
	simple(t, b, `SELECT pg_catalog.current_setting('work_mem'), pg_catalog.to_regclass('pg_temp.gw_tx_hs_leak') IS NOT NULL,
		(SELECT pg_catalog.count(*)::int FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid())`, &wm, &leak, &locks)
	pb, _ := backendOf(t, b)
	if pa != pb {
		t.Fatalf("backends %d and %d with pool_size 1", pa, pb)
	}
	if wm != "4MB" || leak || locks != 0 {
		t.Fatalf("b on a's backend: work_mem %s, temp table %v, advisory locks %d; want 4MB, false, 0", wm, leak, locks)
	}
}

// TestRealTxHandoverReprepareFails: a named statement re-prepared on a
// new backend that PostgreSQL now refuses (its table was dropped) gives the
// client an error for its batch, not a hang, and the session goes on.
func TestRealTxHandoverReprepareFails(t *testing.T) {
	srv := pgtest.Shared(t)
	checkGoroutines(t)
	const role = "gw_tx_rp"
	srv.CreateRole(t, role, goodPassword, "LOGIN")
	super := srv.Conn(t)
	ctx := context.Background()
	for _, q := range []string{"CREATE TABLE public.gw_tx_rp_t (x int)", "GRANT SELECT ON public.gw_tx_rp_t TO " + role} {
		if _, err := super.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _, _ = super.Exec(ctx, "DROP TABLE IF EXISTS public.gw_tx_rp_t") })
	env := txEnv(t, srv, "1")
	a, err := env.connectPgx(t, role, goodPassword, "")
	if err != nil {
		t.Fatal(err)
	}
	b, err := env.connectPgx(t, role, goodPassword, "")
	if err != nil {
		t.Fatal(err)
	}
	const q = "SELECT count(*) FROM public.gw_tx_rp_t WHERE x > $1"
	var n int
	for i := 0; i < 2; i++ { // a's statement, re-prepared once b has had the backend
		if err := a.QueryRow(ctx, q, 0).Scan(&n); err != nil {
			t.Fatal(err)
		}
		simple(t, b, "SELECT 1", &n)
	}
	if _, err := super.Exec(ctx, "DROP TABLE public.gw_tx_rp_t"); err != nil {
		t.Fatal(err)
	}
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := a.QueryRow(qctx, q, 0).Scan(&n); err == nil || qctx.Err() != nil {
		t.Fatalf("a's statement on a dropped table = %v (context %v); want PostgreSQL's error, at once", err, qctx.Err())
	}
	simple(t, a, "SELECT 7", &n)
	if n != 7 {
		t.Fatalf("a after the failed statement: %d", n)
	}
}

// TestRealTxLightHandover: a backend passes to another client without
// DISCARD ALL only while pgshield_guard reports nothing DISCARD ALL would
// clear, and what no utility statement marks is undone anyway: session
// advisory locks, currval/lastval (an identity column's too), the unnamed
// statement. A set_config(..., false) inside a query forces the full reset.
func TestRealTxLightHandover(t *testing.T) {
	srv := pgtest.Shared(t)
	checkGoroutines(t)
	const role = "gw_tx_lh"
	srv.CreateRole(t, role, goodPassword, "LOGIN")
	super := srv.Conn(t)
	ctx := context.Background()
	for _, q := range []string{
		"CREATE SEQUENCE public.gw_lh_seq",
		// Out of the pin scanner's sight, as in TestRealTxHiddenState.
		"CREATE FUNCTION public.gw_lh_lock() RETURNS void LANGUAGE sql AS 'SELECT pg_catalog.pg_advisory_lock(4343)'",
		"CREATE FUNCTION public.gw_lh_set() RETURNS text LANGUAGE sql AS $$SELECT pg_catalog.set_config('work_mem', '9MB', false)$$",
		"CREATE TABLE public.gw_lh_t (id int GENERATED ALWAYS AS IDENTITY, x int)",
		"GRANT USAGE ON SEQUENCE public.gw_lh_seq, public.gw_lh_t_id_seq TO " + role,
		"GRANT INSERT, SELECT ON public.gw_lh_t TO " + role,
	} {
		if _, err := super.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		_, _ = super.Exec(ctx, "DROP TABLE IF EXISTS public.gw_lh_t; DROP SEQUENCE IF EXISTS public.gw_lh_seq; DROP FUNCTION IF EXISTS public.gw_lh_lock(), public.gw_lh_set()")
	})
	env := txEnv(t, srv, "1")
	a, err := env.connectPgx(t, role, goodPassword, "")
	if err != nil {
		t.Fatal(err)
	}
	b, err := env.connectPgx(t, role, goodPassword, "")
	if err != nil {
		t.Fatal(err)
	}
	light0, full0 := env.srv.handovers.light.Load(), env.srv.handovers.full.Load()

	// a: a session advisory lock, nextval, an identity insert, and an
	// unnamed statement left behind (extended protocol).
	var n int64
	simple(t, a, "SELECT public.gw_lh_lock()::text IS NULL, pg_catalog.nextval('public.gw_lh_seq')", new(bool), &n)
	if _, err := a.Exec(ctx, "INSERT INTO public.gw_lh_t (x) VALUES (1)", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	if rr := a.PgConn().ExecParams(ctx, "SELECT 4343", nil, nil, nil, nil).Read(); rr.Err != nil {
		t.Fatal(rr.Err)
	}
	pa, _ := backendOf(t, a)

	// b, on a's backend: none of it.
	var locks int
	simple(t, b, `SELECT (SELECT pg_catalog.count(*)::int FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid())`, &locks)
	pb, _ := backendOf(t, b)
	if pa != pb {
		t.Fatalf("backends %d and %d with pool_size 1", pa, pb)
	}
	if locks != 0 {
		t.Errorf("b holds %d advisory locks a took; want 0", locks)
	}
	for _, q := range []string{"SELECT pg_catalog.currval('public.gw_lh_seq')", "SELECT pg_catalog.lastval()",
		"SELECT pg_catalog.currval('public.gw_lh_t_id_seq')"} {
		var v int64
		err := b.QueryRow(ctx, q, pgx.QueryExecModeSimpleProtocol).Scan(&v)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "55000" {
			t.Errorf("b: %s = %d, %v; want 55000 (not yet defined in this session)", q, v, err)
		}
	}
	// b binds the unnamed statement without preparing it (a Bind alone):
	// PostgreSQL must not find a's.
	if rr := b.PgConn().ExecPrepared(ctx, "", nil, nil, nil).Read(); rr.Err == nil {
		t.Errorf("b: Bind to the unnamed statement without Parse ran %q; want 26000", rr.Rows)
	} else if pe := (*pgconn.PgError)(nil); !errors.As(rr.Err, &pe) || pe.Code != "26000" {
		t.Errorf("b: Bind to the unnamed statement = %v; want 26000", rr.Err)
	}
	if got := env.srv.handovers.light.Load() - light0; got == 0 {
		t.Errorf("light hand-overs = 0; want the backend passed without DISCARD ALL (full %d)", env.srv.handovers.full.Load()-full0)
	}

	// A session-level setting from inside a query: the next hand-over is
	// a full one, and b sees the default.
	simple(t, a, "SELECT public.gw_lh_set()", new(string))
	full1 := env.srv.handovers.full.Load()
	var wm string
	simple(t, b, "SELECT pg_catalog.current_setting('work_mem')", &wm)
	if wm != "4MB" {
		t.Errorf("b after a's set_config: work_mem %s; want 4MB", wm)
	}
	if env.srv.handovers.full.Load() == full1 {
		t.Errorf("the hand-over after a session-level set_config was not a full reset")
	}
}
