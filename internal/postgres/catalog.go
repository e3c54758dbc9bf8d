package postgres

import (
	"context"
	"errors"
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/pgbackend"
)

// Catalog is pgshield's side of the roles inside PostgreSQL. Principal and
// parameter changes run as the service role, on Pool; login lookups run as
// the lookup role (config.LookupRole), which may only call
// pgshield.login_role, in Logins. Both pools pin the search path.
type Catalog struct {
	// Pool is the service role's (a superuser): run only the statements of
	// privsql.go on it.
	Pool *pgxpool.Pool
	// ServiceRole owns pgshield's own schema.
	ServiceRole string
	pgaudit     bool
	log         *slog.Logger
	logins      *pgbackend.Catalog
}

// NewCatalog opens two small pools to the cluster: the service role's and
// the lookup role's. If PostgreSQL is up, pgshield's catalog is brought to
// what it must be at once (EnsureCatalog); otherwise at the first lookup.
func NewCatalog(ctx context.Context, c *Cluster, log *slog.Logger) (*Catalog, error) {
	pool, err := c.PinnedPool(ctx, c.Cfg.ServiceRole, 4)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cat := &Catalog{Pool: pool, ServiceRole: c.Cfg.ServiceRole, pgaudit: c.HasPgaudit(), log: log}
	cat.logins, err = pgbackend.NewCatalog(ctx, pgbackend.CatalogConfig{
		SocketDir: c.Layout.SocketDir(), Port: c.Cfg.PGPort, Role: config.LookupRole, Ensure: cat.ensure})
	if err != nil {
		pool.Close()
		return nil, err
	}
	if err := c.Ping(ctx); err == nil {
		if err := cat.Ensure(ctx); err != nil {
			log.Error("pgshield's catalog is not as it must be.", "error", err)
		}
	}
	return cat, nil
}

// Logins is the gateway's role lookup.
func (c *Catalog) Logins() *pgbackend.Catalog { return c.logins }

// Close closes the pools.
func (c *Catalog) Close() {
	c.Pool.Close()
	c.logins.Close()
}

// Ensure runs EnsureCatalog as the service role; once it has succeeded,
// login lookups no longer run it first.
func (c *Catalog) Ensure(ctx context.Context) error { return c.logins.Ensure(ctx) }

// ensure runs EnsureCatalog as the service role. ErrPrincipalSchema is
// logged, not returned: password logins work without the mapping.
func (c *Catalog) ensure(ctx context.Context) error {
	conn, err := c.Pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	err = EnsureCatalog(ctx, conn, c.ServiceRole, c.pgaudit)
	if errors.Is(err, ErrPrincipalSchema) {
		c.log.Error("Token principals are disabled.", "error", err)
		err = nil
	}
	return err
}

// forget drops a cached role after pgshield itself changed it.
func (c *Catalog) forget(name string) { c.logins.Forget(name) }
