package params

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/postgres"
)

// checkExtensionsAvailable refuses extension names that are not installed on
// this machine (no control file), as PostgreSQL sees them.
func (c *Controller) checkExtensionsAvailable(ctx context.Context, names []string) error {
	if len(names) == 0 {
		return nil
	}
	rows, err := c.c.Pool().Query(ctx, sqlAvailableExtensions)
	if err != nil {
		return clienterr.New(apitype.CodeUnavailable, "PostgreSQL is not available: %v", err)
	}
	avail, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return clienterr.New(apitype.CodeUnavailable, "PostgreSQL is not available: %v", err)
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
		return clienterr.New(apitype.CodeInvalid, "invalid value for parameter %q: not installed on this machine: %s",
			"pgshield.allowed_extensions", strings.Join(missing, ", "))
	}
	return nil
}

// ApplyGuardSettings rewrites pgshield.conf for cfg (pgshield_guard's
// parameters can be set nowhere else), reloads PostgreSQL and waits until
// sessions see exactly the values written, so that the change holds for new
// statements when the call returns. Anything else is an error: PostgreSQL
// keeps its old values when it cannot read the file, and pgshield_guard
// refuses role management while a list does not parse. Callers hold the
// configuration store's lock (conf.Store.Edit).
func (c *Controller) ApplyGuardSettings(ctx context.Context, cfg *config.Config) error {
	// A copy: the running cluster's fields are read by the supervisor.
	cl := *c.c.Cluster
	// The caller holds the store's lock, which Cluster.Live takes.
	cl.Cfg, cl.Live = cfg, nil
	if err := cl.WriteManagedFiles(); err != nil {
		return err
	}
	if _, err := c.c.Pool().Exec(ctx, sqlReloadConf); err != nil {
		return fmt.Errorf("reloading configuration: %w", err)
	}
	want := cl.GuardValues()
	var bad postgres.GuardSetting
	var got string
	deadline := time.Now().Add(c.guardWait())
	for {
		bad = postgres.GuardSetting{}
		for _, w := range want {
			if err := c.c.Pool().QueryRow(ctx, sqlCurrentSetting, w.Name).Scan(&got); err != nil {
				return fmt.Errorf("reading %s: %w", w.Name, err)
			}
			if got != w.Value {
				bad = w
				break
			}
		}
		if bad.Name == "" {
			return c.endStaleStatements(ctx)
		}
		if time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("PostgreSQL has not taken pgshield_guard's settings: %s is %q, pgshield wrote %q: %w", bad.Name, got, bad.Value, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("PostgreSQL did not take pgshield_guard's settings within %s: %s is %q, pgshield wrote %q", c.guardWait(), bad.Name, got, bad.Value)
}

func (c *Controller) guardWait() time.Duration {
	if c.c.GuardWait > 0 {
		return c.c.GuardWait
	}
	return 5 * time.Second
}

// staleGrace is how long a statement that began before a change of
// pgshield_guard's settings may run on before it is ended.
const staleGrace = 5 * time.Second

// endStaleStatements waits for the statements of non-superusers that began
// before the reload, then terminates those still running: a backend reads
// its configuration only between statements, so a long DO block started
// earlier would still see the old lists (and could, say, take over an
// administrator principal created in the meantime).
func (c *Controller) endStaleStatements(ctx context.Context) error {
	var since time.Time
	if err := c.c.Pool().QueryRow(ctx, sqlClock).Scan(&since); err != nil {
		return fmt.Errorf("reading the server's clock: %w", err)
	}
	deadline := time.Now().Add(staleGrace)
	for {
		rows, err := c.c.Pool().Query(ctx, sqlStaleStatements, since)
		if err != nil {
			return fmt.Errorf("listing statements older than the new settings: %w", err)
		}
		pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
		if err != nil {
			return fmt.Errorf("listing statements older than the new settings: %w", err)
		}
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			for _, pid := range pids {
				if _, err := c.c.Pool().Exec(ctx, sqlTerminate, pid); err != nil {
					return fmt.Errorf("ending a statement older than the new settings: %w", err)
				}
				c.c.Log.Warn("Ended a statement that began before pgshield_guard's settings changed.", "pid", pid)
			}
			deadline = time.Now().Add(staleGrace)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
