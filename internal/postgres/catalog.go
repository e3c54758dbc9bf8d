package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgshield/pgshield/internal/config"
)

// Role is what the gateway needs to know of a role to authenticate it.
type Role struct {
	Name       string
	Exists     bool
	CanLogin   bool
	Superuser  bool
	Password   string // rolpassword: a SCRAM verifier, md5 hash or empty
	ValidUntil *time.Time
	// Principal is set for a token principal: it logs in with an access
	// token, never a password.
	Principal *TokenPrincipal
}

// Catalog reads roles over the private socket, caching each answer briefly
// so that a burst of connections costs one query. Login lookups run as the
// lookup role (config.LookupRole), which may only call pgshield.login_role;
// principal and parameter changes run as the service role. Both pools pin
// the search path.
type Catalog struct {
	// Pool is the service role's (a superuser): run only the statements of
	// privsql.go on it.
	Pool   *pgxpool.Pool
	lookup *pgxpool.Pool
	TTL    time.Duration
	Now    func() time.Time
	// ServiceRole owns pgshield's own schema.
	ServiceRole string
	pgaudit     bool
	log         *slog.Logger

	mu struct {
		sync.Mutex
		cache   map[string]cachedRole
		ensured bool
	}
}

type cachedRole struct {
	role Role
	at   time.Time
}

// maxCachedRoles bounds the cache: unknown names are cached too, and an
// attacker controls those.
const maxCachedRoles = 10000

// NewCatalog opens two small pools to the cluster: the service role's and
// the lookup role's. If PostgreSQL is up, pgshield's catalog is brought to
// what it must be at once (EnsureCatalog); otherwise at the first lookup.
func NewCatalog(ctx context.Context, c *Cluster, log *slog.Logger) (*Catalog, error) {
	pool, err := c.PinnedPool(ctx, c.Cfg.ServiceRole, 4)
	if err != nil {
		return nil, err
	}
	lookup, err := c.PinnedPool(ctx, config.LookupRole, 4)
	if err != nil {
		pool.Close()
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cat := &Catalog{Pool: pool, lookup: lookup, TTL: 2 * time.Second, Now: time.Now,
		ServiceRole: c.Cfg.ServiceRole, pgaudit: c.HasPgaudit(), log: log}
	if err := c.Ping(ctx); err == nil {
		if err := cat.Ensure(ctx); err != nil {
			log.Error("pgshield's catalog is not as it must be.", "error", err)
		}
	}
	return cat, nil
}

// Close closes the pools.
func (c *Catalog) Close() {
	c.Pool.Close()
	c.lookup.Close()
}

// Ensure runs EnsureCatalog as the service role. ErrPrincipalSchema is
// logged, not returned: password logins work without the mapping.
func (c *Catalog) Ensure(ctx context.Context) error {
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
	if err == nil {
		c.mu.Lock()
		c.mu.ensured = true
		c.mu.Unlock()
	}
	return err
}

// LookupRole returns the named role (Exists false if there is none).
func (c *Catalog) LookupRole(ctx context.Context, name string) (Role, error) {
	now := c.Now()
	c.mu.Lock()
	if e, ok := c.mu.cache[name]; ok && now.Sub(e.at) < c.TTL {
		c.mu.Unlock()
		return e.role, nil
	}
	ensured := c.mu.ensured
	c.mu.Unlock()

	if !ensured {
		if err := c.Ensure(ctx); err != nil {
			return Role{}, fmt.Errorf("preparing pgshield's catalog: %w", err)
		}
	}
	r, err := c.queryRole(ctx, name)
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (pe.Code == "3F000" || pe.Code == "42883" || pe.Code == "42501" || pe.Code == "28000") {
		// The function, schema or lookup role is missing or was changed
		// (a restore from before they existed): make them again, once.
		if err = c.Ensure(ctx); err == nil {
			r, err = c.queryRole(ctx, name)
		}
	}
	if err != nil {
		return Role{}, fmt.Errorf("looking up role: %w", err)
	}
	c.mu.Lock()
	if c.mu.cache == nil || len(c.mu.cache) >= maxCachedRoles {
		c.mu.cache = map[string]cachedRole{}
	}
	c.mu.cache[name] = cachedRole{role: r, at: now}
	c.mu.Unlock()
	return r, nil
}

func (c *Catalog) queryRole(ctx context.Context, name string) (Role, error) {
	r := Role{Name: name}
	var pw, oid, kind *string
	var admin *bool
	// pgtype, not *time.Time: VALID UNTIL 'infinity' and '-infinity' are
	// valid and pgx cannot scan them into a time.Time.
	var until pgtype.Timestamptz
	err := c.lookup.QueryRow(ctx, sqlLookupRole, name).Scan(&r.CanLogin, &r.Superuser, &pw, &until, &oid, &kind, &admin)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return r, nil
	case err != nil:
		return r, err
	}
	r.Exists = true
	switch {
	case !until.Valid, until.InfinityModifier == pgtype.Infinity:
		// No expiry.
	case until.InfinityModifier == pgtype.NegativeInfinity:
		epoch := time.Unix(0, 0)
		r.ValidUntil = &epoch // expired
	default:
		t := until.Time
		r.ValidUntil = &t
	}
	if pw != nil {
		r.Password = *pw
	}
	if oid != nil && kind != nil {
		r.Principal = &TokenPrincipal{Name: name, ObjectID: *oid, Kind: *kind, Admin: admin != nil && *admin}
	}
	return r, nil
}

// forget drops a cached role after pgshield itself changed it.
func (c *Catalog) forget(name string) {
	c.mu.Lock()
	delete(c.mu.cache, name)
	c.mu.Unlock()
}
