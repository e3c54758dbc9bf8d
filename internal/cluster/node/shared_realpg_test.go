package node

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/testutil/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// sharedNode is a Node with what Shared needs: its secrets (the config
// key) and a cluster directory of its own.
func sharedNode(t *testing.T, key string) *Node {
	t.Helper()
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, "cluster"), 0o700); err != nil {
		t.Fatal(err)
	}
	return &Node{c: Config{Layout: config.Layout{Root: root}, Log: slog.New(slog.DiscardHandler)}, secrets: Secrets{Config: key}}
}

// TestRealShared: what the primary publishes is applied by another node
// once, in version order; a row forged without the config key, an old row
// put back, and a deleted row republished never make a node go back.
func TestRealShared(t *testing.T) {
	srv := pgtest.Shared(t)
	ctx := context.Background()
	cat := srv.Catalog(t) // makes pgshield.cluster_config
	pool := func() *pgxpool.Pool { return cat.Pool }
	conn := srv.Conn(t)
	if _, err := conn.Exec(ctx, "DELETE FROM pgshield.cluster_config WHERE name = 'test'"); err != nil {
		t.Fatal(err)
	}
	key := "0123456789abcdef-config"
	primaryBody := []byte(`{"v":"initial"}`)
	var appliedOnB [][]byte
	a := sharedNode(t, key).Share("test", pool, func([]byte) error { t.Error("the publisher applied its own"); return nil },
		func() ([]byte, error) { return primaryBody, nil })
	// b stands for a standby: it never publishes (its current policy is
	// never asked for by a standby, whose writes PostgreSQL refuses).
	errStandby := errors.New("standby")
	b := sharedNode(t, key).Share("test", pool, func(body []byte) error { appliedOnB = append(appliedOnB, body); return nil },
		func() ([]byte, error) { return nil, errStandby })

	// No row: the first to look (a primary) publishes its own, version 1.
	if _, err := a.once(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.once(ctx); err != nil || len(appliedOnB) != 1 || string(appliedOnB[0]) != string(primaryBody) {
		t.Fatalf("b: %v %q", err, appliedOnB)
	}
	if _, err := b.once(ctx); err != nil || len(appliedOnB) != 1 {
		t.Fatalf("b applied the same version twice: %v %q", err, appliedOnB)
	}
	// A change on the primary.
	if err := a.Publish(ctx, []byte(`{"v":"two"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.once(ctx); err != nil || len(appliedOnB) != 2 || string(appliedOnB[1]) != `{"v":"two"}` {
		t.Fatalf("b after the change: %v %q", err, appliedOnB)
	}
	// Forged: a higher version and another body, with the old MAC, or with
	// a MAC made under another key.
	if _, err := conn.Exec(ctx, `UPDATE pgshield.cluster_config SET version = version + 10, body = '{"v":"forged"}' WHERE name = 'test'`); err != nil {
		t.Fatal(err)
	}
	if v, err := b.once(ctx); err != errForged || len(appliedOnB) != 2 {
		t.Fatalf("forged row (version %d): %v %q", v, err, appliedOnB)
	}
	other := sharedNode(t, "another-key-entirely").Share("test", pool, nil, nil)
	if _, err := conn.Exec(ctx, `DELETE FROM pgshield.cluster_config WHERE name = 'test'`); err != nil {
		t.Fatal(err)
	}
	if err := other.Publish(ctx, []byte(`{"v":"other key"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.once(ctx); (err != nil && err != errStandby) || len(appliedOnB) != 2 {
		// version 1 from the other cluster's key: below b's, ignored
		t.Fatalf("a low version under another key: %v %q", err, appliedOnB)
	}
	// The row deleted: the primary republishes above what it applied, so
	// b takes it.
	if _, err := conn.Exec(ctx, `DELETE FROM pgshield.cluster_config WHERE name = 'test'`); err != nil {
		t.Fatal(err)
	}
	primaryBody = []byte(`{"v":"republished"}`)
	if _, err := a.once(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.once(ctx); err != nil || len(appliedOnB) != 3 || string(appliedOnB[2]) != `{"v":"republished"}` {
		t.Fatalf("after a delete: %v %q", err, appliedOnB)
	}
	// An old row put back (a replayed version 2) is below what b applied.
	if _, err := conn.Exec(ctx, `UPDATE pgshield.cluster_config SET version = 2 WHERE name = 'test'`); err != nil {
		t.Fatal(err)
	}
	if _, err := b.once(ctx); (err != nil && err != errStandby) || len(appliedOnB) != 3 {
		t.Fatalf("a rolled-back row: %v %q", err, appliedOnB)
	}
	// The primary puts its own back above it, which b then takes.
	primaryBody = []byte(`{"v":"after rollback"}`)
	if _, err := a.once(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.once(ctx); err != nil || len(appliedOnB) != 4 || string(appliedOnB[3]) != `{"v":"after rollback"}` {
		t.Fatalf("after the primary republished: %v %q", err, appliedOnB)
	}
	// The administrator's view: nothing (no privilege, row-level security).
	srv.CreateRole(t, "shared_admin", "pw-shared-admin-1", "LOGIN CREATEROLE")
	if _, err := conn.Exec(ctx, `SET ROLE shared_admin`); err != nil {
		t.Fatal(err)
	}
	defer conn.Exec(ctx, `RESET ROLE`)
	if _, err := conn.Exec(ctx, `SELECT * FROM pgshield.cluster_config`); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("a non-superuser read pgshield.cluster_config: %v", err)
	}
}
