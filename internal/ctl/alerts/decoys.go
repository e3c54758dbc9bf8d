package alerts

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgshield/pgshield/internal/alerting"
	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/auth/scram"
	"github.com/pgshield/pgshield/internal/clienterr"
)

// Decoys.
//
// A decoy role is a name in pgshield's list, and a LOGIN role of that name
// in PostgreSQL with a random password nobody knows (a lure a tenant
// browsing pg_roles cannot tell from a real one). The alarm is the
// gateway's: any login attempt as the name raises a High alert, whatever
// the tenant did to the role in PostgreSQL (a CREATEROLE tenant may alter
// or drop it: the check every poll interval then raises a tamper alert,
// and attempts still alarm, being matched by name).
//
// A decoy table is created by the service role in database postgres,
// owned by it, readable by PUBLIC (a refused read never reaches pgaudit's
// hook), and granted to pgaudit.role, a superuser NOLOGIN role pgshield
// makes: pgaudit then logs every statement that reads or writes it as an
// OBJECT record, which only pgaudit can write into the audit stream (see
// internal/audit). No tenant can revoke that grant (only the owner can),
// drop, alter or rename the table or the audit role, or change
// pgaudit.role (a superuser's setting). The schema must be one only a
// superuser can rename or drop: pgshield creates it, or it is one a
// superuser owns (public in a database a superuser owns).

// nameRE is what a decoy table's schema and name may be: plain lower-case
// identifiers, so that pgaudit's name for it is unquoted and exact.
var nameRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// decoyIndex answers the detectors' questions (alerting.Decoys); it runs
// under c.mu.
type decoyIndex struct{ c *Controller }

func (x decoyIndex) DecoyRole(name string) bool {
	for _, d := range x.c.mu.decoys {
		if d.Kind == apitype.DecoyRole && d.Name == name {
			return true
		}
	}
	return false
}

func (x decoyIndex) DecoyTable(database, object string) (string, bool) {
	schema, table, ok := splitQualified(object)
	if !ok {
		return "", false
	}
	for _, d := range x.c.mu.decoys {
		if d.Kind == apitype.DecoyTable && d.Database == database && d.Name == schema+"."+table {
			return d.Name, true
		}
	}
	return "", false
}

// splitQualified reads pgaudit's schema-qualified name, whose parts are
// quoted only when they need it.
func splitQualified(s string) (schema, table string, ok bool) {
	parts := []string{}
	var b strings.Builder
	quoted := false
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case quoted && ch == '"' && i+1 < len(s) && s[i+1] == '"':
			b.WriteByte('"')
			i++
		case ch == '"':
			quoted = !quoted
		case ch == '.' && !quoted:
			parts = append(parts, b.String())
			b.Reset()
		default:
			b.WriteByte(ch)
		}
	}
	parts = append(parts, b.String())
	if quoted || len(parts) != 2 {
		return "", "", false
	}
	return parts[0], parts[1], true
}

// Decoys lists the decoys.
func (c *Controller) Decoys() []apitype.Decoy {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]apitype.Decoy, 0, len(c.mu.decoys))
	for _, d := range c.mu.decoys {
		out = append(out, d.Decoy)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Kind+out[i].Name < out[j].Kind+out[j].Name })
	return out
}

func (c *Controller) pool() (*pgxpool.Pool, error) {
	if c.cfg.Pool == nil {
		return nil, clienterr.New(apitype.CodeUnavailable, "PostgreSQL is not available")
	}
	p := c.cfg.Pool()
	if p == nil {
		return nil, clienterr.New(apitype.CodeUnavailable, "PostgreSQL is not available")
	}
	return p, nil
}

// CreateDecoy makes a decoy role or table.
func (c *Controller) CreateDecoy(ctx context.Context, req apitype.DecoyRequest) (apitype.Decoy, error) {
	pool, err := c.pool()
	if err != nil {
		return apitype.Decoy{}, err
	}
	db := ""
	if req.Kind == apitype.DecoyTable {
		if db, err = decoyDatabase(pool, req.Database); err != nil {
			return apitype.Decoy{}, err
		}
	} else if req.Database != "" {
		return apitype.Decoy{}, clienterr.New(apitype.CodeInvalid, "a decoy role is in every database: no database to name")
	}
	c.mu.Lock()
	n := len(c.mu.decoys)
	for _, d := range c.mu.decoys {
		if d.Kind == req.Kind && d.Name == canonical(req) && d.Database == db {
			c.mu.Unlock()
			return apitype.Decoy{}, clienterr.New(apitype.CodeInvalid, "decoy %s %q already exists", req.Kind, d.Name)
		}
	}
	c.mu.Unlock()
	if n >= maxDecoys {
		return apitype.Decoy{}, clienterr.New(apitype.CodeInvalid, "at most %d decoys", maxDecoys)
	}
	var d *decoy
	switch req.Kind {
	case apitype.DecoyRole:
		d, err = c.createRole(ctx, pool, req.Name)
	case apitype.DecoyTable:
		d, err = c.createTable(ctx, pool, req.Name, db)
	default:
		err = clienterr.New(apitype.CodeInvalid, "decoy kind %q: use role or table", alerting.Bound(req.Kind, 32))
	}
	if err != nil {
		return apitype.Decoy{}, err
	}
	d.CreatedAt, d.State = c.cfg.Now().UTC(), "ok"
	c.mu.Lock()
	c.mu.decoys = append(c.mu.decoys, d)
	c.mu.dirty = true
	c.mu.Unlock()
	if err := c.Save(); err != nil {
		c.cfg.Log.Error("Saving the alerts failed.", "error", err)
	}
	c.cfg.Audit(audit.Event{Type: "decoy.create", Outcome: audit.OutcomeSuccess, Reason: "decoy created by the operator",
		Fields: decoyFields(d)})
	return d.Decoy, nil
}

func canonical(req apitype.DecoyRequest) string {
	if req.Kind == apitype.DecoyTable && !strings.Contains(req.Name, ".") {
		return "public." + req.Name
	}
	return req.Name
}

func (c *Controller) createRole(ctx context.Context, pool *pgxpool.Pool, name string) (*decoy, error) {
	if name == "" || len(name) > 63 || strings.ContainsAny(name, "\x00") || strings.HasPrefix(name, "pg_") ||
		c.cfg.IsReserved(name) || name == auditRole {
		return nil, clienterr.New(apitype.CodeInvalid, "%q cannot be a decoy role: 1 to 63 bytes, not reserved, not pg_*", alerting.Bound(name, 80))
	}
	var exists bool
	if err := pool.QueryRow(ctx, sqlRoleExists, name).Scan(&exists); err != nil {
		return nil, fmt.Errorf("checking role %q: %w", name, err)
	}
	if exists {
		return nil, clienterr.New(apitype.CodeInvalid, "role %q exists: a decoy must be a name no one uses", name)
	}
	pw := make([]byte, 32)
	salt := make([]byte, 16)
	_, _ = rand.Read(pw)
	_, _ = rand.Read(salt)
	v, err := scram.Verifier(name, hex.EncodeToString(pw), salt, 4096)
	if err != nil {
		return nil, err
	}
	// The verifier is base64 and '$', ':' only: safe as a literal.
	if _, err := pool.Exec(ctx, sqlCreateDecoyRole(pgx.Identifier{name}.Sanitize(), "'"+v+"'")); err != nil {
		return nil, fmt.Errorf("creating decoy role %q: %w", name, err)
	}
	return &decoy{Decoy: apitype.Decoy{Kind: apitype.DecoyRole, Name: name}, Secret: digest(v)}, nil
}

func digest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// decoyFields are a decoy's audit record fields.
func decoyFields(d *decoy) map[string]any {
	f := map[string]any{"kind": d.Kind, "name": d.Name}
	if d.Database != "" {
		f["database"] = d.Database
	}
	return f
}

func (c *Controller) createTable(ctx context.Context, pool *pgxpool.Pool, name, db string) (*decoy, error) {
	schema, table, ok := strings.Cut(name, ".")
	if !ok {
		schema, table = "public", name
	}
	if !nameRE.MatchString(schema) || !nameRE.MatchString(table) || strings.HasPrefix(schema, "pg_") ||
		schema == "information_schema" || schema == "pgshield" {
		return nil, clienterr.New(apitype.CodeInvalid,
			"%q is not a decoy table name: [SCHEMA.]TABLE, lower-case letters, digits and _, not in pg_*, information_schema or pgshield", alerting.Bound(name, 140))
	}
	var setting string
	if err := pool.QueryRow(ctx, sqlAuditRoleSetting).Scan(&setting); err != nil {
		return nil, fmt.Errorf("reading pgaudit.role: %w", err)
	}
	var d *decoy
	err := withDatabase(ctx, pool, db, func(q sqlConn) error {
		return pgx.BeginFunc(ctx, q, func(tx pgx.Tx) error {
			var trusted bool
			createdSchema := false
			switch err := tx.QueryRow(ctx, sqlSchemaTrust, schema).Scan(&trusted); {
			case errors.Is(err, pgx.ErrNoRows):
				qs := pgx.Identifier{schema}.Sanitize()
				for _, s := range []string{sqlCreateSchema(qs), sqlGrantSchemaUsage(qs)} {
					if _, err := tx.Exec(ctx, s); err != nil {
						return fmt.Errorf("creating schema %q: %w", schema, err)
					}
				}
				createdSchema = true
			case err != nil:
				return fmt.Errorf("checking schema %q: %w", schema, err)
			case !trusted:
				return clienterr.New(apitype.CodeInvalid,
					"schema %q belongs to a role that is not a superuser, who could rename it away from the decoy: name a new schema (pgshield creates it)", schema)
			}
			var audExists bool
			if err := tx.QueryRow(ctx, sqlRoleExists, auditRole).Scan(&audExists); err != nil {
				return err
			}
			if !audExists {
				if _, err := tx.Exec(ctx, sqlCreateAuditRole(pgx.Identifier{auditRole}.Sanitize())); err != nil {
					return fmt.Errorf("creating the audit role: %w", err)
				}
			}
			qt := pgx.Identifier{schema, table}.Sanitize()
			for _, s := range []string{sqlCreateDecoyTable(qt), sqlDecoyNoStats(qt), sqlFillDecoyTable(qt), sqlGrantDecoyRead(qt, "PUBLIC"),
				sqlGrantDecoyRead(qt, pgx.Identifier{auditRole}.Sanitize())} {
				if _, err := tx.Exec(ctx, s); err != nil {
					var ce *clienterr.Error
					if errors.As(err, &ce) {
						return err
					}
					return fmt.Errorf("creating decoy table %s: %w", qt, err)
				}
			}
			var oid int64
			if err := tx.QueryRow(ctx, sqlTableOID, schema, table).Scan(&oid); err != nil {
				return err
			}
			d = &decoy{Decoy: apitype.Decoy{Kind: apitype.DecoyTable, Name: schema + "." + table, Database: db}, OID: oid, CreatedSchema: createdSchema}
			return nil
		})
	})
	if errors.Is(err, errNoDatabase) {
		return nil, clienterr.New(apitype.CodeNotFound, "database %q does not exist or does not allow connections", db)
	}
	if err != nil {
		if strings.Contains(err.Error(), "already exists") {
			return nil, clienterr.New(apitype.CodeInvalid, "table %s.%s already exists: a decoy must be a new table", schema, table)
		}
		return nil, err
	}
	if setting != auditRole {
		// ALTER SYSTEM runs outside a transaction; the reload makes every
		// session, those open included, log the decoy from its next
		// statement.
		if _, err := pool.Exec(ctx, sqlSetAuditRole("'"+auditRole+"'")); err != nil {
			return nil, fmt.Errorf("setting pgaudit.role (is pgaudit installed?): %w", err)
		}
		if _, err := pool.Exec(ctx, sqlReloadConf); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// DeleteDecoy removes a decoy from the list and from PostgreSQL; database
// picks among decoy tables of that name in several databases.
func (c *Controller) DeleteDecoy(ctx context.Context, name, database string) (apitype.Decoy, error) {
	c.mu.Lock()
	var found *decoy
	n := 0
	for _, d := range c.mu.decoys {
		if (d.Name == name || d.Kind == apitype.DecoyTable && d.Name == "public."+name) &&
			(database == "" || d.Database == database) {
			if found == nil {
				found = d
			}
			n++
		}
	}
	c.mu.Unlock()
	if found == nil {
		return apitype.Decoy{}, clienterr.New(apitype.CodeNotFound, "decoy %q does not exist", alerting.Bound(name, 80))
	}
	if n > 1 {
		return apitype.Decoy{}, clienterr.New(apitype.CodeInvalid, "decoy tables %q are in %d databases: name one with --database", alerting.Bound(name, 80), n)
	}
	pool, err := c.pool()
	if err != nil {
		return apitype.Decoy{}, err
	}
	switch found.Kind {
	case apitype.DecoyRole:
		var exists bool
		if err := pool.QueryRow(ctx, sqlRoleExists, found.Name).Scan(&exists); err != nil {
			return apitype.Decoy{}, err
		}
		if exists {
			if _, err := pool.Exec(ctx, sqlDropRole(pgx.Identifier{found.Name}.Sanitize())); err != nil {
				return apitype.Decoy{}, fmt.Errorf("dropping decoy role %q: %w", found.Name, err)
			}
		}
	case apitype.DecoyTable:
		err := withDatabase(ctx, pool, found.Database, func(q sqlConn) error { return dropDecoyTable(ctx, q, found) })
		// A database dropped or closed to connections took the table
		// with it, or keeps it out of reach: the decoy is gone either way.
		if err != nil && !errors.Is(err, errNoDatabase) {
			return apitype.Decoy{}, err
		}
	}
	c.mu.Lock()
	for i, d := range c.mu.decoys {
		if d == found {
			c.mu.decoys = append(c.mu.decoys[:i], c.mu.decoys[i+1:]...)
			break
		}
	}
	c.mu.dirty = true
	c.mu.Unlock()
	if err := c.Save(); err != nil {
		c.cfg.Log.Error("Saving the alerts failed.", "error", err)
	}
	c.cfg.Audit(audit.Event{Type: "decoy.delete", Outcome: audit.OutcomeSuccess, Reason: "decoy deleted by the operator",
		Fields: decoyFields(found)})
	return found.Decoy, nil
}

// dropDecoyTable drops a decoy table by OID: a renamed decoy is dropped
// where it is now, and a table that took its old name is left alone.
func dropDecoyTable(ctx context.Context, q sqlConn, d *decoy) error {
	rows, err := q.Query(ctx, sqlDecoyTables, []int64{d.OID})
	if err != nil {
		return err
	}
	var schema, table string
	for rows.Next() {
		var oid int64
		if err := rows.Scan(&oid, &schema, &table); err != nil {
			rows.Close()
			return err
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	if table == "" {
		return nil
	}
	if _, err := q.Exec(ctx, sqlDropTable(pgx.Identifier{schema, table}.Sanitize())); err != nil {
		return fmt.Errorf("dropping decoy table: %w", err)
	}
	if d.CreatedSchema {
		// Not empty (someone else's table): kept, without a word.
		_, _ = q.Exec(ctx, sqlDropSchema(pgx.Identifier{schema}.Sanitize()))
	}
	return nil
}

// Poll compares the catalog's privileges with the last look and checks
// the decoys; a PostgreSQL that is down is skipped quietly.
func (c *Controller) Poll(ctx context.Context) {
	if c.cfg.Pool == nil {
		return
	}
	pool := c.cfg.Pool()
	if pool == nil {
		return
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(parent, 15*time.Second)
	defer cancel()
	c.mu.Lock()
	old, cursor := c.mu.snap, c.mu.dbCursor
	c.mu.Unlock()
	snap, err := c.readSnapshot(ctx, pool)
	if err != nil {
		return
	}
	states := c.checkDecoys(ctx, pool)
	// The other databases, a few per poll, on a budget of their own.
	dctx, dcancel := context.WithTimeout(parent, dbPerPoll*dbTimeout)
	defer dcancel()
	cursor, err = c.readPublicCreateIn(dctx, pool, old, snap, cursor)
	if err != nil && old != nil {
		snap.PublicCreateIn, snap.Listed, snap.Fresh = old.PublicCreateIn, old.Listed, old.Fresh
	}
	var out []emitted
	c.mu.Lock()
	c.mu.dbCursor = cursor
	for _, f := range alerting.DiffPrivileges(c.mu.snap, snap) {
		out = append(out, c.raiseLocked(f)...)
	}
	if !reflect.DeepEqual(c.mu.snap, snap) {
		c.mu.snap = snap
		c.mu.dirty = true
	}
	for _, d := range c.mu.decoys {
		st, ok := states[d]
		if !ok {
			continue
		}
		if st.name != "" && st.name != d.Name {
			// Followed by OID: the detector matches the new name.
			d.Name = st.name
			c.mu.dirty = true
		}
		if st.state != d.State {
			d.State = st.state
			c.mu.dirty = true
			if st.state != "ok" {
				f := alerting.Finding{Type: alerting.TypeDecoyTampered, Key: d.Kind + "=" + d.Name + "|db=" + d.Database + "|" + st.state,
					Database: alerting.Bound(d.Database, alerting.MaxName),
					Details: map[string]string{"kind": d.Kind, "decoy": alerting.Bound(d.Name, alerting.MaxName), "found": st.state,
						"database": alerting.Bound(d.Database, alerting.MaxName)}}
				out = append(out, c.raiseLocked(f)...)
			}
		}
	}
	c.mu.Unlock()
	c.emit(out)
}

func (c *Controller) readSnapshot(ctx context.Context, pool *pgxpool.Pool) (*alerting.Snapshot, error) {
	snap := &alerting.Snapshot{Attrs: map[string][]string{}, Members: map[string][]string{}, PublicCreate: []string{}}
	skip := func(role string) bool { return c.cfg.IsReserved(role) || role == auditRole }
	rows, err := pool.Query(ctx, sqlRoleAttrs)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var name string
		var super, createrole, bypass, repl bool
		if err := rows.Scan(&name, &super, &createrole, &bypass, &repl); err != nil {
			rows.Close()
			return nil, err
		}
		if skip(name) {
			continue
		}
		var attrs []string
		for _, a := range []struct {
			on   bool
			name string
		}{{super, "SUPERUSER"}, {createrole, "CREATEROLE"}, {bypass, "BYPASSRLS"}, {repl, "REPLICATION"}} {
			if a.on {
				attrs = append(attrs, a.name)
			}
		}
		snap.Attrs[name] = attrs
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rows, err = pool.Query(ctx, sqlPowerfulMembers, alerting.PowerfulRoles)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var g, m string
		if err := rows.Scan(&g, &m); err != nil {
			rows.Close()
			return nil, err
		}
		if !skip(m) {
			snap.Members[g] = append(snap.Members[g], m)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rows, err = pool.Query(ctx, sqlPublicCreate)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var g string
		if err := rows.Scan(&g); err != nil {
			rows.Close()
			return nil, err
		}
		if !skip(g) {
			snap.PublicCreate = append(snap.PublicCreate, g)
		}
	}
	rows.Close()
	return snap, rows.Err()
}

type decoyState struct{ state, name string }

// checkDecoys reads the decoys as PostgreSQL has them now; a decoy whose
// check failed is left out (unknown is not "tampered").
func (c *Controller) checkDecoys(ctx context.Context, pool *pgxpool.Pool) map[*decoy]decoyState {
	c.mu.Lock()
	ds := append([]*decoy(nil), c.mu.decoys...)
	c.mu.Unlock()
	out := map[*decoy]decoyState{}
	var roles []string
	var oids []int64
	for _, d := range ds {
		if d.Kind == apitype.DecoyRole {
			roles = append(roles, d.Name)
		} else {
			oids = append(oids, d.OID)
		}
	}
	if len(roles) > 0 {
		seen := map[string]string{}
		rows, err := pool.Query(ctx, sqlDecoyRoles, roles)
		if err == nil {
			for rows.Next() {
				var name, pw string
				var super bool
				if rows.Scan(&name, &super, &pw) == nil {
					seen[name] = digest(pw)
				}
			}
			rows.Close()
			for _, d := range ds {
				if d.Kind != apitype.DecoyRole {
					continue
				}
				switch sec, ok := seen[d.Name]; {
				case !ok:
					out[d] = decoyState{state: "missing"}
				case sec != d.Secret:
					out[d] = decoyState{state: "password changed"}
				default:
					out[d] = decoyState{state: "ok"}
				}
			}
		}
	}
	if len(oids) > 0 {
		var setting string
		if err := pool.QueryRow(ctx, sqlAuditRoleSetting).Scan(&setting); err != nil {
			return out
		}
		byDB := map[string][]*decoy{}
		var dbs []string
		for _, d := range ds {
			if d.Kind == apitype.DecoyTable {
				if byDB[d.Database] == nil {
					dbs = append(dbs, d.Database)
				}
				byDB[d.Database] = append(byDB[d.Database], d)
			}
		}
		// One connection per database that holds decoys (at most
		// maxDecoys), one after another.
		for _, db := range dbs {
			if ctx.Err() != nil {
				break
			}
			tables := byDB[db]
			names := map[int64]string{}
			var stats map[int64]bool
			err := withDatabase(ctx, pool, db, func(q sqlConn) error {
				ids := make([]int64, len(tables))
				for i, d := range tables {
					ids[i] = d.OID
				}
				rows, err := q.Query(ctx, sqlDecoyTables, ids)
				if err != nil {
					return err
				}
				quoted := map[int64]string{}
				for rows.Next() {
					var oid int64
					var s, t string
					if err := rows.Scan(&oid, &s, &t); err != nil {
						rows.Close()
						return err
					}
					names[oid] = s + "." + t
					quoted[oid] = pgx.Identifier{s, t}.Sanitize()
				}
				rows.Close()
				if err := rows.Err(); err != nil {
					return err
				}
				stats, err = c.decoyStats(ctx, q, ids, quoted)
				return err
			})
			switch {
			case errors.Is(err, errNoDatabase):
				// Dropped with its database (or closed to connections,
				// where no one reads it): reported as missing.
			case err != nil:
				continue // unknown is not tampered
			}
			for _, d := range tables {
				switch n, ok := names[d.OID]; {
				case !ok:
					out[d] = decoyState{state: "missing"}
				case n != d.Name:
					out[d] = decoyState{state: "renamed", name: n}
				case stats[d.OID]:
					out[d] = decoyState{state: "statistics gathered"}
				case setting != auditRole:
					out[d] = decoyState{state: "pgaudit.role changed"}
				default:
					out[d] = decoyState{state: "ok"}
				}
			}
		}
	}
	return out
}

// decoyStats reports the decoy tables that have statistics (which show
// their values in pg_stats) and removes them, and sets a table's
// statistics targets to 0 again where one is not (decoys made before they
// were set included).
func (c *Controller) decoyStats(ctx context.Context, q sqlConn, ids []int64, quoted map[int64]string) (map[int64]bool, error) {
	oids := func(sql string) (map[int64]bool, error) {
		rows, err := q.Query(ctx, sql, ids)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		m := map[int64]bool{}
		for rows.Next() {
			var oid int64
			if err := rows.Scan(&oid); err != nil {
				return nil, err
			}
			m[oid] = true
		}
		return m, rows.Err()
	}
	found, err := oids(sqlDecoyStats)
	if err != nil {
		return nil, err
	}
	targets, err := oids(sqlDecoyTargets)
	if err != nil {
		return nil, err
	}
	for oid := range targets {
		if t, ok := quoted[oid]; ok {
			if _, err := q.Exec(ctx, sqlDecoyNoStats(t)); err != nil {
				c.cfg.Log.Warn("Setting a decoy table's statistics targets to 0 failed.", "error", err)
			}
		}
	}
	if len(found) > 0 {
		if _, err := q.Exec(ctx, sqlPurgeDecoyStats, ids); err != nil {
			c.cfg.Log.Warn("Removing a decoy table's statistics failed.", "error", err)
		}
	}
	return found, nil
}
