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
}

// checkPass reports whether row, resetCheckSQL's answer, lets p serve role:
// it is still role, in a database without session state DISCARD ALL
// misses, which role may still connect to as PostgreSQL would decide at a
// new connection (CONNECT, ALLOW_CONNECTIONS, both CONNECTION LIMITs,
// LOGIN, VALID UNTIL), with the role and database settings it started with.
func (p *pooled) checkPass(row []string, role string) error {
	if p.b.CancelUnconfirmed() {
		return fmt.Errorf("%w: a cancel for it may still arrive", errNotReusable)
	}
	if len(row) != 6 || row[0] != "t" || row[1] != role || row[2] != "f" {
		return fmt.Errorf("%w: check after reset = %q", errNotReusable, row)
	}
	if row[3] != "t" || row[4] != "t" {
		return fmt.Errorf("%w: the role may no longer connect to this database (database %s, role %s)", errNotReusable, row[3], row[4])
	}
	if !p.settingsSeen {
		p.settings, p.settingsSeen = row[5], true
	} else if row[5] != p.settings {
		return fmt.Errorf("%w: ALTER ROLE or DATABASE ... SET changed since the backend started", errNotReusable)
	}
	return nil
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
func poolConfig(p config.PoolParams, now func() time.Time, onWait func(time.Duration)) pool.Config {
	c := pool.Config{MaxIdlePerKey: p.Size, MaxTotal: p.MaxTotal, IdleTimeout: p.IdleTimeout,
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

// seedSQL reseeds random(), whose state DISCARD ALL keeps: a client could
// otherwise setseed() a backend and know what the next client's random()
// returns. The seed is the gateway's (crypto/rand, 53 bits), not one the
// backend's own, possibly seeded, generator could supply.
func seedSQL() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	x := float64(binary.BigEndian.Uint64(b[:])>>11)/(1<<53)*2 - 1
	return "SELECT pg_catalog.setseed(" + strconv.FormatFloat(x, 'f', -1, 64) + ")"
}

// resetCheckSQL runs after it, in the same round trip: the backend must
// again be its login role, and a database with an extension whose session
// state DISCARD ALL does not reach is never pooled: dblink and
// postgres_fdw keep their open connections; the procedural languages other
// than plpgsql keep interpreter globals a function can stash data in
// (PL/Perl's %_SHARED, PL/Tcl's globals, PL/Python's GD and SD, PL/v8's
// globals).
//
// Then what PostgreSQL checks only at connect, which a reused backend never
// passes again (see pooled.checkPass): the database's CONNECT privilege,
// ALLOW_CONNECTIONS and CONNECTION LIMIT; the role's LOGIN, VALID UNTIL and
// CONNECTION LIMIT (client backends counted as PostgreSQL counts them,
// this one included; other roles' sessions show a tenant no backend_type,
// so they all count: the check errs towards a new connection, which
// PostgreSQL then decides); and a digest of the ALTER ROLE/DATABASE ... SET
// rows that apply. The counts read pg_stat_get_activity, which the
// pg_stat_activity view wraps in two joins the check does not need, and
// only when a limit is set (CASE): planned and run at every hand-over,
// the view's form cost a third of transaction pooling's throughput.
const resetCheckSQL = `SELECT session_user OPERATOR(pg_catalog.=) current_user, session_user::pg_catalog.text,
 EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) ANY
  ('{dblink,postgres_fdw,plperl,plperlu,pltcl,pltclu,plpython3u,plv8}'::pg_catalog.name[])),
 (SELECT pg_catalog.has_database_privilege(d.oid, 'CONNECT') AND d.datallowconn
    AND CASE WHEN d.datconnlimit OPERATOR(pg_catalog.<) 0 THEN true ELSE (SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_get_activity(NULL) a
      WHERE a.datid OPERATOR(pg_catalog.=) d.oid AND (a.backend_type IS NULL OR a.backend_type OPERATOR(pg_catalog.=) 'client backend'))
      OPERATOR(pg_catalog.<=) d.datconnlimit END
   FROM pg_catalog.pg_database d WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()),
 (SELECT r.rolcanlogin AND (r.rolvaliduntil IS NULL OR r.rolvaliduntil OPERATOR(pg_catalog.>) pg_catalog.now())
    AND CASE WHEN r.rolconnlimit OPERATOR(pg_catalog.<) 0 THEN true ELSE (SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_get_activity(NULL) a
      WHERE a.usesysid OPERATOR(pg_catalog.=) r.oid AND a.backend_type OPERATOR(pg_catalog.=) 'client backend') OPERATOR(pg_catalog.<=) r.rolconnlimit END
   FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) session_user),
 ` + settingsDigest + ``

// settingsDigest is the digest of the ALTER ROLE/DATABASE ... SET rows that
// apply to the session's role in its database: recorded when a backend is
// opened (recordSettings), compared at every check (pooled.checkPass).
const settingsDigest = `(SELECT pg_catalog.md5(pg_catalog.string_agg(s.setdatabase::pg_catalog.text OPERATOR(pg_catalog.||) '/'
      OPERATOR(pg_catalog.||) s.setrole::pg_catalog.text OPERATOR(pg_catalog.||) '=' OPERATOR(pg_catalog.||) s.setconfig::pg_catalog.text,
      ',' ORDER BY s.setdatabase, s.setrole))
   FROM pg_catalog.pg_db_role_setting s
  WHERE s.setdatabase OPERATOR(pg_catalog.=) ANY (ARRAY[0::pg_catalog.oid,
          (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())])
    AND s.setrole OPERATOR(pg_catalog.=) ANY (ARRAY[0::pg_catalog.oid,
          (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) session_user)]))`

// recordSettings records the settings digest of a backend just opened, so
// that a change made while its first client still holds it is caught.
func recordSettings(p *pooled) error {
	row, err := pipeline(p, []pgproto3.FrontendMessage{&pgproto3.Query{String: "SELECT " + settingsDigest}}, 1)
	if err != nil {
		return err
	}
	if len(row) != 1 {
		return fmt.Errorf("%w: settings digest = %q", errNotReusable, row)
	}
	p.settings, p.settingsSeen = row[0], true
	return nil
}

// resetTimeout bounds the reset of a backend on its way back to the pool.
const resetTimeout = 5 * time.Second

// errNotReusable is a backend that failed its reset or check.
var errNotReusable = errors.New("backend cannot be reused")

// resetBackend runs resetSQL, seedSQL and resetCheckSQL on p (idle, at a
// message boundary) in one round trip. Any error, notice of failure,
// unexpected answer or transaction state other than idle makes it unusable.
func resetBackend(p *pooled, role string) error {
	b := p.b
	_ = b.Conn.SetDeadline(time.Now().Add(resetTimeout))
	defer b.Conn.SetDeadline(time.Time{})
	var buf []byte
	for _, q := range []string{resetSQL, seedSQL(), resetCheckSQL} {
		var err error
		if buf, err = (&pgproto3.Query{String: q}).Encode(buf); err != nil {
			return err
		}
	}
	if _, err := b.Conn.Write(buf); err != nil {
		return err
	}
	fe := pgproto3.NewFrontend(b.Conn, nil)
	fe.SetMaxBodyLen(1 << 20)
	var row []string
	rfq := 0
	for i := 0; i < 1000 && rfq < 3; i++ { // three statements: a handful of messages
		msg, err := fe.Receive()
		if err != nil {
			return err
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("%w: %s %s", errNotReusable, m.Code, m.Message)
		case *pgproto3.DataRow:
			row = row[:0]
			for _, v := range m.Values {
				row = append(row, string(v))
			}
		case *pgproto3.ReadyForQuery:
			rfq++
			b.TxStatus = m.TxStatus
			if m.TxStatus != 'I' {
				return fmt.Errorf("%w: transaction status %q after reset", errNotReusable, m.TxStatus)
			}
		case *pgproto3.CopyInResponse, *pgproto3.CopyOutResponse, *pgproto3.CopyBothResponse:
			return fmt.Errorf("%w: COPY during reset", errNotReusable)
		}
		// Notices, ParameterStatus (reset GUCs report their startup
		// values again), notifications received before UNLISTEN: dropped.
	}
	if rfq < 3 {
		return fmt.Errorf("%w: no reply to the reset", errNotReusable)
	}
	return p.checkPass(row, role)
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
				l.Conn.owner, l.Conn.stmts = 0, nil
			}
			// What PostgreSQL checks only at connect is checked again now
			// (the reset's check may be minutes old), with the rebind in
			// the same round trip.
			var err error
			if bind, berr := l.Conn.b.BindQuery(c.clientIdentity(login)); berr != nil {
				err = berr
			} else {
				err = runPipeline(l.Conn, []pgproto3.FrontendMessage{&pgproto3.Query{String: resetCheckSQL}, bind}, 2, c.user, true)
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
	h.lease.Conn.owner, h.lease.Conn.stmts = 0, nil
	c.srv.pool.Put(h.lease)
}

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
		}
	}
}
