package threat

// The session cap that follows PostgreSQL (pgshield.max_connections =
// auto). PostgreSQL 15 lets roles that are not superusers fill
// max_connections - superuser_reserved_connections backends; the gateway's
// clients are such roles, and so is pgshield's login lookup. pgshield's
// own superuser connections may take the reserved slots as well as the
// others. The cap leaves room for both, so that a full gateway never
// makes PostgreSQL refuse a client that the gateway let in, nor pgshield
// itself.

// AutoMaxSessions in Config.MaxSessions derives the cap from PostgreSQL's
// limits.
const AutoMaxSessions = -1

// FallbackMaxSessions is the cap while PostgreSQL's limits are not known
// yet: what PostgreSQL's defaults give (DeriveMaxSessions(100, 3)).
const FallbackMaxSessions = 89

// Connections pgshield holds in PostgreSQL beside its clients' sessions.
const (
	// ServiceConnections are those of roles that are not superusers: the
	// gateway's login lookups (pgbackend.NewCatalog: a pool of 4 as
	// pgshield_auth).
	ServiceConnections = 4
	// SuperuserServiceConnections are the superuser's and the service
	// role's: the catalog pool (postgres.NewCatalog, 4), the alert checks'
	// one database at a time (internal/ctl/alerts), and a backup's
	// pgBackRest sessions (2).
	SuperuserServiceConnections = 4 + 1 + 2
)

// DeriveMaxSessions is the session cap for PostgreSQL's max_connections
// and superuser_reserved_connections; at least 1.
func DeriveMaxSessions(maxConnections, superuserReserved int) int {
	n := maxConnections - superuserReserved - ServiceConnections - max(0, SuperuserServiceConnections-superuserReserved)
	return max(n, 1)
}

// SetServerLimits takes PostgreSQL's limits (read when it starts, and
// again when it restarts: max_connections is a restart parameter) and
// returns the cap they give and whether it changed. Sessions already open
// above a lower cap stay; new ones wait for room.
func (g *Guard) SetServerLimits(maxConnections, superuserReserved int) (derived int, changed bool) {
	derived = DeriveMaxSessions(maxConnections, superuserReserved)
	g.mu.Lock()
	defer g.mu.Unlock()
	changed = g.mu.serverMax != derived
	g.mu.serverMax = derived
	return derived, changed
}

// DerivedMaxSessions is what PostgreSQL's limits leave the gateway
// (DeriveMaxSessions of them; FallbackMaxSessions until they are known),
// whatever cap is configured: pgshield.pool_max_total = auto follows it.
func (g *Guard) DerivedMaxSessions() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.mu.serverMax == 0 {
		return FallbackMaxSessions
	}
	return g.mu.serverMax
}

// MaxSessions is the session cap in force (0: none).
func (g *Guard) MaxSessions() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n, _ := g.sessionCapLocked()
	return n
}

// sessionCapLocked is the cap in force and the administrator's reserve,
// which never takes every slot.
func (g *Guard) sessionCapLocked() (maxSessions, reserved int) {
	maxSessions = g.mu.cfg.MaxSessions
	if maxSessions == AutoMaxSessions {
		maxSessions = g.mu.serverMax
		if maxSessions == 0 {
			maxSessions = FallbackMaxSessions
		}
	}
	if maxSessions <= 0 {
		return 0, 0
	}
	return maxSessions, min(g.mu.cfg.ReservedAdmin, maxSessions-1)
}
