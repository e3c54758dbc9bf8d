package alerts

// Tests against a real PostgreSQL 15 (internal/testutil/pgtest), gated by
// PGSHIELD_E2E=1: the privilege check and decoy tables in databases other
// than postgres, whose names the administrator chooses.

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgshield/pgshield/internal/alerting"
	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/pgbackend"
	"github.com/pgshield/pgshield/internal/testutil/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// hostileDB is a database name that needs quoting everywhere and reads as
// SQL and as a second log line.
const hostileDB = `x"; DROP DATABASE postgres; --` + "\n" + `'é`

func realController(t *testing.T, srv *pgtest.Server) (*Controller, *recorder, *pgxpool.Pool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := srv.Cluster.PinnedPool(ctx, srv.Cluster.Cfg.ServiceRole, 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	rec := &recorder{}
	c := New(Config{Layout: config.Layout{Root: t.TempDir()}, Audit: rec.record, Params: params(t, nil),
		Pool: func() *pgxpool.Pool { return pool }, IsReserved: srv.Cluster.Cfg.IsReserved})
	return c, rec, pool
}

// superIn runs statements as the superuser in database db.
func superIn(t *testing.T, srv *pgtest.Server, db string, stmts ...string) {
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
		t.Fatalf("connecting to %q: %v", db, err)
	}
	defer conn.Close(context.Background())
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			t.Fatalf("%q in %q: %v", s, db, err)
		}
	}
}

func createDB(t *testing.T, srv *pgtest.Server, name, extra string) {
	t.Helper()
	q := pgx.Identifier{name}.Sanitize()
	superIn(t, srv, "postgres", "CREATE DATABASE "+q+" "+extra)
	t.Cleanup(func() { superIn(t, srv, "postgres", "DROP DATABASE IF EXISTS "+q+" WITH (FORCE)") })
}

func publicCreateAlerts(c *Controller) map[string]string {
	out := map[string]string{}
	for _, a := range c.List() {
		if a.Type == alerting.TypePrivilegeChange && a.Details["privilege"] == "CREATE on schema public" {
			out[a.Details["database"]] = a.Details["role"]
		}
	}
	return out
}

// CREATE on public is watched in every database that allows connections,
// a hostile name included; a database created with the grant already in
// it is compared with nothing, not taken as the baseline; each poll reads
// a bounded number of databases.
func TestPublicCreateEveryDatabase(t *testing.T) {
	srv := pgtest.Shared(t)
	c, _, _ := realController(t, srv)
	ctx := context.Background()
	srv.CreateRole(t, "alerts_tenant", "", "NOLOGIN")
	createDB(t, srv, hostileDB, "")
	// A database whose owner makes every connection SET ROLE to it.
	createDB(t, srv, "alerts_owned", "OWNER alerts_tenant")
	superIn(t, srv, "postgres", "ALTER DATABASE alerts_owned SET role = 'alerts_tenant'")

	for i := 0; i < 3; i++ { // the baseline: every database read once
		c.Poll(ctx)
	}
	if as := publicCreateAlerts(c); len(as) != 0 {
		t.Fatalf("the baseline raised %v", as)
	}
	c.mu.Lock()
	snap := c.mu.snap
	c.mu.Unlock()
	for _, db := range []string{hostileDB, "alerts_owned", "template1"} {
		if _, ok := snap.PublicCreateIn[db]; !ok {
			t.Errorf("database %q not read: %+v", db, snap.PublicCreateIn)
		}
	}

	superIn(t, srv, hostileDB, "GRANT CREATE ON SCHEMA public TO PUBLIC")
	superIn(t, srv, "alerts_owned", "GRANT CREATE ON SCHEMA public TO alerts_tenant")
	// Made with the grant between two looks.
	createDB(t, srv, "alerts_fresh", "")
	superIn(t, srv, "alerts_fresh", "GRANT CREATE ON SCHEMA public TO alerts_tenant")
	for i := 0; i < 3; i++ {
		c.Poll(ctx)
	}
	got := publicCreateAlerts(c)
	for db, role := range map[string]string{hostileDB: "PUBLIC", "alerts_owned": "alerts_tenant", "alerts_fresh": "alerts_tenant"} {
		if got[db] != role {
			t.Errorf("CREATE on public in %q: alert for %q; want %q (all: %v)", db, got[db], role, got)
		}
	}
	for _, a := range c.List() {
		if a.Details["database"] == hostileDB && a.Database != hostileDB {
			t.Errorf("alert's database = %q", a.Database)
		}
	}

	// More new databases than one poll reads: the rest stay new.
	for i := 0; i < dbPerPoll+2; i++ {
		createDB(t, srv, fmt.Sprintf("alerts_many_%02d", i), "")
	}
	c.Poll(ctx)
	c.mu.Lock()
	snap = c.mu.snap
	c.mu.Unlock()
	if len(snap.Fresh) < 2 {
		t.Errorf("one poll read more than %d databases: fresh left %v", dbPerPoll, snap.Fresh)
	}
}

// withDatabase runs as the service role even where the database's owner
// set role for every connection, and refuses a database that takes none.
func TestWithDatabaseKeepsItsRole(t *testing.T) {
	srv := pgtest.Shared(t)
	_, _, pool := realController(t, srv)
	ctx := context.Background()
	srv.CreateRole(t, "alerts_owner2", "", "NOLOGIN")
	createDB(t, srv, "alerts_setrole", "OWNER alerts_owner2")
	superIn(t, srv, "postgres", "ALTER DATABASE alerts_setrole SET role = 'alerts_owner2'",
		"ALTER DATABASE alerts_setrole SET search_path = 'public'")
	var user, path string
	err := withDatabase(ctx, pool, "alerts_setrole", func(q sqlConn) error {
		return q.QueryRow(ctx, "SELECT current_user::text, current_setting('search_path')").Scan(&user, &path)
	})
	if err != nil || user != srv.Cluster.Cfg.ServiceRole || path != pgbackend.PinnedSearchPath {
		t.Errorf("in alerts_setrole: user %q, search_path %q, %v", user, path, err)
	}
	createDB(t, srv, "alerts_closed", "ALLOW_CONNECTIONS false")
	if err := withDatabase(ctx, pool, "alerts_closed", func(sqlConn) error { return nil }); err != errNoDatabase {
		t.Errorf("closed database: %v", err)
	}
	if err := withDatabase(ctx, pool, "alerts_no_such", func(sqlConn) error { return nil }); err != errNoDatabase {
		t.Errorf("missing database: %v", err)
	}
}

// A decoy table in a database with a hostile name: made there, matched
// there only, checked there, deleted there.
func TestDecoyTableInAnotherDatabase(t *testing.T) {
	srv := pgtest.Shared(t)
	if !srv.Cluster.HasPgaudit() {
		t.Skip("pgaudit is not installed")
	}
	c, _, pool := realController(t, srv)
	ctx := context.Background()
	createDB(t, srv, hostileDB, "")
	d, err := c.CreateDecoy(ctx, apitype.DecoyRequest{Kind: apitype.DecoyTable, Name: "lure.cards", Database: hostileDB})
	if err != nil {
		t.Fatal(err)
	}
	if d.Database != hostileDB || d.Name != "lure.cards" {
		t.Errorf("decoy = %+v", d)
	}
	// The same name in postgres is another decoy.
	if _, err := c.CreateDecoy(ctx, apitype.DecoyRequest{Kind: apitype.DecoyTable, Name: "lure.cards"}); err != nil {
		t.Fatal(err)
	}
	var n int
	err = withDatabase(ctx, pool, hostileDB, func(q sqlConn) error {
		return q.QueryRow(ctx, "SELECT count(*)::int FROM lure.cards").Scan(&n)
	})
	if err != nil || n != 3 {
		t.Fatalf("the decoy in %q: %d rows, %v", hostileDB, n, err)
	}
	c.mu.Lock()
	_, inHostile := decoyIndex{c}.DecoyTable(hostileDB, "lure.cards")
	_, inOther := decoyIndex{c}.DecoyTable("template1", "lure.cards")
	c.mu.Unlock()
	if !inHostile || inOther {
		t.Errorf("matched in %q: %v, in template1: %v", hostileDB, inHostile, inOther)
	}
	c.Poll(ctx)
	for _, d := range c.Decoys() {
		if d.State != "ok" {
			t.Errorf("decoy %s in %q: %s", d.Name, d.Database, d.State)
		}
	}
	// Renamed where it is: followed by OID, in its database.
	superIn(t, srv, hostileDB, "ALTER TABLE lure.cards RENAME TO cards2")
	c.Poll(ctx)
	found := false
	for _, d := range c.Decoys() {
		if d.Database == hostileDB {
			found = d.Name == "lure.cards2" && d.State == "renamed"
		}
	}
	if !found {
		t.Errorf("rename in %q not followed: %+v", hostileDB, c.Decoys())
	}
	if _, err := c.DeleteDecoy(ctx, "lure.cards2", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeleteDecoy(ctx, "lure.cards", "postgres"); err != nil {
		t.Fatal(err)
	}
	err = withDatabase(ctx, pool, hostileDB, func(q sqlConn) error {
		return q.QueryRow(ctx, "SELECT count(*)::int FROM pg_catalog.pg_class WHERE relname = 'cards2'").Scan(&n)
	})
	if err != nil || n != 0 || len(c.Decoys()) != 0 {
		t.Errorf("after delete: %d tables, %v, decoys %+v", n, err, c.Decoys())
	}
	// A database that does not exist is a clear error.
	_, err = c.CreateDecoy(ctx, apitype.DecoyRequest{Kind: apitype.DecoyTable, Name: "lure.x", Database: "alerts_no_such"})
	if ce, ok := clienterr.As(err); !ok || ce.Code != apitype.CodeNotFound {
		t.Errorf("decoy in a missing database: %v", err)
	}
}
