package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshield/pgshield/internal/config"
)

// The roles the escalation tests create through the administrator: a plain
// login role and one the administrator gave CREATEROLE.
const (
	escUser     = "esc_user"
	escUserPass = "Esc-User-Pass-1"
	escSub      = "esc_sub"
	escSubPass  = "Esc-Sub-Pass-1"
	escVictim   = "esc_victim" // an ordinary role the attempts aim at
)

// actorConn connects through the gateway as role with password.
func actorConn(t *testing.T, s *server, role, password, dbname string) *pgx.Conn {
	t.Helper()
	dsn := s.dsn(fmt.Sprintf("user=%s password=%s sslmode=verify-full", role, password))
	if dbname != "" {
		dsn += " dbname=" + dbname
	}
	conn, err := pgxConnect(t, dsn)
	if err != nil {
		t.Fatalf("connect as %s: %v", role, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func execSQL(conn *pgx.Conn, sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := conn.Exec(ctx, sql)
	return err
}

func mustExec(t *testing.T, conn *pgx.Conn, sql string) {
	t.Helper()
	if err := execSQL(conn, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// escalation is one attempt; {me} stands for the role making it, {file} for
// a server path that must never be written.
type escalation struct {
	sql  string
	want string // in the error message
}

var escalations = []escalation{
	// Superuser and the attributes only superusers may give.
	{`ALTER ROLE {me} SUPERUSER`, "SUPERUSER attribute"},
	{`ALTER ROLE esc_victim SUPERUSER`, "SUPERUSER attribute"},
	{`CREATE ROLE esc_x SUPERUSER`, "SUPERUSER attribute"},
	{`ALTER ROLE {me} BYPASSRLS`, "BYPASSRLS attribute"},
	{`CREATE ROLE esc_x LOGIN BYPASSRLS`, "BYPASSRLS attribute"},
	{`ALTER ROLE esc_victim REPLICATION`, "REPLICATION attribute"},
	{`CREATE ROLE esc_x REPLICATION`, "REPLICATION attribute"},
	// Memberships that reach the server's files and programs.
	{`GRANT pg_execute_server_program TO {me}`, `permission denied to grant role "pg_execute_server_program"`},
	{`GRANT pg_read_server_files TO {me}`, `permission denied to grant role "pg_read_server_files"`},
	{`GRANT pg_write_server_files TO {me}`, `permission denied to grant role "pg_write_server_files"`},
	{`GRANT pg_execute_server_program TO esc_victim`, `permission denied to grant role "pg_execute_server_program"`},
	{`GRANT pg_read_server_files, pg_monitor TO esc_victim WITH ADMIN OPTION`, `permission denied to grant role "pg_read_server_files"`},
	{`CREATE ROLE esc_x IN ROLE pg_execute_server_program`, `permission denied to grant role "pg_execute_server_program"`},
	{`CREATE ROLE esc_x LOGIN IN GROUP pg_write_server_files`, `permission denied to grant role "pg_write_server_files"`},
	{`ALTER GROUP pg_read_server_files ADD USER {me}`, `permission denied to grant role "pg_read_server_files"`},
	{`ALTER GROUP pg_execute_server_program ADD USER esc_victim`, `permission denied to grant role "pg_execute_server_program"`},
	// Taking over a predefined role instead of joining it.
	{`ALTER ROLE pg_execute_server_program LOGIN PASSWORD 'Takeover-1'`, "is a predefined role"},
	{`ALTER ROLE pg_read_server_files RENAME TO esc_files`, "is a predefined role"},
	// The server's programs and files.
	{`COPY (SELECT 1) TO PROGRAM 'id'`, "COPY to or from an external program"},
	{`COPY pg_catalog.pg_am FROM PROGRAM 'id'`, "COPY to or from an external program"},
	{`COPY (SELECT 1) TO '{file}'`, "COPY to or from a file"},
	{`COPY pg_catalog.pg_am FROM '/etc/passwd'`, "COPY to or from a file"},
	{`SELECT lo_import('/etc/passwd')`, "permission denied for function lo_import"},
	{`SELECT lo_export(0, '{file}')`, "permission denied for function lo_export"},
	{`SELECT pg_read_file('/etc/passwd')`, "permission denied for function pg_read_file"},
	// Languages and code loaded into the server.
	{`CREATE LANGUAGE esc_lang HANDLER plpgsql_call_handler`, `permission denied to create language "esc_lang"`},
	{`CREATE LANGUAGE plperlu`, `extension "plperlu" is not allowed`},
	{`CREATE FUNCTION pg_temp.esc_c() RETURNS int LANGUAGE c AS '/tmp/esc.so', 'f'`, "permission denied for language c"},
	{`CREATE FUNCTION pg_temp.esc_i() RETURNS int LANGUAGE internal AS 'pg_backend_pid'`, "permission denied for language internal"},
	{`LOAD 'auto_explain'`, `permission denied to load library "auto_explain"`},
	{`ALTER SYSTEM SET work_mem = '1234kB'`, "permission denied to run ALTER SYSTEM"},
	{`GRANT ALTER SYSTEM ON PARAMETER work_mem TO {me}`, "permission denied to grant privileges on parameters"},
	// The reserved roles: postgres and the service role.
	{`ALTER ROLE postgres PASSWORD 'Takeover-1'`, `permission denied to alter role "postgres"`},
	{`ALTER ROLE pgshield_service PASSWORD 'Takeover-1'`, `permission denied to alter role "pgshield_service"`},
	{`ALTER ROLE pgshield_service NOLOGIN`, `permission denied to alter role "pgshield_service"`},
	{`ALTER ROLE pgshield_service SET search_path = esc, public`, `permission denied to alter role "pgshield_service"`},
	{`ALTER ROLE postgres RENAME TO esc_pg`, `permission denied to rename role "postgres"`},
	{`ALTER ROLE pgshield_service RENAME TO esc_svc`, `permission denied to rename role "pgshield_service"`},
	{`DROP ROLE pgshield_service`, `permission denied to drop role "pgshield_service"`},
	{`DROP ROLE postgres`, `permission denied to drop role "postgres"`},
	{`GRANT postgres TO {me}`, `permission denied to grant role "postgres"`},
	{`GRANT pgshield_service TO esc_victim`, `permission denied to grant role "pgshield_service"`},
	{`GRANT esc_victim TO postgres`, `permission denied to grant membership to role "postgres"`},
	{`GRANT pg_monitor TO pgshield_service`, `permission denied to grant membership to role "pgshield_service"`},
	{`REVOKE pg_monitor FROM pgshield_service`, `permission denied to revoke membership from role "pgshield_service"`},
	{`CREATE ROLE esc_x ROLE postgres`, `permission denied to grant membership to role "postgres"`},
	{`CREATE ROLE esc_x ADMIN pgshield_service`, `permission denied to grant membership to role "pgshield_service"`},
	{`ALTER GROUP esc_victim ADD USER pgshield_service`, `permission denied to grant membership to role "pgshield_service"`},
	{`CREATE ROLE pgshield_service`, `permission denied to create role "pgshield_service"`},
	{`ALTER ROLE esc_victim SET role = 'postgres'`, `permission denied to set role "postgres"`},
	{`ALTER ROLE ALL SET search_path = esc, public`, "permission denied to alter settings of all roles"},
	{`REASSIGN OWNED BY {me} TO postgres`, `permission denied to reassign objects to role "postgres"`},
	{`DROP OWNED BY pgshield_service`, `permission denied to drop objects of role "pgshield_service"`},
	{`SET ROLE postgres`, `permission denied to set role "postgres"`},
	{`SET ROLE pgshield_service`, `permission denied to set role "pgshield_service"`},
	{`SET SESSION AUTHORIZATION postgres`, `permission denied to set session_authorization "postgres"`},
	{`SELECT set_config('role', 'postgres', false)`, `permission denied to set role "postgres"`},
	// Extensions outside the allow-list.
	{`CREATE EXTENSION file_fdw`, `extension "file_fdw" is not allowed`},
	{`CREATE EXTENSION adminpack`, `extension "adminpack" is not allowed`},
	{`CREATE EXTENSION IF NOT EXISTS dblink`, `extension "dblink" is not allowed`},
}

// adminTakeovers are refused to the roles the administrator created: PostgreSQL
// 15 would let any CREATEROLE role take the administrator over.
var adminTakeovers = []escalation{
	{`ALTER ROLE pgadmin PASSWORD 'Takeover-1'`, `permission denied to alter role "pgadmin"`},
	{`ALTER ROLE pgadmin NOCREATEROLE`, `permission denied to alter role "pgadmin"`},
	{`GRANT pgadmin TO {me}`, `permission denied to grant role "pgadmin"`},
	{`DROP ROLE pgadmin`, `permission denied to drop role "pgadmin"`},
}

// wrappers run a statement directly and from inside the server: a
// PL/pgSQL function, a DO block, and dynamic SQL (EXECUTE).
var wrappers = []struct {
	name string
	wrap func(stmt string) string
}{
	{"direct", func(s string) string { return s }},
	{"function", func(s string) string {
		return "CREATE OR REPLACE FUNCTION pg_temp.esc_fn() RETURNS void LANGUAGE plpgsql AS $esc$ BEGIN " + perform(s) +
			"; END $esc$; SELECT pg_temp.esc_fn()"
	}},
	{"sql-function", func(s string) string {
		return "CREATE OR REPLACE FUNCTION pg_temp.esc_sqlfn() RETURNS void LANGUAGE sql AS $esc$ " + s + " $esc$; SELECT pg_temp.esc_sqlfn()"
	}},
	{"do", func(s string) string { return "DO $esc$ BEGIN " + perform(s) + "; END $esc$" }},
	{"execute", func(s string) string {
		return "DO $esc$ BEGIN EXECUTE '" + strings.ReplaceAll(s, "'", "''") + "'; END $esc$"
	}},
}

// perform turns a SELECT into PL/pgSQL's PERFORM.
func perform(s string) string {
	if rest, ok := strings.CutPrefix(s, "SELECT "); ok {
		return "PERFORM " + rest
	}
	return s
}

// authSnapshot is everything about roles an escalation could change.
func authSnapshot(t *testing.T, s *server) string {
	return s.superSQL(t, `SELECT string_agg(format('%s super=%s repl=%s bypass=%s login=%s createrole=%s pw=%s',
			rolname, rolsuper, rolreplication, rolbypassrls, rolcanlogin, rolcreaterole, md5(coalesce(rolpassword, ''))), E'\n' ORDER BY oid)
		FROM pg_catalog.pg_authid`) + "\n" +
		s.superSQL(t, `SELECT string_agg(format('%s in %s admin=%s', member::regrole, roleid::regrole, admin_option), E'\n' ORDER BY roleid, member)
		FROM pg_catalog.pg_auth_members`) + "\n" +
		s.superSQL(t, `SELECT string_agg(format('%s %s', rolname, array_to_string(setconfig, ',')), E'\n' ORDER BY rolname)
		FROM pg_catalog.pg_db_role_setting JOIN pg_catalog.pg_roles r ON r.oid = setrole`)
}

// setupEscRoles has the administrator create the roles the tests act as.
func setupEscRoles(t *testing.T, s *server, adminConn *pgx.Conn) {
	t.Helper()
	drop := func() {
		for _, r := range []string{escUser, escSub, escVictim, "esc_x", "esc_app", "esc_group"} {
			s.superSQL(t, "DROP ROLE IF EXISTS "+r)
		}
	}
	drop()
	t.Cleanup(drop)
	mustExec(t, adminConn, fmt.Sprintf(`CREATE ROLE %s LOGIN PASSWORD '%s'`, escUser, escUserPass))
	mustExec(t, adminConn, fmt.Sprintf(`CREATE ROLE %s LOGIN CREATEROLE PASSWORD '%s'`, escSub, escSubPass))
	mustExec(t, adminConn, `CREATE ROLE esc_victim LOGIN`)
}

// TestAdministratorCannotEscalate makes every escalation attempt through the
// gateway as the administrator, as a role it created, and as a role it gave
// CREATEROLE; directly and inside a function, a DO block and EXECUTE. Each
// must fail with SQLSTATE 42501 and a clear message, and afterwards nothing
// about any role may have changed.
func TestAdministratorCannotEscalate(t *testing.T) {
	adminConn := actorConn(t, shared, admin, adminPassword, "")
	setupEscRoles(t, shared, adminConn)
	file := filepath.Join(os.TempDir(), fmt.Sprintf("pgshield-esc-%d", time.Now().UnixNano()))
	// The server's view of the same path: PostgreSQL's /tmp is the host's.
	t.Cleanup(func() { os.Remove(file) })

	before := authSnapshot(t, shared)
	autoConfBefore := shared.superSQL(t, `SELECT count(*) FROM pg_catalog.pg_file_settings WHERE name = 'work_mem' AND setting = '1234kB'`)
	actors := []struct {
		role, password string
		extra          []escalation
	}{
		{admin, adminPassword, nil},
		{escUser, escUserPass, adminTakeovers},
		{escSub, escSubPass, adminTakeovers},
	}
	attempts := 0
	for _, a := range actors {
		t.Run(a.role, func(t *testing.T) {
			conn := actorConn(t, shared, a.role, a.password, "")
			for _, e := range append(append([]escalation(nil), escalations...), a.extra...) {
				stmt := strings.NewReplacer("{me}", a.role, "{file}", file).Replace(e.sql)
				for _, w := range wrappers {
					attempts++
					err := execSQL(conn, w.wrap(stmt))
					var pe *pgconn.PgError
					switch {
					case err == nil:
						t.Errorf("%s (%s): succeeded; want refused", stmt, w.name)
					case !errors.As(err, &pe):
						t.Errorf("%s (%s): %v; want a PostgreSQL error", stmt, w.name, err)
					case pe.Code != "42501" || !strings.Contains(pe.Message+" "+pe.Detail, e.want):
						t.Errorf("%s (%s): %s %q (%s); want 42501 %q", stmt, w.name, pe.Code, pe.Message, pe.Detail, e.want)
					}
				}
			}
			// Still a working session, still the same role.
			var who string
			if err := conn.QueryRow(context.Background(), "SELECT current_user || ',' || session_user").Scan(&who); err != nil || who != a.role+","+a.role {
				t.Errorf("after the attempts: current_user,session_user = %q (%v)", who, err)
			}
		})
	}
	t.Logf("%d attempts refused", attempts)

	// Nothing was granted, altered, created or written.
	if after := authSnapshot(t, shared); after != before {
		t.Errorf("roles changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if got := shared.superSQL(t, `SELECT count(*) FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles r ON r.oid = m.roleid
		WHERE r.rolname IN ('pg_execute_server_program', 'pg_read_server_files', 'pg_write_server_files', 'postgres', 'pgshield_service')`); got != "0" {
		t.Errorf("%s memberships in reserved roles", got)
	}
	if got := shared.superSQL(t, `SELECT count(*) FROM pg_catalog.pg_roles WHERE NOT rolsuper AND (rolreplication OR rolbypassrls)`); got != "0" {
		t.Errorf("%s roles that are not superusers have REPLICATION or BYPASSRLS", got)
	}
	if got := shared.superSQL(t, `SELECT count(*) FROM pg_catalog.pg_extension WHERE extname IN ('file_fdw', 'adminpack', 'dblink', 'plperlu')`); got != "0" {
		t.Errorf("%s forbidden extensions were created", got)
	}
	if got := shared.superSQL(t, `SELECT count(*) FROM pg_catalog.pg_language WHERE lanname = 'esc_lang'`); got != "0" {
		t.Errorf("language esc_lang was created")
	}
	if got := shared.superSQL(t, `SELECT count(*) FROM pg_catalog.pg_file_settings WHERE name = 'work_mem' AND setting = '1234kB'`); got != autoConfBefore {
		t.Errorf("ALTER SYSTEM reached postgresql.auto.conf")
	}
	if got := shared.superSQL(t, `SELECT count(*) FROM pg_catalog.pg_largeobject_metadata`); got != "0" {
		t.Errorf("%s large objects exist: lo_import ran", got)
	}
	if _, err := os.Stat(file); err == nil {
		t.Errorf("%s was written by COPY or lo_export", file)
	}
}

// TestServerFileFunctionsStaySuperuserOnly: even when a superuser grants
// EXECUTE on lo_import and pg_read_file, pgshield_guard refuses them to
// roles that are not superusers.
func TestServerFileFunctionsStaySuperuserOnly(t *testing.T) {
	grants := []string{"lo_import(text)", "pg_read_file(text)"}
	for _, f := range grants {
		shared.superSQL(t, "GRANT EXECUTE ON FUNCTION "+f+" TO "+admin)
	}
	t.Cleanup(func() {
		for _, f := range grants {
			shared.superSQL(t, "REVOKE EXECUTE ON FUNCTION "+f+" FROM "+admin)
		}
	})
	conn := actorConn(t, shared, admin, adminPassword, "")
	for _, q := range []string{`SELECT lo_import('/etc/passwd')`, `SELECT pg_read_file('/etc/passwd')`,
		`DO $$ BEGIN PERFORM pg_read_file('/etc/passwd'); END $$`} {
		err := execSQL(conn, q)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "42501" || !strings.Contains(pe.Detail, "Only superusers can read or write the server's files") {
			t.Errorf("%s with EXECUTE granted: %v; want 42501 from pgshield_guard", q, err)
		}
	}
	if got := shared.superSQL(t, `SELECT count(*) FROM pg_catalog.pg_largeobject_metadata`); got != "0" {
		t.Errorf("lo_import created %s large objects", got)
	}
}

// TestAdministratorCanManage: what the administrator is for still works.
func TestAdministratorCanManage(t *testing.T) {
	adminConn := actorConn(t, shared, admin, adminPassword, "")
	setupEscRoles(t, shared, adminConn)
	db := "esc_db"
	shared.superSQL(t, "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)")
	t.Cleanup(func() { shared.superSQL(t, "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)") })

	// Roles, ordinary and predefined memberships, databases.
	mustExec(t, adminConn, `CREATE ROLE esc_group NOLOGIN`)
	mustExec(t, adminConn, `CREATE ROLE esc_app LOGIN PASSWORD 'Esc-App-Pass-1' CONNECTION LIMIT 5`)
	mustExec(t, adminConn, `GRANT esc_group TO esc_app`)
	mustExec(t, adminConn, `GRANT pg_monitor, pg_read_all_stats TO esc_app`)
	mustExec(t, adminConn, `ALTER ROLE esc_app VALID UNTIL '2999-01-01'`)
	mustExec(t, adminConn, `ALTER ROLE `+admin+` PASSWORD '`+adminPassword+`'`) // its own password
	mustExec(t, adminConn, `CREATE DATABASE `+db+` OWNER `+admin)
	// A role the administrator gave CREATEROLE manages roles too.
	sub := actorConn(t, shared, escSub, escSubPass, "")
	mustExec(t, sub, `GRANT esc_group TO esc_victim`)
	mustExec(t, sub, `REVOKE esc_group FROM esc_victim`)

	// Every default allowed extension, trusted or not, is created for the
	// administrator, owned by it as PostgreSQL does for trusted extensions.
	inDB := actorConn(t, shared, admin, adminPassword, db)
	for _, ext := range strings.Split(config.DefaultAllowedExtensions, ",") {
		mustExec(t, inDB, fmt.Sprintf(`CREATE EXTENSION %q`, ext))
	}
	var owners string
	if err := inDB.QueryRow(context.Background(), `SELECT string_agg(DISTINCT extowner::regrole::text, ',') FROM pg_extension WHERE extname <> 'plpgsql'`).Scan(&owners); err != nil || owners != admin {
		t.Errorf("extension owners = %q (%v); want %s", owners, err, admin)
	}
	var n int
	if err := inDB.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_statements`).Scan(&n); err != nil {
		t.Errorf("pg_stat_statements is not usable: %v", err)
	}
	if err := inDB.QueryRow(context.Background(), `SELECT length(gen_random_uuid()::text) + length(digest('x', 'sha256'))`).Scan(&n); err != nil || n != 68 {
		t.Errorf("pgcrypto: %d %v", n, err)
	}
	// The superuser-owned objects of an untrusted extension stay so.
	if got := shared.superSQLIn(t, db, `SELECT relowner::regrole::text FROM pg_class WHERE relname = 'pg_stat_statements'`); got != "postgres" {
		t.Errorf("pg_stat_statements view owner = %q; want postgres", got)
	}
	// Also from a DO block; and the owner may drop what it created.
	mustExec(t, inDB, `DROP EXTENSION pg_stat_statements`)
	mustExec(t, inDB, `DO $$ BEGIN CREATE EXTENSION pg_stat_statements; END $$`)
	mustExec(t, inDB, `DROP EXTENSION hstore`)
	// pgaudit in the postgres database was made at init by the superuser:
	// the administrator cannot drop it.
	err := execSQL(adminConn, `DROP EXTENSION pgaudit`)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "42501" {
		t.Errorf("DROP EXTENSION pgaudit in postgres: %v; want 42501", err)
	}

	// Sessions: read pg_stat_activity (with other roles' queries) and end a
	// non-superuser's session; a superuser's session stays out of reach.
	app := actorConn(t, shared, "esc_app", "Esc-App-Pass-1", "")
	var appPID int
	if err := app.QueryRow(context.Background(), `SELECT pg_backend_pid()`).Scan(&appPID); err != nil {
		t.Fatal(err)
	}
	var query string
	if err := adminConn.QueryRow(context.Background(), `SELECT query FROM pg_stat_activity WHERE pid = $1`, appPID).Scan(&query); err != nil || !strings.Contains(query, "pg_backend_pid") {
		t.Errorf("pg_stat_activity query of esc_app = %q (%v)", query, err)
	}
	var ok bool
	if err := adminConn.QueryRow(context.Background(), `SELECT pg_terminate_backend($1, 5000)`, appPID).Scan(&ok); err != nil || !ok {
		t.Errorf("pg_terminate_backend(esc_app) = %v (%v)", ok, err)
	}
	if err := execSQL(app, "SELECT 1"); err == nil {
		t.Errorf("esc_app's session survived pg_terminate_backend")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	superConn, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=5432 user=postgres dbname=postgres sslmode=disable",
		filepath.Join(shared.dataDir, "run", "pg")))
	if err != nil {
		t.Fatal(err)
	}
	defer superConn.Close(context.Background())
	var superPID int
	if err := superConn.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&superPID); err != nil {
		t.Fatal(err)
	}
	err = execSQL(adminConn, fmt.Sprintf(`SELECT pg_terminate_backend(%d)`, superPID))
	if !errors.As(err, &pe) || pe.Code != "42501" {
		t.Errorf("terminating a superuser's session: %v; want 42501", err)
	}
	if err := superConn.Ping(ctx); err != nil {
		t.Errorf("the superuser's session ended: %v", err)
	}
}

func paramValue(t *testing.T, out string) string {
	t.Helper()
	var p struct {
		Value string `json:"value"`
	}
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	return p.Value
}

// superSQLIn is superSQL in another database.
func (s *server) superSQLIn(t *testing.T, db, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=5432 user=postgres dbname=%s sslmode=disable",
		filepath.Join(s.dataDir, "run", "pg"), db))
	if err != nil {
		t.Fatalf("superuser connect to %s: %v", db, err)
	}
	defer conn.Close(context.Background())
	var out string
	if err := conn.QueryRow(ctx, sql).Scan(&out); err != nil {
		t.Fatalf("superSQLIn(%q): %v", sql, err)
	}
	return out
}

// TestAllowedExtensionsParameter: pgshield.allowed_extensions decides what
// the administrator may create, at once; names not installed are refused;
// pgshield_guard's own settings cannot be changed with parameter set.
func TestAllowedExtensionsParameter(t *testing.T) {
	if v := paramValue(t, mustCLI(t, shared, "parameter", "show", "pgshield.allowed_extensions", "-o", "json")); v != config.DefaultAllowedExtensions {
		t.Fatalf("default pgshield.allowed_extensions = %q; want %q", v, config.DefaultAllowedExtensions)
	}
	t.Cleanup(func() {
		_, _ = shared.cli("parameter", "set", "pgshield.allowed_extensions", config.DefaultAllowedExtensions)
	})
	for _, tc := range []struct{ value, want string }{
		{"pgcrypto,no_such_extension", "not installed on this machine: no_such_extension"},
		{"pgcrypto,../evil", `"../evil" is not an extension name`},
	} {
		out, err := shared.cli("parameter", "set", "pgshield.allowed_extensions", tc.value)
		if code := exitCodeOf(err); code != 5 || !strings.Contains(out, tc.want) {
			t.Errorf("set %q: exit %d %q; want 5 and %q", tc.value, code, out, tc.want)
		}
	}
	for _, name := range []string{"pgshield_guard.allowed_extensions", "pgshield_guard.reserved_roles"} {
		out, err := shared.cli("parameter", "set", name, "file_fdw")
		if code := exitCodeOf(err); code != 5 || !strings.Contains(out, "managed by pgshield") {
			t.Errorf("set %s: exit %d %q; want 5, managed by pgshield", name, code, out)
		}
	}
	if v := paramValue(t, mustCLI(t, shared, "parameter", "show", "pgshield.allowed_extensions", "-o", "json")); v != config.DefaultAllowedExtensions {
		t.Fatalf("a refused value changed the list to %q", v)
	}

	db := "esc_extdb"
	shared.superSQL(t, "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)")
	t.Cleanup(func() { shared.superSQL(t, "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)") })
	adminConn := actorConn(t, shared, admin, adminPassword, "")
	mustExec(t, adminConn, "CREATE DATABASE "+db)
	conn := actorConn(t, shared, admin, adminPassword, db)
	if err := execSQL(conn, "CREATE EXTENSION file_fdw"); sqlState(err) != "42501" {
		t.Fatalf("file_fdw before it is allowed: %v", err)
	}
	// Allowed: works at once, in an open session too (it is an untrusted
	// extension: created through pgshield_guard's privileged path).
	if v := paramValue(t, mustCLI(t, shared, "parameter", "set", "pgshield.allowed_extensions", " File_FDW, pgcrypto,pgcrypto ", "-o", "json")); v != "file_fdw,pgcrypto" {
		t.Fatalf("set answer value = %q; want file_fdw,pgcrypto", v)
	}
	mustExec(t, conn, "CREATE EXTENSION file_fdw")
	if err := execSQL(conn, "CREATE EXTENSION citext"); sqlState(err) != "42501" {
		t.Errorf("citext after it left the list: %v", err)
	}
	// Its wrapper stays the superuser's: using it to read server files
	// takes a grant only a superuser can give.
	if err := execSQL(conn, "CREATE SERVER esc_files FOREIGN DATA WRAPPER file_fdw"); sqlState(err) != "42501" {
		t.Errorf("CREATE SERVER on file_fdw: %v; want 42501", err)
	}
	// Persisted: the value survives in the configuration file.
	b, err := os.ReadFile(filepath.Join(shared.dataDir, "pgshield.json"))
	if err != nil || !strings.Contains(string(b), `"file_fdw,pgcrypto"`) {
		t.Errorf("pgshield.json does not hold the new list (%v)", err)
	}
}

// TestRefusesToRunWithoutGuard: init and up refuse, naming the fix, when
// the pgshield_guard library is not installed next to PostgreSQL. The
// server made for the up case also shows the extension list surviving a
// key lock and unlock.
func TestRefusesToRunWithoutGuard(t *testing.T) {
	// A PostgreSQL installation with every program but no libraries.
	fake := filepath.Join(baseDir, "pg-without-guard")
	if err := os.MkdirAll(filepath.Join(fake, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(fake, "lib"), 0o755); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir("/usr/lib/postgresql/15/bin")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		_ = os.Symlink(filepath.Join("/usr/lib/postgresql/15/bin", e.Name()), filepath.Join(fake, "bin", e.Name()))
	}
	s := &server{name: "noguard", dataDir: filepath.Join(baseDir, "noguard")}
	t.Cleanup(s.stop)
	pw := filepath.Join(baseDir, "noguard.pw")
	if err := os.WriteFile(pw, []byte(adminPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	out, err := s.cli("init", "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--admin-password-file", pw,
		"--storage-size", "1GiB", "--pg-bin-dir", filepath.Join(fake, "bin"))
	if err == nil || !strings.Contains(out, "pgshield_guard is not installed") || !strings.Contains(out, "scripts/deps.sh") {
		t.Fatalf("init without pgshield_guard: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(s.dataDir, "pgshield.json")); err == nil {
		t.Errorf("a failed init left a server behind")
	}

	// up: a server made with the library, started where it is missing.
	s2, err := newServer("guardup")
	if s2 != nil {
		t.Cleanup(s2.stop)
	}
	if err != nil {
		t.Fatal(err)
	}
	// Meanwhile: the extension list outlives a lock and unlock, which
	// rewrites PostgreSQL's managed settings.
	mustCLI(t, s2, "parameter", "set", "pgshield.allowed_extensions", "citext")
	mustCLI(t, s2, "key", "lock")
	mustCLI(t, s2, "key", "unlock")
	// Written as a list of quoted identifiers (names need not be plain).
	if got := s2.superSQL(t, "SHOW pgshield_guard.allowed_extensions"); got != `"citext"` {
		t.Errorf("after lock and unlock, pgshield_guard.allowed_extensions = %q; want \"citext\"", got)
	}
	mustCLI(t, s2, "down")
	cfgPath := filepath.Join(s2.dataDir, "pgshield.json")
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	b = []byte(strings.Replace(string(b), `"/usr/lib/postgresql/15/bin"`, fmt.Sprintf("%q", filepath.Join(fake, "bin")), 1))
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = s2.cli("up", "--timeout", "1m")
	log, _ := os.ReadFile(filepath.Join(s2.dataDir, "log", "pgshield.log"))
	if err == nil || !strings.Contains(out+string(log), "pgshield_guard is not installed") {
		t.Fatalf("up without pgshield_guard: %v\n%s\n%s", err, out, log)
	}
}
