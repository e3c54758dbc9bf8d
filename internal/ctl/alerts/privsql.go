package alerts

// The statements the alerts controller runs as the service role (a
// superuser) over connections with the search path pinned, each resolving
// only pg_catalog objects (privsql_test.go checks them; see
// internal/postgres/privsql.go for why). Identifiers are quoted by the
// caller (pgx.Identifier.Sanitize), and only names the controller checked
// against nameRE reach them.
const (
	// sqlRoleAttrs: roles holding an attribute that makes them powerful.
	sqlRoleAttrs = `SELECT r.rolname::pg_catalog.text, r.rolsuper, r.rolcreaterole, r.rolbypassrls, r.rolreplication
  FROM pg_catalog.pg_roles r
 WHERE r.rolsuper OR r.rolcreaterole OR r.rolbypassrls OR r.rolreplication
 ORDER BY 1 LIMIT 10000`
	// sqlPowerfulMembers: who is a member (directly or not) of the
	// powerful predefined roles; superusers have everything anyway.
	sqlPowerfulMembers = `SELECT g.rolname::pg_catalog.text, m.rolname::pg_catalog.text
  FROM pg_catalog.pg_roles g CROSS JOIN pg_catalog.pg_roles m
 WHERE g.rolname OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.name[])
   AND m.oid OPERATOR(pg_catalog.<>) g.oid AND NOT m.rolsuper
   AND pg_catalog.pg_has_role(m.oid, g.oid, 'MEMBER'::pg_catalog.text)
 ORDER BY 1, 2 LIMIT 10000`
	// sqlPublicCreate: who may CREATE in schema public (besides its owner
	// and superusers); grantee 0 is PUBLIC.
	sqlPublicCreate = `SELECT COALESCE(g.rolname::pg_catalog.text, 'PUBLIC'::pg_catalog.text)
  FROM pg_catalog.pg_namespace n
 CROSS JOIN LATERAL pg_catalog.aclexplode(COALESCE(n.nspacl, pg_catalog.acldefault('n'::pg_catalog."char", n.nspowner))) a
  LEFT JOIN pg_catalog.pg_roles g ON g.oid OPERATOR(pg_catalog.=) a.grantee
 WHERE n.nspname OPERATOR(pg_catalog.=) 'public'::pg_catalog.name
   AND a.privilege_type OPERATOR(pg_catalog.=) 'CREATE'::pg_catalog.text
   AND a.grantee OPERATOR(pg_catalog.<>) n.nspowner
   AND (g.oid IS NULL OR NOT g.rolsuper)
 ORDER BY 1 LIMIT 10000`

	// sqlDatabases: every database that allows connections, the one
	// being read included (the caller skips it), bounded.
	sqlDatabases = `SELECT d.datname::pg_catalog.text FROM pg_catalog.pg_database d
 WHERE d.datallowconn ORDER BY 1 LIMIT 10000`
	// sqlDatabaseAllowsConn: whether database $1 exists and allows
	// connections (no row: it does not exist).
	sqlDatabaseAllowsConn = `SELECT d.datallowconn FROM pg_catalog.pg_database d
 WHERE d.datname OPERATOR(pg_catalog.=) $1::pg_catalog.name`
	// sqlSessionIsOwn: whether the connection runs as the role it logged in
	// as (a database's owner can make its connections SET ROLE at start
	// with ALTER DATABASE ... SET role).
	sqlSessionIsOwn = `SELECT CURRENT_USER OPERATOR(pg_catalog.=) SESSION_USER`

	// sqlRoleExists: whether a role of that name exists.
	sqlRoleExists = `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) $1::pg_catalog.name)`
	// sqlDecoyRoles: the decoy roles as they are now.
	sqlDecoyRoles = `SELECT a.rolname::pg_catalog.text, a.rolsuper, COALESCE(a.rolpassword, ''::pg_catalog.text)
  FROM pg_catalog.pg_authid a WHERE a.rolname OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.name[])`
	// sqlDecoyTables: the decoy tables, by OID, as they are now named.
	sqlDecoyTables = `SELECT c.oid::pg_catalog.int8, n.nspname::pg_catalog.text, c.relname::pg_catalog.text
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
 WHERE c.oid OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.oid[])`
	// sqlTableOID: a table's OID by schema and name.
	sqlTableOID = `SELECT c.oid::pg_catalog.int8 FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
 WHERE n.nspname OPERATOR(pg_catalog.=) $1::pg_catalog.name AND c.relname OPERATOR(pg_catalog.=) $2::pg_catalog.name`
	// sqlSchemaTrust: whether schema $1 exists and only a superuser can
	// rename or drop it (its owner is one, or it is owned by
	// pg_database_owner in a database a superuser owns).
	sqlSchemaTrust = `SELECT o.rolsuper OR (o.rolname OPERATOR(pg_catalog.=) 'pg_database_owner'::pg_catalog.name AND d.rolsuper)
  FROM pg_catalog.pg_namespace n
  JOIN pg_catalog.pg_roles o ON o.oid OPERATOR(pg_catalog.=) n.nspowner
  JOIN pg_catalog.pg_database db ON db.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()
  JOIN pg_catalog.pg_roles d ON d.oid OPERATOR(pg_catalog.=) db.datdba
 WHERE n.nspname OPERATOR(pg_catalog.=) $1::pg_catalog.name`
	// sqlAuditRoleSetting: pgaudit.role in force ("" without pgaudit).
	sqlAuditRoleSetting = `SELECT COALESCE(pg_catalog.current_setting('pgaudit.role'::pg_catalog.text, true), ''::pg_catalog.text)`
	sqlReloadConf       = `SELECT pg_catalog.pg_reload_conf()`
)

// auditRole is pgaudit.role: the role whose table privileges make pgaudit
// log every access to that table (OBJECT records). It is a superuser with
// NOLOGIN so that no CREATEROLE tenant can alter, rename, drop or join it;
// pgaudit reads its ACL entries only, never its superuser status, so only
// the decoys granted to it are logged.
const auditRole = "pgshield_decoy_audit"

func sqlCreateAuditRole(role string) string { return `CREATE ROLE ` + role + ` SUPERUSER NOLOGIN` }

func sqlSetAuditRole(literal string) string { return `ALTER SYSTEM SET pgaudit.role = ` + literal }

// sqlCreateDecoyRole takes a quoted role and a SCRAM verifier as a literal.
func sqlCreateDecoyRole(role, verifier string) string {
	return `CREATE ROLE ` + role + ` LOGIN PASSWORD ` + verifier
}

func sqlDropRole(role string) string { return `DROP ROLE ` + role }

func sqlCreateSchema(schema string) string { return `CREATE SCHEMA ` + schema }

func sqlGrantSchemaUsage(schema string) string {
	return `GRANT USAGE ON SCHEMA ` + schema + ` TO PUBLIC`
}

// sqlCreateDecoyTable: columns that look worth stealing.
func sqlCreateDecoyTable(table string) string {
	return `CREATE TABLE ` + table + ` (id pg_catalog.int4, full_name pg_catalog.text, email pg_catalog.text, card_number pg_catalog.text, salary pg_catalog.numeric)`
}

// sqlDecoyNoStats keeps the decoy's values out of pg_stats: a database's
// owner may ANALYZE every table in it, and pg_stats (readable for a
// table one can SELECT) would show them without a statement pgaudit logs.
// With every column's target 0, ANALYZE stores no statistics for it; only
// the table's owner (the service role) or a superuser can change it back.
func sqlDecoyNoStats(table string) string {
	return `ALTER TABLE ` + table + ` ALTER COLUMN id SET STATISTICS 0, ALTER COLUMN full_name SET STATISTICS 0, ALTER COLUMN email SET STATISTICS 0, ALTER COLUMN card_number SET STATISTICS 0, ALTER COLUMN salary SET STATISTICS 0`
}

// sqlDecoyStats: the decoy tables (by OID) that have statistics anyway.
const sqlDecoyStats = `SELECT DISTINCT s.starelid::pg_catalog.int8 FROM pg_catalog.pg_statistic s
 WHERE s.starelid OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.oid[])`

// sqlDecoyTargets: the decoy tables (by OID) with a column whose
// statistics target is not 0.
const sqlDecoyTargets = `SELECT DISTINCT a.attrelid::pg_catalog.int8 FROM pg_catalog.pg_attribute a
 WHERE a.attrelid OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.oid[]) AND a.attnum OPERATOR(pg_catalog.>) 0
   AND NOT a.attisdropped AND a.attstattarget OPERATOR(pg_catalog.<>) 0`

// sqlPurgeDecoyStats removes the statistics of the decoy tables $1.
const sqlPurgeDecoyStats = `DELETE FROM pg_catalog.pg_statistic s
 WHERE s.starelid OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.oid[])`

func sqlFillDecoyTable(table string) string {
	return `INSERT INTO ` + table + ` VALUES
 (1, 'Dana Whitfield'::pg_catalog.text, 'dana.whitfield@example.com'::pg_catalog.text, '4556 7375 8689 9855'::pg_catalog.text, 182000::pg_catalog.numeric),
 (2, 'Marcus Okafor'::pg_catalog.text, 'm.okafor@example.com'::pg_catalog.text, '4929 1205 6312 4410'::pg_catalog.text, 97500::pg_catalog.numeric),
 (3, 'Ines Carvalho'::pg_catalog.text, 'ines.c@example.com'::pg_catalog.text, '5105 1051 0510 5100'::pg_catalog.text, 143250::pg_catalog.numeric)`
}

// sqlGrantDecoyRead lets everyone read the lure (a refused read never
// reaches pgaudit's hook) and the audit role be granted it (which is what
// makes pgaudit log each access).
func sqlGrantDecoyRead(table, grantee string) string {
	return `GRANT SELECT ON TABLE ` + table + ` TO ` + grantee
}

func sqlDropTable(table string) string { return `DROP TABLE IF EXISTS ` + table }

func sqlDropSchema(schema string) string { return `DROP SCHEMA IF EXISTS ` + schema }
