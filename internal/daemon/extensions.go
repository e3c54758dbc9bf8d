package daemon

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgshield/pgshield/internal/api"
	"github.com/pgshield/pgshield/internal/config"
)

// checkExtensionsAvailable refuses extension names that are not installed on
// this machine (no control file), as PostgreSQL sees them.
func (d *Daemon) checkExtensionsAvailable(ctx context.Context, names []string) error {
	if len(names) == 0 {
		return nil
	}
	rows, err := d.catalog.Pool.Query(ctx, sqlAvailableExtensions)
	if err != nil {
		return api.Errorf(api.CodeUnavailable, "PostgreSQL is not available: %v", err)
	}
	avail, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return api.Errorf(api.CodeUnavailable, "PostgreSQL is not available: %v", err)
	}
	// The difference is taken here, not in SQL: no operator, aggregate or
	// function resolves in the privileged session.
	var missing []string
	for _, n := range names {
		if !slices.Contains(avail, n) {
			missing = append(missing, n)
		}
	}
	slices.Sort(missing)
	if len(missing) > 0 {
		return api.Errorf(api.CodeInvalid, "invalid value for parameter %q: not installed on this machine: %s",
			"pgshield.allowed_extensions", strings.Join(missing, ", "))
	}
	return nil
}

// applyGuardSettings rewrites pgshield.conf for cfg (pgshield_guard's
// parameters can be set nowhere else) and reloads PostgreSQL, waiting until
// a session sees the new extension list so that the change holds for new
// statements when the call returns.
func (d *Daemon) applyGuardSettings(ctx context.Context, cfg *config.Config) error {
	// A copy: the running cluster's fields are read by the supervisor.
	c := *d.cluster
	// The caller holds cfgMu, which d.cluster.Live takes.
	c.Cfg, c.Live = cfg, nil
	if err := c.WriteManagedFiles(); err != nil {
		return err
	}
	if _, err := d.catalog.Pool.Exec(ctx, sqlReloadConf); err != nil {
		return fmt.Errorf("reloading configuration: %w", err)
	}
	p, err := config.ResolveParams(cfg.Parameters)
	if err != nil {
		return err
	}
	want := strings.Join(p.AllowedExtensions, ",")
	var got string
	for i := 0; i < 100; i++ {
		if err := d.catalog.Pool.QueryRow(ctx, `SELECT pg_catalog.current_setting('pgshield_guard.allowed_extensions')`).Scan(&got); err != nil {
			return fmt.Errorf("reading pgshield_guard.allowed_extensions: %w", err)
		}
		if got == want {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("PostgreSQL did not take the new extension list within 5s (it has %q)", got)
}
