package gateway

// Per-database and per-role pool modes (pgshield.pool_mode_overrides)
// against the real PostgreSQL.

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/testutil/pgtest"
)

// TestRealPoolModeOverrides: with session pooling global and one database
// in transaction mode (pool_size 1), two clients of that database share
// one backend between transactions while two clients of database postgres
// each keep their own; a role set to session beats its database's
// transaction mode; a live change of the overrides applies to the next
// sessions.
func TestRealPoolModeOverrides(t *testing.T) {
	srv := pgtest.Shared(t)
	checkGoroutines(t)
	const role, other, db = "gw_pm_app", "gw_pm_etl", "gw_pm_tx"
	srv.CreateRole(t, role, goodPassword, "LOGIN")
	srv.CreateRole(t, other, goodPassword, "LOGIN")
	super := srv.Conn(t)
	ctx := context.Background()
	if _, err := super.Exec(ctx, "CREATE DATABASE "+db); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = super.Exec(ctx, "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)") })
	set := map[string]string{"pgshield.pool_mode": "session", "pgshield.pool_size": "1",
		"pgshield.pool_wait_timeout": "20s", "pgshield.pool_mode_overrides": "db:" + db + "=transaction, role:" + other + "=session"}
	env := startRealGateway(t, srv, set)
	connect := func(user, dbname string) *pgx.Conn {
		t.Helper()
		c, err := env.connectPgx(t, user, goodPassword, "dbname="+dbname)
		if err != nil {
			t.Fatalf("%s to %s: %v", user, dbname, err)
		}
		return c
	}
	pid := func(c *pgx.Conn) int32 {
		t.Helper()
		var p int32
		simple(t, c, "SELECT pg_catalog.pg_backend_pid()", &p)
		return p
	}

	// Transaction mode in db: a and b alternate on the one backend.
	a, b := connect(role, db), connect(role, db)
	for i := 0; i < 2; i++ {
		if pa, pb := pid(a), pid(b); pa != pb {
			t.Fatalf("clients of %s on backends %d and %d; want one (transaction mode, pool_size 1)", db, pa, pb)
		}
	}
	// a's transaction holds the one backend; b waits for it (the cap of
	// one backend per key holds in db) and gets it at a's COMMIT.
	mustExec(t, a, "BEGIN")
	waited := make(chan int32, 1)
	go func() {
		var p int32
		_ = b.QueryRow(ctx, "SELECT pg_catalog.pg_backend_pid()", pgx.QueryExecModeSimpleProtocol).Scan(&p)
		waited <- p
	}()
	mustExec(t, a, "COMMIT")
	if p := <-waited; p == 0 {
		t.Fatal("b got no backend after a's COMMIT")
	}

	// Session mode in postgres (the global mode): c and d each hold one,
	// pool_size 1 notwithstanding.
	c, d := connect(role, "postgres"), connect(role, "postgres")
	pc, pd := pid(c), pid(d)
	if pc == pd {
		t.Fatalf("two session-mode clients of postgres share backend %d", pc)
	}
	if pid(c) != pc || pid(d) != pd {
		t.Fatal("a session-mode client changed backend between statements")
	}

	// A role override beats the database's: etl in db is in session mode.
	e, f := connect(other, db), connect(other, db)
	if pe, pf := pid(e), pid(f); pe == pf {
		t.Fatalf("%s's two clients of %s share backend %d; want session mode (role beats database)", other, db, pe)
	}
	// pool show's view: each key with the mode in force.
	modes := map[[2]string]string{}
	p := env.srv.rt.Load().params.Pool
	for _, s := range env.srv.PoolStats() {
		modes[[2]string{s.Role, s.Database}] = p.ModeFor(s.Role, s.Database)
	}
	if modes[[2]string{role, db}] != "transaction" || modes[[2]string{role, "postgres"}] != "session" || modes[[2]string{other, db}] != "session" {
		t.Errorf("modes per key = %v", modes)
	}
	for _, x := range []*pgx.Conn{a, b, c, d, e, f} {
		closeConn(t, x)
	}

	// Live: db back to the global session mode; new clients each hold one.
	set["pgshield.pool_mode_overrides"] = ""
	params, err := config.ResolveParams(set)
	if err != nil {
		t.Fatal(err)
	}
	env.srv.SetParams(params)
	g, h := connect(role, db), connect(role, db)
	if pg, ph := pid(g), pid(h); pg == ph {
		t.Fatalf("after the override was removed, two clients of %s share backend %d", db, pg)
	}
	closeConn(t, g)
	closeConn(t, h)
}
