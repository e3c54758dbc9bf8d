package pgbackend

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

// CatalogConfig says where, and as whom, a Catalog looks roles up.
type CatalogConfig struct {
	// SocketDir and Port locate the postmaster's private socket.
	SocketDir string
	Port      int
	// Role is the lookup role (config.LookupRole), which may only call
	// pgshield.login_role: a lookup can read nothing else.
	Role string
	// Ensure brings pgshield.login_role and the lookup role's rights to
	// what they must be; internal/postgres runs it as the service role,
	// which this package never connects as. The Catalog calls it before
	// its first lookup and again, once, when a lookup finds them missing
	// or changed. Required.
	Ensure func(ctx context.Context) error
	// TTL is how long an answer is cached; 2s if zero.
	TTL time.Duration
	// Now is the clock; time.Now if nil.
	Now func() time.Time
}

// Catalog reads the roles that log in over the private socket, caching
// each answer briefly so that a burst of connections costs one query.
type Catalog struct {
	cfg    CatalogConfig
	lookup *pgxpool.Pool

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

// NewCatalog opens a small pool of the lookup role's connections, with the
// search path pinned; it connects at the first lookup.
func NewCatalog(ctx context.Context, cfg CatalogConfig) (*Catalog, error) {
	if cfg.Role == "" || cfg.Ensure == nil {
		return nil, errors.New("pgbackend: CatalogConfig needs Role and Ensure")
	}
	if cfg.TTL == 0 {
		cfg.TTL = 2 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	lookup, err := PinnedPool(ctx, DSN(cfg.SocketDir, cfg.Port, cfg.Role, "postgres"), 4)
	if err != nil {
		return nil, err
	}
	return &Catalog{cfg: cfg, lookup: lookup}, nil
}

// Close closes the pool.
func (c *Catalog) Close() { c.lookup.Close() }

// Ensure runs the configured Ensure; once it has succeeded, lookups no
// longer run it first.
func (c *Catalog) Ensure(ctx context.Context) error {
	err := c.cfg.Ensure(ctx)
	if err == nil {
		c.mu.Lock()
		c.mu.ensured = true
		c.mu.Unlock()
	}
	return err
}

// LookupRole returns the named role (Exists false if there is none).
func (c *Catalog) LookupRole(ctx context.Context, name string) (Role, error) {
	if !utf8.ValidString(name) {
		// The cluster is UTF8 (initdb -E UTF8), so no role has this name;
		// sent as text, PostgreSQL would refuse the parameter (22021) and
		// the client would read "not available" instead of the wrong
		// password every unknown name gets.
		return Role{Name: name}, nil
	}
	now := c.cfg.Now()
	c.mu.Lock()
	if e, ok := c.mu.cache[name]; ok && now.Sub(e.at) < c.cfg.TTL {
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

// Forget drops a cached role; pgshield calls it after changing the role
// itself, so that the change applies to the next login at once.
func (c *Catalog) Forget(name string) {
	c.mu.Lock()
	delete(c.mu.cache, name)
	c.mu.Unlock()
}
