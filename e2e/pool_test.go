package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestPool drives session pooling through the whole daemon with psql and
// pgx: consecutive clients of a role and database share one backend, each
// seen by PostgreSQL as itself; another role gets another backend; pool
// show reports it; a removed firewall rule, pg_terminate_backend and a key
// lock still end sessions, per client, and the lock drains the pool.
func TestPool(t *testing.T) {
	s := startedServer(t, "pool")
	admin := func(sql string) string {
		t.Helper()
		out, err := psql(t, s.dsn("user=pgadmin sslmode=verify-full"), adminPassword, "-c", sql)
		if err != nil {
			t.Fatalf("%s: %v\n%s", sql, err, out)
		}
		return out
	}
	admin("CREATE ROLE pool_a LOGIN PASSWORD 'pool-a-pw'")
	admin("CREATE ROLE pool_b LOGIN PASSWORD 'pool-b-pw'")
	// One psql per client: its backend pid and the client port PostgreSQL
	// shows (pgshield.sessions joined in, as DBAs look).
	const who = `SELECT pg_backend_pid() || ' ' || a.client_port || ' ' || host(a.client_addr) || ' ' || c.method
	  FROM pg_stat_activity a JOIN pgshield.sessions c USING (pid) WHERE a.pid = pg_backend_pid()`
	session := func(user, pw string, extra ...string) (pid, port string) {
		t.Helper()
		out, err := psql(t, s.dsn("user="+user+" sslmode=verify-full"), pw, append([]string{"-c", who}, extra...)...)
		if err != nil {
			t.Fatalf("psql as %s: %v\n%s", user, err, out)
		}
		f := strings.Fields(strings.Split(out, "\n")[0])
		if len(f) != 4 || f[2] != "127.0.0.1" || f[3] != "scram-sha-256-plus" {
			t.Fatalf("session as %s: %q; want pid, port, 127.0.0.1, scram-sha-256-plus", user, out)
		}
		return f[0], f[1]
	}
	idle := func(role string) int {
		t.Helper()
		var info struct {
			Mode  string `json:"mode"`
			Pools []struct {
				Role string `json:"role"`
				Idle int    `json:"idle_backends"`
			} `json:"pools"`
		}
		out := mustCLI(t, s, "pool", "show", "-o", "json")
		if err := json.Unmarshal([]byte(out), &info); err != nil || info.Mode != "session" {
			t.Fatalf("pool show -o json = %q (%v); want JSON in session mode", out, err)
		}
		for _, p := range info.Pools {
			if p.Role == role {
				return p.Idle
			}
		}
		return 0
	}
	waitIdle := func(role string, n int) {
		t.Helper()
		for i := 0; idle(role) != n; i++ {
			if i == 100 {
				t.Fatalf("%s: %d idle pooled backends; want %d", role, idle(role), n)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	pid1, port1 := session("pool_a", "pool-a-pw", "-c", "SET work_mem = '9MB'", "-c", "CREATE TEMP TABLE pool_tmp (x int)")
	waitIdle("pool_a", 1)
	pid2, port2 := session("pool_a", "pool-a-pw", "-c", "SELECT current_setting('work_mem') || ' ' || (to_regclass('pool_tmp') IS NULL)")
	if pid2 != pid1 {
		t.Errorf("second pool_a client on backend %s; want the pooled %s", pid2, pid1)
	}
	if port2 == port1 {
		t.Errorf("second client shown with the first client's port %s; want its own (BindClient)", port1)
	}
	out, err := psql(t, s.dsn("user=pool_a sslmode=verify-full"), "pool-a-pw",
		"-c", "SELECT pg_backend_pid() || ' ' || current_setting('work_mem') || ' ' || (to_regclass('pool_tmp') IS NULL)")
	if err != nil || out != pid1+" 4MB true" {
		t.Errorf("third client: %q, %v; want %s 4MB true (same backend, nothing of the first client's)", out, err, pid1)
	}
	waitIdle("pool_a", 1)
	pidB, _ := session("pool_b", "pool-b-pw")
	if pidB == pid1 {
		t.Errorf("pool_b got pool_a's backend %s", pid1)
	}
	waitIdle("pool_b", 1)
	table := mustCLI(t, s, "pool", "show")
	if !strings.Contains(table, "ROLE") || !strings.Contains(table, "pool_a") || !strings.Contains(table, "pool_b") {
		t.Errorf("pool show table:\n%s\nwant rows for pool_a and pool_b", table)
	}

	ctx := context.Background()
	connect := func() *pgx.Conn {
		t.Helper()
		c, err := pgxConnect(t, s.dsn("user=pool_a password=pool-a-pw sslmode=verify-full"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(context.Background()) })
		return c
	}
	// pg_terminate_backend of the backend serving one client: that client
	// gets PostgreSQL's 57P01, another client of the same role carries on.
	c1, c2 := connect(), connect()
	admin(fmt.Sprintf("SELECT pg_terminate_backend(%d, 10000)", c1.PgConn().PID()))
	if _, err := c1.Exec(ctx, "SELECT 1"); sqlState(err) != "57P01" {
		t.Errorf("query on the terminated backend = %v; want 57P01", err)
	}
	if _, err := c2.Exec(ctx, "SELECT 1"); err != nil {
		t.Errorf("the other client: %v; want it unaffected", err)
	}

	// A removed firewall rule ends the session (57P01) and pools nothing
	// of it; the backend it had is closed.
	c3 := connect()
	pid3 := c3.PgConn().PID()
	mustCLI(t, s, "firewall-rule", "delete", "--name", "AllowLocalhost")
	_, err = c3.Exec(ctx, "SELECT 1")
	mustCLI(t, s, "firewall-rule", "create", "--name", "AllowLocalhost", "--start-ip-address", "127.0.0.1", "--end-ip-address", "127.0.0.1")
	if sqlState(err) != "57P01" {
		t.Errorf("query after the rule was removed = %v; want 57P01", err)
	}
	gone := func(pid string) {
		t.Helper()
		for i := 0; s.superSQL(t, "SELECT count(*) FROM pg_stat_activity WHERE pid = "+pid) != "0"; i++ {
			if i == 100 {
				t.Fatalf("backend %s still open", pid)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	gone(strconv.Itoa(int(pid3)))

	// Key lock: sessions end, the pool is drained; after unlock a client
	// gets a new backend.
	c2.Close(ctx)
	waitIdle("pool_a", 1)
	mustCLI(t, s, "key", "lock")
	if n := idle("pool_a") + idle("pool_b"); n != 0 {
		t.Errorf("%d idle pooled backends after key lock; want 0", n)
	}
	mustCLI(t, s, "key", "unlock")
	pid4, _ := session("pool_a", "pool-a-pw")
	if pid4 == pid1 {
		t.Errorf("after lock and unlock the old backend %s served again", pid1)
	}
}

// TestPoolTransaction drives transaction pooling through the daemon: 20
// pgx clients (named statements from pgx's cache, transactions) over a
// pool of 2 all succeed, pool show reports at most 2 backends; session
// features pin a client; a removed firewall rule still ends a client that
// holds no backend between transactions, and one that holds one.
func TestPoolTransaction(t *testing.T) {
	s := startedServer(t, "pooltx")
	mustCLI(t, s, "parameter", "set", "pgshield.pool_mode", "transaction")
	mustCLI(t, s, "parameter", "set", "pgshield.pool_size", "2")
	if _, err := psql(t, s.dsn("user=pgadmin sslmode=verify-full"), adminPassword,
		"-c", "CREATE ROLE pooltx LOGIN PASSWORD 'pooltx-pw'", "-c", "CREATE TABLE pooltx_t (c int, v int)",
		"-c", "GRANT SELECT, INSERT ON pooltx_t TO pooltx"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	connect := func() *pgx.Conn {
		t.Helper()
		c, err := pgxConnect(t, s.dsn("user=pooltx password=pooltx-pw sslmode=verify-full"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(context.Background()) })
		return c
	}
	const n = 20
	conns := make([]*pgx.Conn, n)
	for i := range conns {
		conns[i] = connect()
	}
	errs := make(chan error, n)
	for i, c := range conns {
		go func() {
			for k := 0; k < 20; k++ {
				tx, err := c.Begin(ctx)
				if err == nil {
					_, err = tx.Exec(ctx, "INSERT INTO pooltx_t VALUES ($1, $2)", i, k)
				}
				if err == nil {
					err = tx.Commit(ctx)
				}
				var got int
				if err == nil {
					err = c.QueryRow(ctx, "SELECT count(*) FROM pooltx_t WHERE c = $1", i).Scan(&got)
				}
				if err == nil && got != k+1 {
					err = fmt.Errorf("client %d sees %d rows of its own; want %d", i, got, k+1)
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range conns {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	var info struct {
		Mode  string `json:"mode"`
		Pools []struct {
			Role    string `json:"role"`
			Clients int    `json:"clients"`
			Active  int    `json:"active_backends"`
			Idle    int    `json:"idle_backends"`
		} `json:"pools"`
	}
	out := mustCLI(t, s, "pool", "show", "-o", "json")
	if err := json.Unmarshal([]byte(out), &info); err != nil || info.Mode != "transaction" {
		t.Fatalf("pool show -o json = %q (%v); want JSON in transaction mode", out, err)
	}
	for _, p := range info.Pools {
		if p.Role == "pooltx" && (p.Active+p.Idle > 2 || p.Clients != n) {
			t.Errorf("pool show: %+v; want %d clients on at most 2 backends", p, n)
		}
	}

	// SET pins the client: its setting holds across transactions while
	// the others go on over the remaining backend.
	a := conns[0]
	if _, err := a.Exec(ctx, "SET work_mem = '9MB'"); err != nil {
		t.Fatal(err)
	}
	for _, c := range conns[1:4] {
		if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
	}
	var wm string
	if err := a.QueryRow(ctx, "SHOW work_mem").Scan(&wm); err != nil || wm != "9MB" {
		t.Errorf("pinned client's work_mem = %q, %v; want 9MB", wm, err)
	}

	// A removed firewall rule ends a client between transactions (no
	// backend) and the pinned one (its backend) with 57P01.
	b := conns[1]
	mustCLI(t, s, "firewall-rule", "delete", "--name", "AllowLocalhost")
	_, errA := a.Exec(ctx, "SELECT 1")
	_, errB := b.Exec(ctx, "SELECT 1")
	mustCLI(t, s, "firewall-rule", "create", "--name", "AllowLocalhost", "--start-ip-address", "127.0.0.1", "--end-ip-address", "127.0.0.1")
	if sqlState(errA) != "57P01" || sqlState(errB) != "57P01" {
		t.Errorf("queries after the rule was removed = %v, %v; want 57P01", errA, errB)
	}
}
