package alerts

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgshield/pgshield/internal/alerting"
	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/pgbackend"
	"github.com/pgshield/pgshield/internal/testutil/pgtest"
)

// countAs runs a count query in db as role (the superuser SET ROLE to it)
// after stmts.
func countAs(t *testing.T, srv *pgtest.Server, db, role, query string, stmts ...string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cc, err := pgbackend.PinnedConfig(srv.Cluster.DSN(config.SuperuserRole, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	cc.Database = db
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "SET ROLE "+pgx.Identifier{role}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			t.Fatalf("%q as %s: %v", s, role, err)
		}
	}
	var n int
	if err := conn.QueryRow(ctx, query).Scan(&n); err != nil {
		t.Fatalf("%q as %s: %v", query, role, err)
	}
	return n
}

// The attack (review finding 3): a database's owner ANALYZEs a decoy
// table in it and reads its values from pg_stats, a catalog view pgaudit
// logs no OBJECT record for. The decoy keeps no statistics; should it
// have some anyway (a decoy made before this, a target set back), the
// check reports tampering, removes them and sets the targets to 0 again.
func TestDecoyValuesNotInPgStats(t *testing.T) {
	srv := pgtest.Shared(t)
	if !srv.Cluster.HasPgaudit() {
		t.Skip("pgaudit is not installed")
	}
	c, _, _ := realController(t, srv)
	ctx := context.Background()
	srv.CreateRole(t, "alerts_dbadmin", "", "NOLOGIN")
	createDB(t, srv, "alerts_victim", "OWNER alerts_dbadmin")
	if _, err := c.CreateDecoy(ctx, apitype.DecoyRequest{Kind: apitype.DecoyTable, Name: "finance.payroll", Database: "alerts_victim"}); err != nil {
		t.Fatal(err)
	}
	const statsQ = `SELECT count(*)::int FROM pg_stats WHERE schemaname = 'finance' AND tablename = 'payroll'`
	if n := countAs(t, srv, "alerts_victim", "alerts_dbadmin", statsQ, "ANALYZE finance.payroll"); n != 0 {
		t.Fatalf("after the owner's ANALYZE, pg_stats shows %d columns of the decoy", n)
	}
	c.Poll(ctx)
	for _, d := range c.Decoys() {
		if d.State != "ok" {
			t.Fatalf("decoy %s: %s", d.Name, d.State)
		}
	}

	// Statistics there anyway: a target set back as a decoy made before
	// had it.
	superIn(t, srv, "alerts_victim", "ALTER TABLE finance.payroll ALTER COLUMN card_number SET STATISTICS -1")
	if n := countAs(t, srv, "alerts_victim", "alerts_dbadmin", statsQ, "ANALYZE finance.payroll"); n == 0 {
		t.Fatalf("the set-up failed: no statistics with the default target")
	}
	c.Poll(ctx)
	found := false
	for _, a := range c.List() {
		if a.Type == alerting.TypeDecoyTampered && a.Details["found"] == "statistics gathered" && a.Details["database"] == "alerts_victim" {
			found = true
		}
	}
	if !found {
		t.Errorf("no decoy_tampered alert for the decoy's statistics: %+v", c.List())
	}
	if n := countAs(t, srv, "alerts_victim", "alerts_dbadmin", statsQ); n != 0 {
		t.Errorf("the check left %d columns of statistics", n)
	}
	if n := countAs(t, srv, "alerts_victim", "alerts_dbadmin", statsQ, "ANALYZE finance.payroll"); n != 0 {
		t.Errorf("the check did not set the targets to 0 again: %d columns after ANALYZE", n)
	}
	c.Poll(ctx)
	for _, d := range c.Decoys() {
		if d.State != "ok" {
			t.Errorf("decoy %s after the clean-up: %s", d.Name, d.State)
		}
	}
}
