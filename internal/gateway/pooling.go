package gateway

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/pgbackend"
	"github.com/pgshield/pgshield/internal/pool"
	"github.com/pgshield/pgshield/internal/threat"
	"github.com/pgshield/pgshield/internal/wire"
)

// Backend pooling. A client's backend, when its session ends cleanly
// (relay's reusable), is reset and kept for the next client of the same
// pool.Key: role, database and every startup parameter the gateway passes
// on (application_name, options, client_encoding, any GUC), so that the
// session defaults DISCARD ALL returns to, and the ParameterStatus values
// the next client is sent, are exactly what its own startup would have
// given. The client's TLS and authentication at the gateway are the same
// either way; the next client's identity reaches pgshield_guard through
// Backend.BindClient.

// pooled is a backend as the pool holds it. owner is the transaction-mode
// client it was last bound to and not reset since (0: reset, or bound at
// checkout as session pooling does); stmts the named statements that
// client prepared on it (name -> Parse body), for re-preparing.
type pooled struct {
	b     *pgbackend.Backend
	owner uint64
	stmts map[string][]byte
	// settings is the digest of the ALTER ROLE/DATABASE ... SET rows that
	// apply to the backend, as its first check saw them; a backend whose
	// rows changed since is not handed out (they apply only at connect).
	settings     string
	settingsSeen bool
	// dirty: pgshield_guard reported session state that DISCARD ALL must
	// clear before another client (pgbackend.DirtyParam); advice only.
	dirty bool
}

// checkPass reports whether check, pgshield_guard.handover_check as read
// right after DISCARD ALL, lets p serve role: it is still role, in a
// database without session state DISCARD ALL misses, which role may still
// connect to as PostgreSQL would decide at a new connection (CONNECT,
// ALLOW_CONNECTIONS, both CONNECTION LIMITs, LOGIN, VALID UNTIL), with the
// role and database settings it started with.
func (p *pooled) checkPass(check, role string) error {
	if p.b.CancelUnconfirmed() {
		return fmt.Errorf("%w: a cancel for it may still arrive", errNotReusable)
	}
	f, ok := parseCheck(check)
	if !ok || f.name != role || !f.same || f.ext || f.dirty {
		return fmt.Errorf("%w: check after reset = %q", errNotReusable, check)
	}
	if !f.db || !f.role {
		return fmt.Errorf("%w: the role may no longer connect to this database (database %t, role %t)", errNotReusable, f.db, f.role)
	}
	if !p.settingsSeen {
		p.settings, p.settingsSeen = f.digest, true
	} else if f.digest != p.settings {
		return fmt.Errorf("%w: ALTER ROLE or DATABASE ... SET changed since the backend started", errNotReusable)
	}
	return nil
}

// checkFields is pgshield_guard.handover_check's value, parsed.
type checkFields struct {
	same, ext, db, role, dirty bool
	digest, name               string
}

// parseCheck parses "v4 SAME EXT DB ROLE DIRTY DIGEST NAME" (see
// show_handover_check in pgext/pgshield_guard): five t/f flags, a hex
// SHA-256, then the role name, last because it may hold spaces. Anything
// else is refused, an older version too: v3 is the library whose rebind
// drops every named statement, which the light hand-over relies on; v4 the
// one whose pipelined rebind, failing in any way, lets nothing behind it
// run (it ends the backend or poisons it), which txhandover.go relies on.
func parseCheck(v string) (checkFields, bool) {
	parts := strings.SplitN(v, " ", 8)
	if len(parts) != 8 || parts[0] != "v4" || len(parts[6]) != 64 || strings.Trim(parts[6], "0123456789abcdef") != "" {
		return checkFields{}, false
	}
	var flags [5]bool
	for i := range flags {
		switch parts[1+i] {
		case "t":
			flags[i] = true
		case "f":
		default:
			return checkFields{}, false
		}
	}
	return checkFields{same: flags[0], ext: flags[1], db: flags[2], role: flags[3], dirty: flags[4], digest: parts[6], name: parts[7]}, true
}

func (p *pooled) Close() error { return p.b.Conn.Close() }

type backendPool = pool.Pool[*pooled]

// poolKey is the key of a client's backend: its role, its database and
// its startup parameters (without the gateway's client record, which
// differs for every client and is rebound by BindClient).
func poolKey(user, db string, params map[string]string) pool.Key {
	keys := make([]string, 0, len(params))
	for k := range params {
		if k != pgbackend.ClientParam {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		// NUL cannot occur in a startup packet's strings: unambiguous.
		b.WriteString(k)
		b.WriteByte(0)
		b.WriteString(params[k])
		b.WriteByte(0)
	}
	return pool.Key{Role: user, Database: db, Params: b.String()}
}

// poolConfig maps the pgshield.pool_* parameters onto the pool's limits:
// in session mode pool_size caps the idle backends kept per key (sessions
// in use are capped by pgshield.max_connections and pool_max_total); for a
// key in transaction mode (its role's, database's or the global mode) it
// also caps the backends open, as PgBouncer's default_pool_size, and
// clients wait for one between transactions.
//
// autoMax is pool_max_total when it is auto: the backends PostgreSQL
// leaves the gateway.
func poolConfig(p config.PoolParams, autoMax int, now func() time.Time, onWait func(time.Duration)) pool.Config {
	maxTotal := p.MaxTotal
	if maxTotal == config.AutoPoolMaxTotal {
		maxTotal = autoMax
	}
	c := pool.Config{MaxIdlePerKey: p.Size, MaxTotal: maxTotal, IdleTimeout: p.IdleTimeout,
		Lifetime: p.Lifetime, Now: now, OnWait: onWait}
	c.MaxPerKeyOf = func(k pool.Key) int {
		if p.ModeFor(k.Role, k.Database) == "transaction" {
			return p.Size
		}
		return 0
	}
	return c
}

// poolMode is the pool mode of this client's role and database in the
// parameters it arrived under (pgshield.pool_mode_overrides, then
// pgshield.pool_mode).
func (c *clientConn) poolMode() string { return c.rt.params.Pool.ModeFor(c.user, c.db) }

// resetSQL returns a backend to the state a new session of the same
// startup would have: DISCARD ALL is CLOSE ALL (WITH HOLD cursors), SET
// SESSION AUTHORIZATION DEFAULT, RESET ALL (every GUC, SET ROLE and
// set_config(..., false) included), DEALLOCATE ALL, UNLISTEN *,
// pg_advisory_unlock_all(), DISCARD PLANS, TEMP and SEQUENCES.
const resetSQL = "DISCARD ALL"

// seedExpr reseeds random(), whose state DISCARD ALL keeps: a client could
// otherwise setseed() a backend and know what the next client's random()
// returns. The seed is the gateway's (crypto/rand, 53 bits), not one the
// backend's own, possibly seeded, generator could supply.
func seedExpr() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	x := float64(binary.BigEndian.Uint64(b[:])>>11)/(1<<53)*2 - 1
	return "pg_catalog.setseed(" + strconv.FormatFloat(x, 'f', -1, 64) + ")"
}

// handoverCheck reads, after DISCARD ALL, what a reused backend must
// pass again (pooled.checkPass): pgshield_guard computes it in C at each
// read (show_handover_check in pgext/pgshield_guard), from the syscache
// and PostgreSQL's own connection counts, without parsing or planning a
// catalog query. As SQL, planned at every hand-over, the same check cost
// transaction pooling nine tenths of its throughput. It covers: the
// backend is again its login role; the database has no extension whose
// session state DISCARD ALL does not reach (dblink and postgres_fdw keep
// their open connections; the procedural languages other than plpgsql
// keep interpreter globals a function can stash data in); and what
// PostgreSQL checks only at connect: the database's CONNECT privilege,
// ALLOW_CONNECTIONS and CONNECTION LIMIT, the role's LOGIN, VALID UNTIL
// and CONNECTION LIMIT (counted as InitPostgres counts them), and a digest
// of the ALTER ROLE/DATABASE ... SET rows that apply. The setting is
// PGC_INTERNAL under pgshield_guard's reserved prefix: no session can set
// it, and DISCARD ALL runs before it in the same write.
const handoverCheck = "pg_catalog.current_setting('pgshield_guard.handover_check')"

// handoverSQL is the statement after DISCARD ALL at every hand-over: the
// check (column 0), a new random() seed, and, given bind (a
// pgbackend.BindValue), the rebind to the next client, in one statement.
func handoverSQL(bind string) string {
	q := "SELECT " + handoverCheck + ", " + seedExpr()
	if bind != "" {
		// BindValue is percent-encoded: nothing in it ends the literal.
		q += ", pg_catalog.set_config('" + pgbackend.BindSetting + "', '" + bind + "', false)"
	}
	return q
}

// recordSettings records the settings digest of a backend just opened, so
// that a change made while its first client still holds it is caught.
func recordSettings(p *pooled) error {
	row, err := pipeline(p, []pgproto3.FrontendMessage{&pgproto3.Query{String: "SELECT " + handoverCheck}}, 1)
	if err != nil {
		return err
	}
	f, ok := parseCheck(firstCol(row))
	if !ok {
		return fmt.Errorf("%w: handover check = %q", errNotReusable, row)
	}
	p.settings, p.settingsSeen = f.digest, true
	return nil
}

// firstCol is a row's first column ("" if none).
func firstCol(row []string) string {
	if len(row) == 0 {
		return ""
	}
	return row[0]
}

// resetTimeout bounds the reset of a backend on its way back to the pool.
const resetTimeout = 5 * time.Second

// errNotReusable is a backend that failed its reset or check.
var errNotReusable = errors.New("backend cannot be reused")

// resetBackend runs resetSQL then handoverSQL on p (idle, at a message
// boundary), in one round trip. Any error, COPY, unexpected answer or
// transaction state other than idle makes it unusable. Notices,
// ParameterStatus (reset GUCs report their startup values again) and
// notifications received before UNLISTEN are dropped.
func resetBackend(p *pooled, role string) error {
	return runPipeline(p, []pgproto3.FrontendMessage{&pgproto3.Query{String: resetSQL}, &pgproto3.Query{String: handoverSQL("")}},
		2, role, true)
}

// held is the backend serving a client, and its pool lease (nil when
// pooling is off).
type held struct {
	b     *pgbackend.Backend
	lease *pool.Lease[*pooled]
	key   pool.Key
}

// maxStaleTries bounds how many idle backends a checkout tries (a pooled
// backend may have died: PostgreSQL restarted, pg_terminate_backend)
// before it opens a new one.
const maxStaleTries = 4

// acquireBackend gives the client a backend: a pooled one of its key,
// rebound to this client, or a new one (connectBackend). A full pool
// makes it wait up to pgshield.pool_wait_timeout, then 53300.
func (c *clientConn) acquireBackend(ctx context.Context, login loginResult) (*held, error) {
	pp := c.rt.params.Pool
	if c.poolMode() == "off" {
		b, err := c.connectBackend(ctx, login)
		if err != nil {
			return nil, err
		}
		return &held{b: b}, nil
	}
	key := poolKey(c.user, c.db, backendParams(c.startup))
	for try := 0; ; try++ {
		wctx, cancel := context.WithTimeout(ctx, pp.WaitTimeout)
		l, err := c.srv.pool.Get(wctx, key)
		cancel()
		if err != nil {
			c.log.Warn("No backend available in the pool.", "wait_timeout", pp.WaitTimeout.String())
			return nil, clienterr.New(wire.CodeTooManyConnections,
				"sorry, too many clients already: no backend became free within %s (pgshield.pool_wait_timeout)", pp.WaitTimeout)
		}
		if l.Reused && try < maxStaleTries {
			if l.Conn.owner != 0 {
				// Left by a transaction-mode client without a reset
				// (the mode changed since): reset it as any other.
				if err := resetBackend(l.Conn, c.user); err != nil {
					c.srv.pool.Discard(l)
					continue
				}
				l.Conn.owner, l.Conn.stmts, l.Conn.dirty = 0, nil, false
			}
			// What PostgreSQL checks only at connect is checked again now
			// (the reset's check may be minutes old), with the rebind in
			// the same round trip.
			var err error
			if bind, berr := l.Conn.b.BindValue(c.clientIdentity(login)); berr != nil {
				err = berr
			} else {
				err = runPipeline(l.Conn, []pgproto3.FrontendMessage{&pgproto3.Query{String: handoverSQL(bind)}}, 1, c.user, true)
			}
			if err == nil {
				c.srv.pool.ClientStart(key)
				return &held{b: l.Conn.b, lease: l, key: key}, nil
			}
			c.log.Info("A pooled backend could not be rebound; closed.", "pg_backend_pid", l.Conn.b.PID, "error", err)
			c.srv.pool.Discard(l)
			continue
		}
		if l.Reused {
			c.srv.pool.Discard(l)
			continue // too many stale ones: the next Get opens a slot
		}
		b, err := c.connectBackend(ctx, login)
		if err != nil {
			c.srv.pool.Discard(l)
			return nil, err
		}
		l.Conn = &pooled{b: b}
		if err := recordSettings(l.Conn); err != nil {
			c.log.Info("A new backend did not answer the settings query; closed.", "pg_backend_pid", b.PID, "error", err)
			c.srv.pool.Discard(l)
			return nil, errUnavailable()
		}
		c.srv.pool.ClientStart(key)
		return &held{b: b, lease: l, key: key}, nil
	}
}

// releaseBackend ends the client's use of h: a backend that the relay
// found reusable is reset and returned to the pool, any other closed.
func (c *clientConn) releaseBackend(h *held, reusable bool) {
	if h.b == nil { // transaction pooling, between transactions
		c.srv.pool.ClientEnd(h.key)
		return
	}
	if h.lease == nil {
		h.b.Conn.Close()
		return
	}
	defer c.srv.pool.ClientEnd(h.key)
	if !reusable || c.srv.rt.Load().params.Pool.ModeFor(c.user, c.db) == "off" {
		c.srv.pool.Discard(h.lease)
		return
	}
	if err := resetBackend(h.lease.Conn, c.user); err != nil {
		c.log.Info("A backend failed its reset; closed, not pooled.", "pg_backend_pid", h.b.PID, "error", err)
		c.srv.pool.Discard(h.lease)
		return
	}
	h.lease.Conn.owner, h.lease.Conn.stmts, h.lease.Conn.dirty = 0, nil, false
	c.srv.pool.Put(h.lease)
}

// Handovers counts transaction-mode hand-overs of a backend to another
// client since start: light (without DISCARD ALL) and full.
func (s *Server) Handovers() (light, full uint64) {
	return s.handovers.light.Load(), s.handovers.full.Load()
}

// HandoversRefused counts pipelined hand-overs pgshield_guard refused (the
// backend was closed, the client's transaction went to another).
func (s *Server) HandoversRefused() uint64 { return s.handovers.refused.Load() }

// autoMaxTotal is pool_max_total = auto's value now: what PostgreSQL's
// limits leave the gateway, as threat protection derives it.
func (s *Server) autoMaxTotal() int {
	if s.cfg.Threat == nil {
		return threat.FallbackMaxSessions
	}
	return s.cfg.Threat.DerivedMaxSessions()
}

// applyPoolConfigLocked gives the pool p's limits (s.rtMu held).
func (s *Server) applyPoolConfigLocked(p config.PoolParams) {
	n := s.autoMaxTotal()
	s.pool.SetConfig(poolConfig(p, n, s.cfg.Now, s.cfg.PoolWait))
	max := p.MaxTotal
	if max == config.AutoPoolMaxTotal {
		max = n
	}
	s.poolMax.Store(int64(max))
}

// followBackendLimit re-applies the pool's limits when pool_max_total is
// auto and what PostgreSQL leaves the gateway has changed (a restart with
// another max_connections, read every 10 s by threat protection).
func (s *Server) followBackendLimit() {
	rt := s.rt.Load()
	if rt == nil || rt.params.Pool.MaxTotal != config.AutoPoolMaxTotal || int64(s.autoMaxTotal()) == s.poolMax.Load() {
		return
	}
	s.rtMu.Lock()
	defer s.rtMu.Unlock()
	s.applyPoolConfigLocked(s.rt.Load().params.Pool)
}

// PoolMaxTotal is the cap on backends in force (pool_max_total, resolved
// when it is auto).
func (s *Server) PoolMaxTotal() int { return int(s.poolMax.Load()) }

// PoolStats lists the pool's counters per role and database.
func (s *Server) PoolStats() []pool.KeyStats { return s.pool.Stats() }

// DrainPool closes every idle pooled backend, and those in use when they
// come back: PostgreSQL restarted, or the server is being locked.
func (s *Server) DrainPool() { s.pool.Drain() }

// evictLoop closes pooled backends past their idle timeout or lifetime
// until ctx ends, then closes every idle one.
func (s *Server) evictLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			s.pool.Drain()
			return
		case <-t.C:
			s.pool.Evict()
			s.followBackendLimit()
		}
	}
}
