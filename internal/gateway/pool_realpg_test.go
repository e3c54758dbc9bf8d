package gateway

// Session pooling against the real PostgreSQL: what one client leaves in
// its backend never reaches the next client of the same role.

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/auth/scram"
	"github.com/pgshield/pgshield/internal/testutil/pgtest"
)

// waitIdle waits until role has n idle pooled backends.
func (e *gatewayEnv) waitIdle(t *testing.T, role string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		idle := 0
		for _, s := range e.srv.PoolStats() {
			if s.Role == role {
				idle += s.Idle
			}
		}
		if idle == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has %d idle pooled backends; want %d (stats %+v)", role, idle, n, e.srv.PoolStats())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// closeConn ends a client session as libpq does (Terminate).
func closeConn(t *testing.T, c *pgx.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

func mustExec(t *testing.T, c *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := c.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// simple runs a query with the simple protocol (no statement of the
// client's own in pg_prepared_statements) and scans one row.
func simple(t *testing.T, c *pgx.Conn, sql string, dst ...any) {
	t.Helper()
	if err := c.QueryRow(context.Background(), sql, pgx.QueryExecModeSimpleProtocol).Scan(dst...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// TestRealPoolIsolation leaves every kind of session state a tenant can
// make in a backend, then checks that the next client of the same role
// gets the same backend with none of it.
func TestRealPoolIsolation(t *testing.T) {
	for _, mode := range []string{"session", "transaction"} {
		t.Run(mode, func(t *testing.T) { testRealPoolIsolation(t, mode) })
	}
}

func testRealPoolIsolation(t *testing.T, mode string) {
	srv := pgtest.Shared(t)
	checkGoroutines(t)
	srv.CreateRole(t, "gw_pool_target", "", "NOLOGIN")
	srv.CreateRole(t, "gw_pool", goodPassword, "LOGIN IN ROLE gw_pool_target")
	srv.CreateRole(t, "gw_pool_other", goodPassword, "LOGIN")
	super := srv.Conn(t)
	ctx := context.Background()
	for _, stmt := range []string{"CREATE SEQUENCE IF NOT EXISTS public.gw_pool_seq", "GRANT USAGE ON SEQUENCE public.gw_pool_seq TO gw_pool",
		"CREATE TABLE IF NOT EXISTS public.gw_pool_t (x int)", "GRANT INSERT, SELECT ON public.gw_pool_t TO gw_pool"} {
		if _, err := super.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _, _ = srv.Conn(t).Exec(ctx, "DROP SEQUENCE public.gw_pool_seq; DROP TABLE public.gw_pool_t") })
	env := startRealGateway(t, srv, map[string]string{"pgshield.pool_mode": mode})

	a, err := env.connectPgx(t, "gw_pool", goodPassword, "application_name=app1")
	if err != nil {
		t.Fatal(err)
	}
	pid := a.PgConn().PID()
	for _, stmt := range []string{
		"CREATE TEMP TABLE gw_tmp (x int)",
		"PREPARE gw_sqlprep AS SELECT 1",
		"SET work_mem = '7MB'",
		"SET search_path = evil, public",
		"SET application_name = 'evil'",
		"SELECT pg_catalog.set_config('statement_timeout', '1234', false)",
		"SELECT pg_catalog.set_config('myapp.tenant', 'evil', false)",
		"SELECT pg_catalog.pg_advisory_lock(4242)",
		"LISTEN gw_chan",
		"BEGIN", "DECLARE gw_cur CURSOR WITH HOLD FOR SELECT 1", "COMMIT",
		"SELECT pg_catalog.nextval('gw_pool_seq')",
		"RESET ALL", // a hostile client's reset first, then the role change
		"SET ROLE gw_pool_target",
	} {
		mustExec(t, a, stmt)
	}
	if _, err := a.PgConn().Prepare(ctx, "gw_protoprep", "SELECT 2", nil); err != nil {
		t.Fatal(err)
	}
	var cur string
	simple(t, a, "SELECT current_user::text", &cur)
	if cur != "gw_pool_target" {
		t.Fatalf("current_user = %s after SET ROLE; want gw_pool_target", cur)
	}
	closeConn(t, a)
	env.waitIdle(t, "gw_pool", 1)

	b, err := env.connectPgx(t, "gw_pool", goodPassword, "application_name=app1")
	if err != nil {
		t.Fatal(err)
	}
	if b.PgConn().PID() != pid {
		t.Fatalf("second client's backend PID %d; want the pooled %d", b.PgConn().PID(), pid)
	}
	if v := b.PgConn().ParameterStatus("application_name"); v != "app1" {
		t.Errorf("ParameterStatus application_name = %q; want the startup's app1", v)
	}
	for _, c := range []struct{ what, sql, want string }{
		{"current_user", "SELECT current_user::text || '/' || session_user::text", "gw_pool/gw_pool"},
		{"temp table", "SELECT pg_catalog.count(*)::text FROM pg_catalog.pg_class WHERE relname = 'gw_tmp'", "0"},
		{"prepared statements", "SELECT pg_catalog.count(*)::text FROM pg_catalog.pg_prepared_statements", "0"},
		{"work_mem", "SELECT pg_catalog.current_setting('work_mem')", "4MB"},
		{"search_path", "SELECT pg_catalog.current_setting('search_path')", `"$user", public`},
		{"application_name", "SELECT pg_catalog.current_setting('application_name')", "app1"},
		{"statement_timeout", "SELECT pg_catalog.current_setting('statement_timeout')", "0"},
		{"placeholder", "SELECT COALESCE(pg_catalog.current_setting('myapp.tenant', true), '<null>')", ""},
		{"advisory locks", "SELECT pg_catalog.count(*)::text FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()", "0"},
		{"LISTEN", "SELECT pg_catalog.count(*)::text FROM pg_catalog.pg_listening_channels()", "0"},
		{"cursors", "SELECT pg_catalog.count(*)::text FROM pg_catalog.pg_cursors", "0"},
		{"role", "SELECT pg_catalog.current_setting('role')", "none"},
	} {
		var got string
		simple(t, b, c.sql, &got)
		// A placeholder GUC set by the last client reads '' (defined, reset)
		// rather than NULL: its value does not cross; see README "Pooling".
		if c.what == "placeholder" && (got == "" || got == "<null>") {
			continue
		}
		if got != c.want {
			t.Errorf("%s: %s = %q; want %q", c.what, c.sql, got, c.want)
		}
	}
	_, err = b.Exec(ctx, "SELECT pg_catalog.currval('gw_pool_seq')", pgx.QueryExecModeSimpleProtocol)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "55000" {
		t.Errorf("currval after reuse = %v; want 55000 (not yet defined in this session)", err)
	}
	// The named statement of the last client is gone: preparing it again works.
	if _, err := b.PgConn().Prepare(ctx, "gw_protoprep", "SELECT 3", nil); err != nil {
		t.Errorf("Prepare(gw_protoprep) on the reused backend = %v; want it free", err)
	}
	// Its identity is this client's (BindClient): pgshield.sessions and
	// pg_stat_activity show b's own port.
	var port int
	simple(t, b, "SELECT client_port FROM pg_catalog.pg_stat_activity WHERE pid = pg_catalog.pg_backend_pid()", &port)
	if want := b.PgConn().Conn().LocalAddr().String(); !strings.HasSuffix(want, ":"+itoa(port)) {
		t.Errorf("client_port = %d; want the second client's %s", port, want)
	}

	// Another role, or other startup parameters: another backend.
	o, err := env.connectPgx(t, "gw_pool_other", goodPassword, "application_name=app1")
	if err != nil {
		t.Fatal(err)
	}
	if o.PgConn().PID() == pid {
		t.Error("another role got gw_pool's backend")
	}
	closeConn(t, b)
	env.waitIdle(t, "gw_pool", 1)
	c, err := env.connectPgx(t, "gw_pool", goodPassword, "application_name=app2")
	if err != nil {
		t.Fatal(err)
	}
	if c.PgConn().PID() == pid {
		t.Error("a client with another application_name got the pooled backend")
	}
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}

// TestRealPoolNotReused ends sessions in ways that leave the backend
// unfit for another client: it is closed, never pooled.
func TestRealPoolNotReused(t *testing.T) {
	for _, mode := range []string{"session", "transaction"} {
		t.Run(mode, func(t *testing.T) { testRealPoolNotReused(t, mode) })
	}
}

func testRealPoolNotReused(t *testing.T, mode string) {
	srv := pgtest.Shared(t)
	checkGoroutines(t)
	srv.CreateRole(t, "gw_pool_nr", goodPassword, "LOGIN")
	super := srv.Conn(t)
	ctx := context.Background()
	if _, err := super.Exec(ctx, "CREATE TABLE IF NOT EXISTS public.gw_pool_nr_t (x int); GRANT INSERT, SELECT ON public.gw_pool_nr_t TO gw_pool_nr"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = srv.Conn(t).Exec(ctx, "DROP TABLE public.gw_pool_nr_t") })
	env := startRealGateway(t, srv, map[string]string{"pgshield.pool_mode": mode})
	gone := func(t *testing.T, pid uint32) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			var n int
			if err := super.QueryRow(ctx, "SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity WHERE pid = $1", int32(pid)).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("backend %d still exists; want it closed", pid)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	for _, tt := range []struct {
		desc  string
		leave func(t *testing.T, c *pgx.Conn)
	}{
		{"in a transaction", func(t *testing.T, c *pgx.Conn) {
			mustExec(t, c, "BEGIN")
			mustExec(t, c, "INSERT INTO gw_pool_nr_t VALUES (1)")
		}},
		{"in a failed transaction", func(t *testing.T, c *pgx.Conn) {
			mustExec(t, c, "BEGIN")
			_, _ = c.Exec(ctx, "SELECT 1/0")
		}},
		{"Execute without Sync", func(t *testing.T, c *pgx.Conn) {
			fe := c.PgConn().Frontend()
			fe.Send(&pgproto3.Parse{Query: "INSERT INTO gw_pool_nr_t VALUES (2)"})
			fe.Send(&pgproto3.Bind{})
			fe.Send(&pgproto3.Execute{})
			fe.Send(&pgproto3.Flush{})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond) // let it run, uncommitted
		}},
		{"query still running", func(t *testing.T, c *pgx.Conn) {
			fe := c.PgConn().Frontend()
			fe.Send(&pgproto3.Query{String: "SELECT pg_catalog.pg_sleep(30)"})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tt.desc, func(t *testing.T) {
			c, err := env.connectPgx(t, "gw_pool_nr", goodPassword, "")
			if err != nil {
				t.Fatal(err)
			}
			pid := c.PgConn().PID()
			tt.leave(t, c)
			_ = c.PgConn().Close(ctx) // Terminate, then close
			env.waitIdle(t, "gw_pool_nr", 0)
			if tt.desc == "query still running" {
				// PostgreSQL notices the closed socket only when the
				// query writes; the gateway closed its end and pooled
				// nothing. Not the next client's.
				next, err := env.connectPgx(t, "gw_pool_nr", goodPassword, "")
				if err != nil {
					t.Fatal(err)
				}
				if next.PgConn().PID() == pid {
					t.Fatal("the next client got the busy backend")
				}
				closeConn(t, next)
				_, _ = super.Exec(ctx, "SELECT pg_catalog.pg_terminate_backend($1)", int32(pid))
			}
			gone(t, pid)
		})
	}
	var n int
	if err := super.QueryRow(ctx, "SELECT pg_catalog.count(*) FROM public.gw_pool_nr_t").Scan(&n); err != nil || n != 0 {
		t.Errorf("rows in gw_pool_nr_t = %d, %v; want 0: nothing a client left uncommitted was committed", n, err)
	}
}

// TestRealPoolRoleChanges: the gateway authenticates every login, pooled
// backend or not; pooled backends of a role that may no longer log in are
// closed at its next attempt, and a terminated pooled backend is replaced.
func TestRealPoolRoleChanges(t *testing.T) {
	for _, mode := range []string{"session", "transaction"} {
		t.Run(mode, func(t *testing.T) { testRealPoolRoleChanges(t, mode) })
	}
}

func testRealPoolRoleChanges(t *testing.T, mode string) {
	srv := pgtest.Shared(t)
	checkGoroutines(t)
	srv.CreateRole(t, "gw_pool_rc", goodPassword, "LOGIN")
	super := srv.Conn(t)
	ctx := context.Background()
	env := startRealGateway(t, srv, map[string]string{"pgshield.pool_mode": mode})
	forget := func() { env.srv.cfg.Roles.(interface{ Forget(string) }).Forget("gw_pool_rc") }
	pooledPID := func() uint32 {
		t.Helper()
		c, err := env.connectPgx(t, "gw_pool_rc", goodPassword, "")
		if err != nil {
			t.Fatal(err)
		}
		pid := c.PgConn().PID()
		closeConn(t, c)
		env.waitIdle(t, "gw_pool_rc", 1)
		return pid
	}
	exists := func(pid uint32) bool {
		var n int
		if err := super.QueryRow(ctx, "SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity WHERE pid = $1", int32(pid)).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 1
	}
	refused := func(password string) {
		t.Helper()
		_, err := env.connectPgx(t, "gw_pool_rc", password, "")
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "28P01" {
			t.Fatalf("login = %v; want 28P01", err)
		}
	}

	// pg_terminate_backend of an idle pooled backend: the next client
	// gets a new one.
	pid := pooledPID()
	var ok bool
	if err := super.QueryRow(ctx, "SELECT pg_catalog.pg_terminate_backend($1, 10000)", int32(pid)).Scan(&ok); err != nil || !ok {
		t.Fatal(err)
	}
	c, err := env.connectPgx(t, "gw_pool_rc", goodPassword, "")
	if err != nil {
		t.Fatalf("login after the pooled backend was terminated = %v", err)
	}
	if c.PgConn().PID() == pid {
		t.Fatal("got the terminated backend")
	}
	closeConn(t, c)
	env.waitIdle(t, "gw_pool_rc", 1)

	// Password changed: the old one is refused though a backend is pooled.
	if _, err := super.Exec(ctx, "ALTER ROLE gw_pool_rc PASSWORD '"+mustVerifier(t, "gw_pool_rc", "new-"+goodPassword)+"'"); err != nil {
		t.Fatal(err)
	}
	forget() // as the catalog's TTL would, at once
	refused(goodPassword)
	if _, err := super.Exec(ctx, "ALTER ROLE gw_pool_rc PASSWORD '"+mustVerifier(t, "gw_pool_rc", goodPassword)+"'"); err != nil {
		t.Fatal(err)
	}

	for _, alter := range []string{"NOLOGIN", "VALID UNTIL '2001-01-01'"} {
		forget()
		pid := pooledPID()
		if _, err := super.Exec(ctx, "ALTER ROLE gw_pool_rc "+alter); err != nil {
			t.Fatal(err)
		}
		forget()
		refused(goodPassword)
		deadline := time.Now().Add(10 * time.Second)
		for exists(pid) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: pooled backend %d still open after a refused login", alter, pid)
			}
			time.Sleep(10 * time.Millisecond)
		}
		if _, err := super.Exec(ctx, "ALTER ROLE gw_pool_rc LOGIN VALID UNTIL 'infinity'"); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRealPoolConnectChecks: what PostgreSQL decides only at connect
// (CONNECT on the database, ALLOW_CONNECTIONS, CONNECTION LIMIT, the role
// and database settings) is decided again for a pooled backend, so a
// revocation is not dodged by being handed a backend opened before it;
// and random()'s seed is not handed over (setseed survives DISCARD ALL).
func TestRealPoolConnectChecks(t *testing.T) {
	for _, mode := range []string{"session", "transaction"} {
		t.Run(mode, func(t *testing.T) { testRealPoolConnectChecks(t, mode) })
	}
}

func testRealPoolConnectChecks(t *testing.T, mode string) {
	srv := pgtest.Shared(t)
	checkGoroutines(t)
	role, db := "gw_pool_cc_"+mode[:1], "gw_pool_cc_db_"+mode[:1]
	srv.CreateRole(t, role, goodPassword, "LOGIN")
	super := srv.Conn(t)
	ctx := context.Background()
	sup := func(sql string) {
		t.Helper()
		if _, err := super.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	// A database of its own, so that revoking CONNECT touches no other test.
	sup("CREATE DATABASE " + db)
	t.Cleanup(func() { _, _ = super.Exec(ctx, "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)") })
	sup("REVOKE CONNECT ON DATABASE " + db + " FROM PUBLIC")
	sup("GRANT CONNECT ON DATABASE " + db + " TO " + role)
	env := startRealGateway(t, srv, map[string]string{"pgshield.pool_mode": mode})
	// session logs in, runs query (the backend's pid by default) and ends
	// the session, its backend going back to the pool; err is the login's
	// or the query's.
	session := func(query string) (pid, val string, err error) {
		t.Helper()
		c, err := env.connectPgx(t, role, goodPassword, "dbname="+db)
		if err != nil {
			return "", "", err
		}
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := c.QueryRow(qctx, "SELECT pg_catalog.pg_backend_pid()::text", pgx.QueryExecModeSimpleProtocol).Scan(&pid); err != nil {
			return "", "", err
		}
		if query != "" {
			if err := c.QueryRow(qctx, query, pgx.QueryExecModeSimpleProtocol).Scan(&val); err != nil {
				return "", "", err
			}
		}
		closeConn(t, c)
		env.waitIdle(t, role, 1)
		return pid, val, nil
	}
	first, _, err := session("")
	if err != nil {
		t.Fatal(err)
	}
	if again, _, err := session(""); err != nil || again != first {
		t.Fatalf("second session = backend %s, %v; want the pooled backend %s", again, err, first)
	}

	// setseed() in one session says nothing of the next one's random().
	var want string
	if _, _, err := session("SELECT pg_catalog.setseed(0.5)::text"); err != nil {
		t.Fatal(err)
	}
	c, err := env.connectPgx(t, role, goodPassword, "dbname="+db)
	if err != nil {
		t.Fatal(err)
	}
	simple(t, c, "SELECT pg_catalog.setseed(0.5)::text", new(string))
	simple(t, c, "SELECT pg_catalog.random()::text", &want)
	simple(t, c, "SELECT pg_catalog.setseed(0.5)::text", new(string))
	closeConn(t, c)
	env.waitIdle(t, role, 1)
	if _, got, err := session("SELECT pg_catalog.random()::text"); err != nil || got == want {
		t.Errorf("random() after another client's setseed(0.5) = %q, %v; want not %q (the seed must not be handed over)", got, err, want)
	}

	for _, tt := range []struct{ desc, revoke, restore string }{
		{"REVOKE CONNECT", "REVOKE CONNECT ON DATABASE " + db + " FROM " + role, "GRANT CONNECT ON DATABASE " + db + " TO " + role},
		{"ALLOW_CONNECTIONS false", "ALTER DATABASE " + db + " ALLOW_CONNECTIONS false", "ALTER DATABASE " + db + " ALLOW_CONNECTIONS true"},
		{"role CONNECTION LIMIT 0", "ALTER ROLE " + role + " CONNECTION LIMIT 0", "ALTER ROLE " + role + " CONNECTION LIMIT -1"},
		{"database CONNECTION LIMIT 0", "ALTER DATABASE " + db + " CONNECTION LIMIT 0", "ALTER DATABASE " + db + " CONNECTION LIMIT -1"},
	} {
		pooled, _, err := session("")
		if err != nil {
			t.Fatalf("%s: session before: %v", tt.desc, err)
		}
		sup(tt.revoke)
		pid, _, err := session("")
		sup(tt.restore)
		var pe *pgconn.PgError
		if err == nil || !errors.As(err, &pe) {
			t.Errorf("%s: session = backend %s, %v; want PostgreSQL's refusal, not pooled backend %s", tt.desc, pid, err, pooled)
		}
	}

	// ALTER ROLE ... SET applies at connect: a pooled backend from before
	// it is not handed out.
	before, _, err := session("")
	if err != nil {
		t.Fatal(err)
	}
	sup("ALTER ROLE " + role + " IN DATABASE " + db + " SET default_transaction_read_only = on")
	pid, got, err := session("SHOW default_transaction_read_only")
	if err != nil || got != "on" || pid == before {
		t.Errorf("after ALTER ROLE SET: backend %s (pooled %s), default_transaction_read_only = %q, %v; want a new backend with on", pid, before, got, err)
	}
	sup("ALTER ROLE " + role + " IN DATABASE " + db + " RESET ALL")

	// A role dropped and created again under its name: the old role's
	// pooled backend (its session user a dead OID) is never handed to the
	// new one (found by the e2e suite: the new role ran with no privileges).
	before, _, err = session("")
	if err != nil {
		t.Fatal(err)
	}
	sup("REVOKE CONNECT ON DATABASE " + db + " FROM " + role)
	sup("DROP ROLE " + role)
	srv.CreateRole(t, role, goodPassword, "LOGIN")
	sup("GRANT CONNECT ON DATABASE " + db + " TO " + role)
	// Cleanups run last in, first out: the new role's drop comes before
	// the database's, so its grant goes first.
	t.Cleanup(func() { _, _ = super.Exec(ctx, "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)") })
	env.srv.cfg.Roles.(interface{ Forget(string) }).Forget(role)
	pid, got, err = session("SELECT (current_user OPERATOR(pg_catalog.=) '" + role + "')::text")
	if err != nil || got != "true" || pid == before {
		t.Errorf("after DROP and CREATE ROLE: backend %s (pooled %s), current_user is the role: %q, %v; want a new backend of the new role", pid, before, got, err)
	}
}

// TestRealPoolCancel cancels a query on a reused backend: the key the
// second client holds reaches the backend serving it.
func TestRealPoolCancel(t *testing.T) {
	for _, mode := range []string{"session", "transaction"} {
		t.Run(mode, func(t *testing.T) { testRealPoolCancel(t, mode) })
	}
}

func testRealPoolCancel(t *testing.T, mode string) {
	srv := pgtest.Shared(t)
	checkGoroutines(t)
	srv.CreateRole(t, "gw_pool_cx", goodPassword, "LOGIN")
	env := startRealGateway(t, srv, map[string]string{"pgshield.pool_mode": mode})
	a, err := env.connectPgx(t, "gw_pool_cx", goodPassword, "")
	if err != nil {
		t.Fatal(err)
	}
	pid := a.PgConn().PID()
	closeConn(t, a)
	env.waitIdle(t, "gw_pool_cx", 1)
	b, err := env.connectPgx(t, "gw_pool_cx", goodPassword, "")
	if err != nil {
		t.Fatal(err)
	}
	if b.PgConn().PID() != pid {
		t.Fatalf("not reused")
	}
	done := make(chan error, 1)
	go func() {
		_, err := b.Exec(context.Background(), "SELECT pg_catalog.pg_sleep(30)")
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	// The first client's key no longer reaches the backend.
	if err := a.PgConn().CancelRequest(context.Background()); err != nil {
		t.Logf("stale CancelRequest: %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("the old client's cancel key ended the new client's query: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	if err := b.PgConn().CancelRequest(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "57014" {
			t.Errorf("cancelled query = %v; want 57014", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("cancel did not reach the reused backend")
	}
}

func mustVerifier(t *testing.T, user, password string) string {
	t.Helper()
	v, err := scram.Verifier(user, password, []byte("0123456789abcdef"), scram.DefaultIterations)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
