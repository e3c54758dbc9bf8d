package alerts

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgshield/pgshield/internal/alerting"
	"github.com/pgshield/pgshield/internal/testutil/pgtest"
)

// baseline polls until db has been read (bounded).
func baseline(t *testing.T, c *Controller, db string) {
	t.Helper()
	for i := 0; i < 50; i++ {
		c.Poll(context.Background())
		c.mu.Lock()
		_, ok := c.mu.snap.PublicCreateIn[db]
		c.mu.Unlock()
		if ok {
			return
		}
	}
	t.Fatalf("database %q never read", db)
}

// The attack (review finding 2): eight new databases whose owner made
// every connection fail (local_preload_libraries naming no library) took
// every slot of every poll, and a grant in another database went
// unreported. The checker's startup packet overrides the setting.
func TestUnreadableDatabasesDoNotBlind(t *testing.T) {
	srv := pgtest.Shared(t)
	c, _, _ := realController(t, srv)
	srv.CreateRole(t, "alerts_mallory", "", "NOLOGIN")
	createDB(t, srv, "alerts_victim2", "")
	baseline(t, c, "alerts_victim2")
	for i := 0; i < dbPerPoll; i++ {
		db := fmt.Sprintf("alerts_junk_%d", i)
		createDB(t, srv, db, "")
		superIn(t, srv, "postgres", "ALTER DATABASE "+db+" SET local_preload_libraries = 'nothere'")
	}
	superIn(t, srv, "alerts_victim2", "GRANT CREATE ON SCHEMA public TO alerts_mallory")
	for i := 0; i < 6; i++ { // half a poll each: the new ones are read in 2
		c.Poll(context.Background())
	}
	if got := publicCreateAlerts(c)["alerts_victim2"]; got != "alerts_mallory" {
		t.Errorf("CREATE on public in alerts_victim2 behind %d unreadable databases: alert for %q", dbPerPoll, got)
	}
	c.mu.Lock()
	fresh := c.mu.snap.Fresh
	c.mu.Unlock()
	for _, db := range fresh {
		if strings.HasPrefix(db, "alerts_junk_") {
			t.Errorf("%s still unread: the owner's local_preload_libraries reached the checker", db)
		}
	}
}

// Databases that fail every read, whatever the reason (made to fail
// here), take at most half of each poll: the others are still read in
// turn, a new database that reads goes before them, and each one that
// keeps failing raises alert.database_unreadable.
func TestFailingDatabasesRotateAndAlert(t *testing.T) {
	srv := pgtest.Shared(t)
	c, _, _ := realController(t, srv)
	srv.CreateRole(t, "alerts_mallory2", "", "NOLOGIN")
	createDB(t, srv, "alerts_victim3", "")
	baseline(t, c, "alerts_victim3")
	orig := openDB
	t.Cleanup(func() { openDB = orig })
	openDB = func(ctx context.Context, pool *pgxpool.Pool, db string, fn func(sqlConn) error) error {
		if strings.HasPrefix(db, "alerts_bad_") {
			return errors.New("made to fail")
		}
		return orig(ctx, pool, db, fn)
	}
	const bad = dbPerPoll + 2
	for i := 0; i < bad; i++ {
		createDB(t, srv, fmt.Sprintf("alerts_bad_%02d", i), "")
	}
	superIn(t, srv, "alerts_victim3", "GRANT CREATE ON SCHEMA public TO alerts_mallory2")
	c.Poll(context.Background()) // the bad ones fail once
	createDB(t, srv, "alerts_zz_new", "")
	superIn(t, srv, "alerts_zz_new", "GRANT CREATE ON SCHEMA public TO alerts_mallory2")
	for i := 0; i < 20; i++ {
		c.Poll(context.Background())
	}
	got := publicCreateAlerts(c)
	for _, db := range []string{"alerts_victim3", "alerts_zz_new"} {
		if got[db] != "alerts_mallory2" {
			t.Errorf("CREATE on public in %s behind %d failing databases: alert for %q", db, bad, got[db])
		}
	}
	unreadable := map[string]bool{}
	for _, a := range c.List() {
		if a.Type == alerting.TypeDatabaseUnreadable {
			unreadable[a.Database] = true
		}
	}
	for i := 0; i < bad; i++ {
		if db := fmt.Sprintf("alerts_bad_%02d", i); !unreadable[db] {
			t.Errorf("no alert.database_unreadable for %s (alerts for %v)", db, unreadable)
		}
	}
	if unreadable["alerts_victim3"] || unreadable["alerts_zz_new"] {
		t.Errorf("a readable database alerted as unreadable: %v", unreadable)
	}
}
