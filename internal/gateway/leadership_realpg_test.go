package gateway

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgshield/pgshield/internal/testutil/pgtest"
)

// TestRealLeadershipFence: a gateway in front of the real PostgreSQL
// loses leadership while a session-pooling and a transaction-pooling
// client each have a transaction open. Both clients get FATAL 57P01 at
// their COMMIT, neither row is committed, their backends and the pooled
// idle one leave pg_stat_activity; a new login gets 57P01, and a libpq
// multi-host string with target_session_attrs=read-write lands on the
// next host (a second gateway, standing for another node). When
// leadership comes back, logins and commits work again.
func TestRealLeadershipFence(t *testing.T) {
	srv := pgtest.Shared(t)
	checkGoroutines(t)
	const role, txRole = "gw_fence", "gw_fence_tx"
	srv.CreateRole(t, role, goodPassword, "LOGIN")
	srv.CreateRole(t, txRole, goodPassword, "LOGIN")
	super := srv.Conn(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, q := range []string{"CREATE TABLE public.gw_fence_t (who text)",
		"GRANT INSERT, SELECT ON public.gw_fence_t TO " + role + ", " + txRole} {
		if _, err := super.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _, _ = super.Exec(context.Background(), "DROP TABLE IF EXISTS public.gw_fence_t") })
	rows := func(who string) int {
		t.Helper()
		var n int
		if err := super.QueryRow(ctx, "SELECT pg_catalog.count(*) FROM public.gw_fence_t WHERE who = $1", who).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	lead := newFakeLeadership(true)
	params := map[string]string{"pgshield.pool_mode": "session", "pgshield.pool_mode_overrides": "role:" + txRole + "=transaction"}
	gwA := startRealGatewayWith(t, srv, params, func(c *Config) { c.Leadership = lead })
	// Another node's gateway (here in front of the same PostgreSQL), with
	// the same certificate so one sslrootcert verifies both.
	gwB := startRealGatewayWith(t, srv, params, func(c *Config) { c.Cert = gwA.srv.cfg.Cert })

	// A session-mode backend left idle in the pool.
	spare, err := gwA.connectPgx(t, role, goodPassword, "")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int32
	var pid int32
	if err := spare.QueryRow(ctx, "SELECT pg_catalog.pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	pids = append(pids, pid)
	closeConn(t, spare)
	gwA.waitIdle(t, role, 1)

	// A transaction open in each pool mode.
	open := func(user string) *pgx.Conn {
		t.Helper()
		c, err := gwA.connectPgx(t, user, goodPassword, "")
		if err != nil {
			t.Fatalf("login as %s: %v", user, err)
		}
		var pid int32
		if _, err := c.Exec(ctx, "BEGIN"); err != nil {
			t.Fatal(err)
		}
		if err := c.QueryRow(ctx, "INSERT INTO public.gw_fence_t VALUES ($1) RETURNING pg_catalog.pg_backend_pid()", user).Scan(&pid); err != nil {
			t.Fatalf("%s: INSERT: %v", user, err)
		}
		pids = append(pids, pid)
		return c
	}
	sessionMode, txMode := open(role), open(txRole)

	lead.set(false, true)
	// The gateway acts on the change in its own goroutine: a COMMIT sent
	// before it has could still reach PostgreSQL (and commit, its answer
	// replaced by 57P01), which the fence's margin covers in a cluster but
	// this test would count as a row committed after the fence. Wait for
	// the fence to be in force (its audit record comes after every session
	// was told to end).
	for deadline := time.Now().Add(10 * time.Second); len(gwA.audited("cluster.fenced")) == 0; {
		if time.Now().After(deadline) {
			t.Fatal("no cluster.fenced record 10 s after leadership was lost")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, c := range []*pgx.Conn{sessionMode, txMode} {
		_, err := c.Exec(ctx, "COMMIT")
		wantPgError(t, c.Config().User+": COMMIT after the fence", err, "57P01", fencedSessionMsg)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var left int
		if err := super.QueryRow(ctx, "SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity WHERE pid = ANY($1)", pids).Scan(&left); err != nil {
			t.Fatal(err)
		}
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of the backends %v still in pg_stat_activity 10 s after the fence; want none", left, pids)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n, m := rows(role), rows(txRole); n != 0 || m != 0 {
		t.Errorf("rows committed by the fenced sessions: %d and %d; want none", n, m)
	}

	_, err = gwA.connectPgx(t, role, goodPassword, "")
	wantPgError(t, "login while fenced", err, "57P01", fencedLoginMsg)

	// libpq's multi-host failover: the fenced node refuses, the next one
	// takes the session.
	hostA, portA, _ := net.SplitHostPort(gwA.addr)
	hostB, portB, _ := net.SplitHostPort(gwB.addr)
	cc, err := pgx.ParseConfig(fmt.Sprintf("host=%s,%s port=%s,%s user=%s password='%s' dbname=postgres sslmode=verify-full sslrootcert=%s connect_timeout=10 target_session_attrs=read-write",
		hostA, hostB, portA, portB, role, goodPassword, gwA.caFile))
	if err != nil {
		t.Fatal(err)
	}
	multi, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		t.Fatalf("multi-host login with the first host fenced: %v; want the second host", err)
	}
	defer multi.Close(context.Background())
	if _, port, _ := net.SplitHostPort(multi.PgConn().Conn().RemoteAddr().String()); port != portB {
		t.Errorf("multi-host login reached port %s; want the second host's %s", port, portB)
	}
	if _, err := multi.Exec(ctx, "INSERT INTO public.gw_fence_t VALUES ('other node')"); err != nil || rows("other node") != 1 {
		t.Errorf("INSERT on the other node: %v; want one row committed", err)
	}

	if evs := gwA.audited("cluster.fenced"); len(evs) != 1 || evs[0].Fields["sessions_ended"] != 2 {
		t.Errorf("cluster.fenced records = %+v; want one, sessions_ended 2", evs)
	}

	lead.set(true, true)
	back, err := gwA.connectPgx(t, role, goodPassword, "")
	if err != nil {
		t.Fatalf("login after leadership came back: %v", err)
	}
	if _, err := back.Exec(ctx, "INSERT INTO public.gw_fence_t VALUES ($1)", role); err != nil || rows(role) != 1 {
		t.Errorf("INSERT after leadership came back: %v; want one row committed", err)
	}
	if n := len(gwA.audited("cluster.confirmed")); n != 1 {
		t.Errorf("cluster.confirmed audited %d times; want once", n)
	}
}
