package postgres

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
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

// Catalog reads roles over the private socket as the service role, caching
// each answer briefly so a burst of connections costs one query.
type Catalog struct {
	Pool *pgxpool.Pool
	TTL  time.Duration
	Now  func() time.Time
	// ServiceRole owns pgshield's own schema.
	ServiceRole string

	mu struct {
		sync.Mutex
		cache map[string]cachedRole
	}
}

type cachedRole struct {
	role Role
	at   time.Time
}

// maxCachedRoles bounds the cache: unknown names are cached too, and an
// attacker controls those.
const maxCachedRoles = 10000

// NewCatalog opens a small pool to the cluster as the service role.
func NewCatalog(ctx context.Context, c *Cluster) (*Catalog, error) {
	pc, err := pgxpool.ParseConfig(c.ServiceDSN("postgres"))
	if err != nil {
		return nil, err
	}
	pc.MaxConns = 4
	pc.MinConns = 0
	pc.MaxConnIdleTime = time.Minute
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, err
	}
	return &Catalog{Pool: pool, TTL: 2 * time.Second, Now: time.Now, ServiceRole: c.Cfg.ServiceRole}, nil
}

// Close closes the pool.
func (c *Catalog) Close() { c.Pool.Close() }

// LookupRole returns the named role (Exists false if there is none).
func (c *Catalog) LookupRole(ctx context.Context, name string) (Role, error) {
	now := c.Now()
	c.mu.Lock()
	if e, ok := c.mu.cache[name]; ok && now.Sub(e.at) < c.TTL {
		c.mu.Unlock()
		return e.role, nil
	}
	c.mu.Unlock()

	r, err := c.queryRole(ctx, name)
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (pe.Code == "3F000" || pe.Code == "42P01") {
		// A server made before token principals: create their table.
		if err = ensurePrincipals(ctx, c.Pool, c.ServiceRole); err == nil {
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
	err := c.Pool.QueryRow(ctx,
		// The mapping counts only while a superuser owns its table: one the
		// administrator made (e.g. before pgshield created its own) could
		// otherwise map any role to the administrator's token.
		`SELECT a.rolcanlogin, a.rolsuper, a.rolpassword, a.rolvaliduntil, p.object_id, p.kind, p.admin
		   FROM pg_catalog.pg_authid a LEFT JOIN pgshield.principals p ON p.role_oid = a.oid
		    AND (SELECT o.rolsuper FROM pg_catalog.pg_class c JOIN pg_catalog.pg_roles o ON o.oid = c.relowner
		          WHERE c.oid = 'pgshield.principals'::regclass)
		  WHERE a.rolname = $1`,
		name).Scan(&r.CanLogin, &r.Superuser, &pw, &until, &oid, &kind, &admin)
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
