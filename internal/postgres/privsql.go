package postgres

// Every statement pgshield runs as a superuser (the service role, the
// bootstrap superuser) is here, as a constant or a builder over quoted
// identifiers, so that privsql_test.go can check that each one resolves
// only pg_catalog objects: functions, operators and types schema-qualified,
// the way pg_dump and psql's describe.c write theirs. The administrator is
// a hostile tenant: any unqualified name could be an object it planted (an
// exact-typed operator in public wins over pg_catalog's implicit cast).
// Connections also pin the search path (pgbackend.PinnedSearchPath), so a
// name someone misses later still cannot be redirected. The statement the
// login lookup role runs is in internal/pgbackend/privsql.go.

// Catalog schema: pgshield's own objects in database postgres. The schema
// belongs to the service role (a superuser); PUBLIC has USAGE on it for
// the sessions view alone, and no right on anything else in it.
const (
	sqlCreateSchema = `CREATE SCHEMA IF NOT EXISTS pgshield`
	// sqlSchemaTrust answers whether schema pgshield is a superuser's (no
	// row: it does not exist).
	sqlSchemaTrust = `SELECT o.rolsuper
  FROM pg_catalog.pg_namespace n JOIN pg_catalog.pg_authid o ON o.oid OPERATOR(pg_catalog.=) n.nspowner
 WHERE n.nspname OPERATOR(pg_catalog.=) 'pgshield'::pg_catalog.name`
	// sqlTableTrust answers whether pgshield.principals is a plain table
	// that a superuser owns (no row: it does not exist). A table someone
	// else owns could be a view in disguise (an ON SELECT rule), whose
	// functions would run as the superuser reading it.
	sqlTableTrust = `SELECT o.rolsuper AND c.relkind OPERATOR(pg_catalog.=) 'r'::pg_catalog.char
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
  JOIN pg_catalog.pg_authid o ON o.oid OPERATOR(pg_catalog.=) c.relowner
 WHERE n.nspname OPERATOR(pg_catalog.=) 'pgshield'::pg_catalog.name
   AND c.relname OPERATOR(pg_catalog.=) 'principals'::pg_catalog.name`
	sqlRevokeSchema = `REVOKE ALL ON SCHEMA pgshield FROM PUBLIC`
	// The mapping of roles to identity-provider objects, keyed by role OID
	// so that a rename keeps it and a drop removes it from every lookup.
	sqlCreatePrincipals = `CREATE TABLE IF NOT EXISTS pgshield.principals (
	role_oid pg_catalog.oid PRIMARY KEY,
	object_id pg_catalog.text NOT NULL UNIQUE,
	kind pg_catalog.text NOT NULL CHECK (kind OPERATOR(pg_catalog.=) ANY ('{user,group,service}'::pg_catalog.text[])),
	admin pg_catalog.bool NOT NULL DEFAULT false,
	created_at pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now())`
	sqlRevokePrincipals = `REVOKE ALL ON pgshield.principals FROM PUBLIC`
	// Row-level security with no policy: pg_read_all_data and
	// pg_write_all_data (which the administrator may grant) do not bypass
	// it, so they see no row and can write none. Superusers bypass it.
	sqlPrincipalsRLS      = `ALTER TABLE pgshield.principals ENABLE ROW LEVEL SECURITY`
	sqlPrincipalsForceRLS = `ALTER TABLE pgshield.principals FORCE ROW LEVEL SECURITY`
	// No statistics: pg_statistic, which pg_read_all_data reads, would
	// hold the table's values (the pg_stats view respects row-level
	// security, pg_statistic does not).
	sqlPrincipalsNoStats = `ALTER TABLE pgshield.principals
	ALTER COLUMN role_oid SET STATISTICS 0, ALTER COLUMN object_id SET STATISTICS 0,
	ALTER COLUMN kind SET STATISTICS 0, ALTER COLUMN admin SET STATISTICS 0,
	ALTER COLUMN created_at SET STATISTICS 0`
	sqlPrincipalsDropStats = `DELETE FROM pg_catalog.pg_statistic s
 WHERE s.starelid OPERATOR(pg_catalog.=) 'pgshield.principals'::pg_catalog.regclass::pg_catalog.oid`
	// sqlReservedMembers lists who holds a reserved membership ($1) and is
	// not a superuser: granted before pgshield reserved it, or by hand.
	sqlReservedMembers = `SELECT g.rolname::pg_catalog.text, u.rolname::pg_catalog.text
  FROM pg_catalog.pg_auth_members m
  JOIN pg_catalog.pg_authid g ON g.oid OPERATOR(pg_catalog.=) m.roleid
  JOIN pg_catalog.pg_authid u ON u.oid OPERATOR(pg_catalog.=) m.member
 WHERE g.rolname OPERATOR(pg_catalog.=) $1::pg_catalog.text AND NOT u.rolsuper`

	// sqlLoginRoleFunc is the only thing the lookup role may run. It runs
	// as its owner (the service role) with a fixed search_path, and reads
	// the mapping only while a superuser owns it as a plain table.
	sqlLoginRoleFunc = `CREATE OR REPLACE FUNCTION pgshield.login_role(role_name pg_catalog.text)
RETURNS TABLE (can_login pg_catalog.bool, is_superuser pg_catalog.bool, password pg_catalog.text,
               valid_until pg_catalog.timestamptz, object_id pg_catalog.text, kind pg_catalog.text, admin pg_catalog.bool)
LANGUAGE plpgsql STABLE STRICT SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
	trusted pg_catalog.bool;
BEGIN
	SELECT o.rolsuper AND c.relkind OPERATOR(pg_catalog.=) 'r'::pg_catalog.char AND so.rolsuper INTO trusted
	  FROM pg_catalog.pg_class c
	  JOIN pg_catalog.pg_authid o ON o.oid OPERATOR(pg_catalog.=) c.relowner
	  JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
	  JOIN pg_catalog.pg_authid so ON so.oid OPERATOR(pg_catalog.=) n.nspowner
	 WHERE n.nspname OPERATOR(pg_catalog.=) 'pgshield'::pg_catalog.name
	   AND c.relname OPERATOR(pg_catalog.=) 'principals'::pg_catalog.name;
	IF trusted IS NOT TRUE THEN
		-- Password roles still log in; no role is a token principal.
		RETURN QUERY SELECT a.rolcanlogin, a.rolsuper, a.rolpassword, a.rolvaliduntil,
		                    NULL::pg_catalog.text, NULL::pg_catalog.text, NULL::pg_catalog.bool
		  FROM pg_catalog.pg_authid a
		 WHERE a.rolname OPERATOR(pg_catalog.=) role_name;
		RETURN;
	END IF;
	RETURN QUERY SELECT a.rolcanlogin, a.rolsuper, a.rolpassword, a.rolvaliduntil, p.object_id, p.kind, p.admin
	  FROM pg_catalog.pg_authid a
	  LEFT JOIN pgshield.principals p ON p.role_oid OPERATOR(pg_catalog.=) a.oid
	 WHERE a.rolname OPERATOR(pg_catalog.=) role_name;
END
$fn$`
	sqlLoginRoleRevoke = `REVOKE ALL ON FUNCTION pgshield.login_role(pg_catalog.text) FROM PUBLIC`

	// The real client of each gateway session (pgshield_guard): how it
	// logged in, under pg_stat_activity's visibility rules, which the C
	// function applies itself (its own role's sessions, every session for
	// pg_read_all_stats). PUBLIC gets USAGE on the schema for it, and
	// nothing more: pgshield.principals stays revoked from PUBLIC with
	// row-level security forced, pgshield.login_role stays the lookup
	// role's alone, and only superusers create in the schema.
	sqlClientSessionsFunc = `CREATE OR REPLACE FUNCTION pgshield.client_sessions(
	OUT pid pg_catalog.int4, OUT method pg_catalog.text, OUT identity pg_catalog.text,
	OUT principal_object_id pg_catalog.text, OUT issuer pg_catalog.text,
	OUT token_expires_at pg_catalog.timestamptz, OUT bound_at pg_catalog.timestamptz)
RETURNS SETOF pg_catalog.record LANGUAGE c VOLATILE PARALLEL RESTRICTED
AS '$libdir/pgshield_guard', 'pgshield_guard_client_sessions'`
	sqlClientSessionsRevoke = `REVOKE ALL ON FUNCTION pgshield.client_sessions() FROM PUBLIC`
	sqlClientSessionsGrant  = `GRANT EXECUTE ON FUNCTION pgshield.client_sessions() TO PUBLIC`
	sqlSessionsView         = `CREATE OR REPLACE VIEW pgshield.sessions AS
SELECT s.pid, s.method, s.identity, s.principal_object_id, s.issuer, s.token_expires_at, s.bound_at
  FROM pgshield.client_sessions() AS s`
	sqlSessionsRevoke    = `REVOKE ALL ON pgshield.sessions FROM PUBLIC`
	sqlSessionsGrant     = `GRANT SELECT ON pgshield.sessions TO PUBLIC`
	sqlSchemaUsagePublic = `GRANT USAGE ON SCHEMA pgshield TO PUBLIC`

	sqlLookupRoleExists = `SELECT EXISTS (SELECT FROM pg_catalog.pg_authid r WHERE r.rolname OPERATOR(pg_catalog.=) $1::pg_catalog.text)`

	// sqlLookupRoleMemberships lists the memberships of the lookup role in
	// either direction, to revoke them.
	sqlLookupRoleMemberships = `SELECT g.rolname::pg_catalog.text, u.rolname::pg_catalog.text
  FROM pg_catalog.pg_auth_members m
  JOIN pg_catalog.pg_authid g ON g.oid OPERATOR(pg_catalog.=) m.roleid
  JOIN pg_catalog.pg_authid u ON u.oid OPERATOR(pg_catalog.=) m.member
 WHERE g.rolname OPERATOR(pg_catalog.=) $1::pg_catalog.text OR u.rolname OPERATOR(pg_catalog.=) $1::pg_catalog.text`

	// Principals, run by the service role.
	sqlInsertPrincipal = `INSERT INTO pgshield.principals (role_oid, object_id, kind, admin)
SELECT r.oid, $2::pg_catalog.text, $3::pg_catalog.text, $4::pg_catalog.bool
  FROM pg_catalog.pg_authid r WHERE r.rolname OPERATOR(pg_catalog.=) $1::pg_catalog.text
RETURNING created_at`
	sqlListPrincipals = `SELECT r.rolname::pg_catalog.text, p.object_id, p.kind, p.admin, p.created_at
  FROM pgshield.principals p JOIN pg_catalog.pg_authid r ON r.oid OPERATOR(pg_catalog.=) p.role_oid
 ORDER BY r.rolname::pg_catalog.text COLLATE pg_catalog."C"`
	sqlDeletePrincipal = `DELETE FROM pgshield.principals p USING pg_catalog.pg_authid r
 WHERE r.oid OPERATOR(pg_catalog.=) p.role_oid AND r.rolname OPERATOR(pg_catalog.=) $1::pg_catalog.text
RETURNING p.object_id, p.kind, p.admin, p.created_at`

	// In pg_catalog, where no tenant can reach its event-trigger functions
	// (the pinned search path would put it there anyway).
	sqlCreatePgaudit = `CREATE EXTENSION IF NOT EXISTS pgaudit SCHEMA pg_catalog`

	// Liveness probe of the supervisor.
	sqlPing = `SELECT 1`
)

// Builders for statements over identifiers (already quoted with
// pgx.Identifier.Sanitize) and literals (QuoteLiteral).

func sqlCreateLookupRole(role string) string {
	return `CREATE ROLE ` + role + ` LOGIN NOINHERIT`
}

// sqlNormalizeLookupRole puts the lookup role back as pgshield made it,
// whatever happened to it (a role of that name made by someone else on a
// server older than the role).
func sqlNormalizeLookupRole(role string) string {
	return `ALTER ROLE ` + role + ` LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD NULL VALID UNTIL 'infinity'`
}

func sqlResetRoleSettings(role string) string { return `ALTER ROLE ` + role + ` RESET ALL` }

func sqlRevokeMembership(group, member string) string {
	return `REVOKE ` + group + ` FROM ` + member + ` CASCADE`
}

func sqlGrantLookupUsage(role string) string { return `GRANT USAGE ON SCHEMA pgshield TO ` + role }

func sqlGrantLookupExecute(role string) string {
	return `GRANT EXECUTE ON FUNCTION pgshield.login_role(pg_catalog.text) TO ` + role
}

func sqlSchemaOwner(role string) string { return `ALTER SCHEMA pgshield OWNER TO ` + role }

func sqlFuncOwner(role string) string {
	return `ALTER FUNCTION pgshield.login_role(pg_catalog.text) OWNER TO ` + role
}

func sqlRenameUntrustedSchema(newName string) string {
	return `ALTER SCHEMA pgshield RENAME TO ` + newName
}

func sqlAuditOff(role string) string { return `ALTER ROLE ` + role + ` SET pgaudit.log = 'none'` }

func sqlCreateRole(role, attrs string) string { return `CREATE ROLE ` + role + ` ` + attrs }

func sqlCommentRole(role, literal string) string { return `COMMENT ON ROLE ` + role + ` IS ` + literal }

func sqlDropRole(role string) string { return `DROP ROLE ` + role }

// adminGrants give a role (a quoted identifier) what the administrator has
// beyond its CREATEROLE and CREATEDB attributes.
func adminGrants(role string) []string {
	return []string{
		`GRANT pg_monitor, pg_signal_backend, pg_read_all_settings, pg_read_all_stats TO ` + role,
		// As on a managed server, the administrator works in the default
		// database: create schemas and objects there, and grant that on.
		`GRANT ALL ON DATABASE postgres TO ` + role + ` WITH GRANT OPTION`,
		`GRANT ALL ON SCHEMA public TO ` + role + ` WITH GRANT OPTION`,
	}
}

// adminRevokes take back what adminGrants gave, and what the role granted
// on from it (CASCADE), so that the role can be dropped.
func adminRevokes(role string) []string {
	return []string{
		`REVOKE ALL ON SCHEMA public FROM ` + role + ` CASCADE`,
		`REVOKE ALL ON DATABASE postgres FROM ` + role + ` CASCADE`,
		`REVOKE pg_monitor, pg_signal_backend, pg_read_all_settings, pg_read_all_stats FROM ` + role + ` CASCADE`,
	}
}
