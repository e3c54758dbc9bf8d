package threat

// Against a real PostgreSQL 15 (internal/testutil/pgtest), gated by
// PGSHIELD_E2E=1: the session cap follows the server's own limits.

import (
	"context"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/testutil/pgtest"
	guard "github.com/pgshield/pgshield/internal/threat"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func TestSessionCapFollowsPostgres(t *testing.T) {
	srv := pgtest.Shared(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := srv.Cluster.PinnedPool(ctx, srv.Cluster.Cfg.ServiceRole, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	p, err := config.ResolveParams(nil) // pgshield.max_connections = auto
	if err != nil {
		t.Fatal(err)
	}
	var evs []audit.Event
	c := New(Config{Layout: config.Layout{Root: t.TempDir()}, Log: slog.New(slog.DiscardHandler),
		Audit: func(e audit.Event) { evs = append(evs, e) }, Params: p,
		Policy: func(p config.Params) guard.Config {
			g := guard.DefaultConfig()
			g.MaxSessions = p.Threat.MaxConnections
			return g
		},
		Pool: func() *pgxpool.Pool { return pool }})
	// Read here with SHOW, apart from the controller's statement.
	var maxConns, reserved int
	for name, v := range map[string]*int{"max_connections": &maxConns, "superuser_reserved_connections": &reserved} {
		var s string
		if err := pool.QueryRow(ctx, "SHOW "+name).Scan(&s); err != nil {
			t.Fatal(err)
		}
		if *v, err = strconv.Atoi(s); err != nil {
			t.Fatal(err)
		}
	}
	c.RefreshLimits(ctx)
	want := guard.DeriveMaxSessions(maxConns, reserved)
	if got := c.Guard().MaxSessions(); got != want {
		t.Errorf("session cap = %d; want %d (max_connections %d, reserved %d)", got, want, maxConns, reserved)
	}
	if len(evs) != 1 || evs[0].Type != "threat.session_cap" || evs[0].Fields["derived_max_sessions"] != want {
		t.Errorf("audit = %+v", evs)
	}
	c.RefreshLimits(ctx) // unchanged: no second record
	if len(evs) != 1 {
		t.Errorf("an unchanged limit was audited again: %+v", evs)
	}
}
