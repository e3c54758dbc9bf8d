package alerts

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgshield/pgshield/internal/alerting"
	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/clienterr"
)

// Databases other than the pool's.
//
// The administrator can create databases with any name, and many of them.
// CREATE on their schema public and decoy tables in them are read over a
// connection of the service role opened for the one database and closed
// after: never more than one at a time, each within dbTimeout, and at most
// dbPerPoll databases per poll (the ones not seen before first, then in
// turn), so that ten thousand databases cost a slow rotation, not a flood of
// backends. A database name travels only as the startup packet's value,
// never in SQL text.
//
// Databases the administrator makes unreadable (or that are broken) must
// not blind the check elsewhere: new ones take at most half of a poll
// while others wait their turn, those that failed least go first, the
// rotation moves past a failure, and a database that failed
// dbUnreadableAfter reads in a row raises alert.database_unreadable.

const (
	// dbPerPoll bounds the databases whose schema public one poll reads.
	dbPerPoll = 8
	// dbTimeout bounds the connection to one database and its reads.
	dbTimeout = 5 * time.Second
	// dbUnreadableAfter: failed reads in a row that raise an alert.
	dbUnreadableAfter = 3
)

// openDB is withDatabase; tests make it fail.
var openDB = withDatabase

// sqlConn is what the statements need: a pool or one connection.
type sqlConn interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Begin(ctx context.Context) (pgx.Tx, error)
}

// poolDatabase is the database the pool connects to.
func poolDatabase(pool *pgxpool.Pool) string { return pool.Config().ConnConfig.Database }

// errNoDatabase: the database does not exist or takes no connections.
var errNoDatabase = errors.New("database does not exist or does not allow connections")

// withDatabase runs fn on a connection to db as the pool's role: the pool
// itself for its own database, else a connection of its own, with the
// pool's pinned settings and more that a database's owner could otherwise
// set for every connection to it (ALTER DATABASE ... SET): no role switch,
// no tablespace or access method of the owner's choosing.
func withDatabase(ctx context.Context, pool *pgxpool.Pool, db string, fn func(sqlConn) error) error {
	if db == poolDatabase(pool) {
		return fn(pool)
	}
	var allows bool
	switch err := pool.QueryRow(ctx, sqlDatabaseAllowsConn, db).Scan(&allows); {
	case errors.Is(err, pgx.ErrNoRows):
		return errNoDatabase
	case err != nil:
		return err
	case !allows:
		return errNoDatabase
	}
	cc := pool.Config().ConnConfig.Copy()
	cc.Database = db
	// A client's startup values beat a database's (PGC_S_CLIENT over
	// PGC_S_DATABASE), whatever order PostgreSQL applies them in.
	cc.RuntimeParams["role"] = "none"
	cc.RuntimeParams["default_tablespace"] = ""
	cc.RuntimeParams["default_table_access_method"] = "heap"
	cc.RuntimeParams["default_transaction_read_only"] = "off"
	// A library that does not load fails every connection; a short idle
	// timeout or JIT could cut or slow the reads.
	cc.RuntimeParams["local_preload_libraries"] = ""
	cc.RuntimeParams["idle_session_timeout"] = "0"
	cc.RuntimeParams["idle_in_transaction_session_timeout"] = "0"
	cc.RuntimeParams["jit"] = "off"
	cctx, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, cc)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var own bool
	if err := conn.QueryRow(cctx, sqlSessionIsOwn).Scan(&own); err != nil {
		return err
	}
	if !own {
		return fmt.Errorf("database %q switches its connections to another role", db)
	}
	return fn(conn)
}

// readPublicCreateIn reads CREATE on schema public in the databases other
// than the pool's, dbPerPoll of them: fresh ones first (created since the
// last look, so that a grant made with the database is compared with
// nothing rather than becoming the baseline), then the others in turn
// after cursor. It fills snap's per-database fields from old and what it
// read, and returns the new cursor.
func (c *Controller) readPublicCreateIn(ctx context.Context, pool *pgxpool.Pool, old, snap *alerting.Snapshot, cursor string) (string, error) {
	rows, err := pool.Query(ctx, sqlDatabases)
	if err != nil {
		return cursor, err
	}
	var all []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return cursor, err
		}
		if n != poolDatabase(pool) {
			all = append(all, n)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return cursor, err
	}
	var listed, wasFresh map[string]bool
	oldIn := map[string][]string{}
	if old != nil {
		oldIn = old.PublicCreateIn
		if old.Listed != nil {
			listed = set(old.Listed)
		}
		wasFresh = set(old.Fresh)
	}
	// Without an earlier listing (the first look, or a snapshot from
	// before databases were listed) every database is the baseline.
	isFresh := func(db string) bool { return listed != nil && !listed[db] || wasFresh[db] }
	c.mu.Lock()
	fails := make(map[string]int, len(c.mu.dbFails))
	for k, v := range c.mu.dbFails {
		fails[k] = v
	}
	c.mu.Unlock()
	var fresh, turn []string
	for _, n := range all {
		if isFresh(n) {
			fresh = append(fresh, n)
		} else {
			turn = append(turn, n)
		}
	}
	// A new database that failed goes behind those that did not.
	sort.SliceStable(fresh, func(a, b int) bool { return fails[fresh[a]] < fails[fresh[b]] })
	i := sort.SearchStrings(turn, cursor)
	if i < len(turn) && turn[i] == cursor {
		i++
	}
	turn = append(turn[i:len(turn):len(turn)], turn[:i]...)
	nf := min(len(fresh), dbPerPoll-min(len(turn), dbPerPoll/2))
	pick := append(fresh[:nf:nf], turn[:min(len(turn), dbPerPoll-nf)]...)
	read := map[string][]string{}
	failed := map[string]error{}
	for _, db := range pick {
		if ctx.Err() != nil {
			break
		}
		if !isFresh(db) {
			cursor = db // past it, read or not
		}
		var grantees []string
		one, cancel := context.WithTimeout(ctx, dbTimeout)
		err := openDB(one, pool, db, func(q sqlConn) error {
			var err error
			grantees, err = c.publicCreate(one, q)
			return err
		})
		cancel()
		if err != nil {
			c.cfg.Log.Debug("Reading CREATE on schema public failed.", "database", db, "error", err)
			if !errors.Is(err, errNoDatabase) && ctx.Err() == nil {
				failed[db] = err
			}
			continue
		}
		read[db] = grantees
	}
	c.countFailures(all, read, failed)
	snap.Listed = all
	snap.PublicCreateIn = map[string][]string{}
	snap.Fresh, snap.NewlyRead = []string{}, []string{}
	for _, db := range all {
		g, now := read[db]
		switch {
		case now:
			snap.PublicCreateIn[db] = g
			if isFresh(db) {
				snap.NewlyRead = append(snap.NewlyRead, db)
			}
		case isFresh(db):
			snap.Fresh = append(snap.Fresh, db)
		default:
			if g, ok := oldIn[db]; ok {
				snap.PublicCreateIn[db] = g
			}
		}
	}
	return cursor, nil
}

// countFailures keeps each database's failed reads in a row and raises
// alert.database_unreadable at dbUnreadableAfter.
func (c *Controller) countFailures(all []string, read map[string][]string, failed map[string]error) {
	var out []emitted
	c.mu.Lock()
	if c.mu.dbFails == nil {
		c.mu.dbFails = map[string]int{}
	}
	listed := set(all)
	for db := range c.mu.dbFails {
		if _, ok := read[db]; ok || !listed[db] {
			delete(c.mu.dbFails, db)
		}
	}
	for _, db := range sortedNames(failed) {
		c.mu.dbFails[db]++
		if c.mu.dbFails[db] == dbUnreadableAfter {
			name := alerting.Bound(db, alerting.MaxName)
			out = append(out, c.raiseLocked(alerting.Finding{Type: alerting.TypeDatabaseUnreadable, Key: "db=" + name,
				Database: name, Details: map[string]string{"database": name, "failures": strconv.Itoa(dbUnreadableAfter),
					"error": alerting.Bound(failed[db].Error(), 512)}})...)
		}
	}
	c.mu.Unlock()
	c.emit(out)
}

func sortedNames(m map[string]error) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func set(xs []string) map[string]bool {
	m := make(map[string]bool, len(xs))
	for _, x := range xs {
		m[x] = true
	}
	return m
}

// publicCreate reads who may CREATE in schema public of q's database.
func (c *Controller) publicCreate(ctx context.Context, q sqlConn) ([]string, error) {
	rows, err := q.Query(ctx, sqlPublicCreate)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []string{}
	for rows.Next() {
		var g string
		if err := rows.Scan(&g); err != nil {
			return nil, err
		}
		if !c.cfg.IsReserved(g) && g != auditRole {
			out = append(out, g)
		}
	}
	return out, rows.Err()
}

// decoyDatabase is the database a decoy request names; "" is the pool's.
func decoyDatabase(pool *pgxpool.Pool, req string) (string, error) {
	if req == "" {
		return poolDatabase(pool), nil
	}
	if len(req) > 63 || containsNUL(req) {
		return "", clienterr.New(apitype.CodeInvalid, "%q is not a database name: 1 to 63 bytes", req)
	}
	return req, nil
}

func containsNUL(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return true
		}
	}
	return false
}
