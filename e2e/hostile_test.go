package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pgshield/pgshield/internal/testutil/oidcissuer"
)

// The hostile-tenant test: the administrator plants a trojan wherever name
// resolution could reach (exact-typed overloads of the functions,
// aggregates and operators pgshield's SQL uses, and look-alike views of the
// catalogs it reads), in public and in a schema named after every role
// pgshield connects as ("$user" comes first in PostgreSQL's default
// search_path). Then every command and login path that runs privileged SQL
// is exercised. No trojan may run as anyone but the administrator, and no
// role may gain an attribute or a membership.

// trojanSchemas: public and the "$user" schema of every role pgshield's SQL
// runs as (the service role, the lookup role, the bootstrap superuser that
// bootstrap, restore and pgBackRest use).
var trojanSchemas = []string{"public", "pgshield_service", "pgshield_auth", "postgres"}

// trojanSetup is run once, by the administrator. trojan_hit records who ran
// it and, if that is a superuser, makes the administrator one: the attack
// the outside review carried out.
const trojanSetup = `
CREATE TABLE public.trojan_log (who pg_catalog.text, sess pg_catalog.text, what pg_catalog.text, at pg_catalog.timestamptz DEFAULT pg_catalog.now());
GRANT INSERT, SELECT ON public.trojan_log TO PUBLIC;
CREATE FUNCTION public.trojan_hit(what pg_catalog.text) RETURNS pg_catalog.bool
LANGUAGE plpgsql SET search_path = pg_catalog AS $t$
BEGIN
	INSERT INTO public.trojan_log (who, sess, what) VALUES (current_user, session_user, what);
	IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) current_user) THEN
		EXECUTE 'ALTER ROLE pgadmin SUPERUSER';
	END IF;
	RETURN false;
END
$t$;
GRANT EXECUTE ON FUNCTION public.trojan_hit(pg_catalog.text) TO PUBLIC;
`

// trojansIn plants the trojans in schema s.
func trojansIn(s string) []string {
	hit := func(what string) string { return fmt.Sprintf("public.trojan_hit(%s)", quoteLit(s+"."+what)) }
	var out []string
	if s != "public" {
		out = append(out, "CREATE SCHEMA "+s, "GRANT USAGE ON SCHEMA "+s+" TO PUBLIC")
	}
	// Operators, each over a function of the exact types.
	for i, op := range []struct{ name, l, r string }{
		{"=", "pg_catalog.oid", "pg_catalog.regclass"}, {"=", "pg_catalog.regclass", "pg_catalog.oid"},
		{"=", "pg_catalog.name", "pg_catalog.text"}, {"=", "pg_catalog.text", "pg_catalog.name"},
		{"=", "pg_catalog.name", "pg_catalog.name"}, {"=", "pg_catalog.text", "pg_catalog.text"},
		{"=", "pg_catalog.oid", "pg_catalog.oid"}, {"=", "pg_catalog.char", "pg_catalog.char"},
		{"=", "pg_catalog.oid", "pg_catalog.int4"}, {"<>", "pg_catalog.text", "pg_catalog.name"},
		{">=", "pg_catalog.text", "pg_catalog.text"}, {"||", "pg_catalog.text", "pg_catalog.text"},
	} {
		fn := fmt.Sprintf("%s.trojan_op%d", s, i)
		out = append(out,
			fmt.Sprintf("CREATE FUNCTION %s(%s, %s) RETURNS pg_catalog.bool LANGUAGE sql AS $$ SELECT %s $$", fn, op.l, op.r, hit("op "+op.name)),
			fmt.Sprintf("CREATE OPERATOR %s.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = %s)", s, op.name, op.l, op.r, fn))
	}
	// Functions of the names pgshield calls, with exact-typed overloads.
	for i, f := range []struct{ name, args, ret string }{
		{"lower", "pg_catalog.name", "pg_catalog.text"}, {"lower", "pg_catalog.text", "pg_catalog.text"},
		{"lower", "pg_catalog.varchar", "pg_catalog.text"},
		{"current_setting", "pg_catalog.name", "pg_catalog.text"}, {"current_setting", "pg_catalog.varchar", "pg_catalog.text"},
		{"unnest", "pg_catalog.text[]", "pg_catalog.text"}, {"pg_reload_conf", "", "pg_catalog.bool"},
		{"pg_is_in_recovery", "", "pg_catalog.bool"}, {"pg_switch_wal", "", "pg_catalog.pg_lsn"},
		{"pg_walfile_name", "pg_catalog.pg_lsn", "pg_catalog.text"}, {"now", "", "pg_catalog.timestamptz"},
		{"set_config", "pg_catalog.name, pg_catalog.text, pg_catalog.bool", "pg_catalog.text"},
		{"format", "pg_catalog.text", "pg_catalog.text"}, {"quote_ident", "pg_catalog.name", "pg_catalog.text"},
		{"to_regclass", "pg_catalog.text", "pg_catalog.regclass"}, {"pg_has_role", "pg_catalog.name, pg_catalog.text", "pg_catalog.bool"},
		{"version", "", "pg_catalog.text"}, {"pg_backup_start", "pg_catalog.text", "pg_catalog.pg_lsn"},
		{"pg_backup_start", "pg_catalog.text, pg_catalog.bool", "pg_catalog.pg_lsn"},
		{"pg_create_restore_point", "pg_catalog.text", "pg_catalog.pg_lsn"},
	} {
		body := fmt.Sprintf("SELECT CASE WHEN %s THEN NULL END::%s", hit(fmt.Sprintf("func %s(%s)#%d", f.name, f.args, i)), f.ret)
		out = append(out, fmt.Sprintf("CREATE FUNCTION %s.%s(%s) RETURNS %s LANGUAGE sql AS $$ %s $$", s, f.name, f.args, f.ret, body))
	}
	// Aggregates with a final function that fires the trojan.
	out = append(out,
		fmt.Sprintf("CREATE FUNCTION %s.trojan_final(pg_catalog.text[]) RETURNS pg_catalog.text[] LANGUAGE sql AS $$ SELECT CASE WHEN %s THEN NULL END::pg_catalog.text[] $$", s, hit("aggregate")),
		fmt.Sprintf("CREATE AGGREGATE %s.array_agg(pg_catalog.text) (SFUNC = pg_catalog.array_append, STYPE = pg_catalog.text[], FINALFUNC = %s.trojan_final)", s, s),
		fmt.Sprintf("CREATE FUNCTION %s.trojan_append(pg_catalog.text[], pg_catalog.name) RETURNS pg_catalog.text[] LANGUAGE sql AS $$ SELECT pg_catalog.array_append($1, $2::pg_catalog.text) $$", s),
		fmt.Sprintf("CREATE AGGREGATE %s.array_agg(pg_catalog.name) (SFUNC = %s.trojan_append, STYPE = pg_catalog.text[], FINALFUNC = %s.trojan_final)", s, s, s),
		fmt.Sprintf("CREATE FUNCTION %s.trojan_count(pg_catalog.int8, pg_catalog.text) RETURNS pg_catalog.int8 LANGUAGE sql AS $$ SELECT CASE WHEN %s THEN 0 ELSE 1 END::pg_catalog.int8 $$", s, hit("count")),
		fmt.Sprintf("CREATE AGGREGATE %s.count(pg_catalog.text) (SFUNC = %s.trojan_count, STYPE = pg_catalog.int8, INITCOND = '0')", s, s))
	// Look-alikes of the catalogs pgshield reads.
	for _, v := range []string{"pg_settings", "pg_authid", "pg_roles", "pg_class", "pg_namespace", "pg_auth_members",
		"pg_available_extensions", "pg_stat_archiver", "pg_extension", "pg_database", "principals"} {
		out = append(out, fmt.Sprintf("CREATE VIEW %s.%s AS SELECT %s AS name", s, v, hit("view "+v)))
	}
	return out
}

func quoteLit(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// hostileState is what must not change: every role's attributes, every
// membership, and pgshield_guard's settings.
func hostileState(t *testing.T, s *server) (supers, memberships, guard string) {
	t.Helper()
	supers = s.pinnedSQL(t, `SELECT string_agg(rolname || ':' || rolsuper || rolreplication || rolbypassrls, ',' ORDER BY rolname)
		FROM pg_authid WHERE rolsuper OR rolreplication OR rolbypassrls`)
	memberships = s.pinnedSQL(t, `SELECT coalesce(string_agg(g.rolname || '>' || u.rolname, ',' ORDER BY g.rolname, u.rolname), '')
		FROM pg_auth_members m JOIN pg_authid g ON g.oid = m.roleid JOIN pg_authid u ON u.oid = m.member
		WHERE g.rolname IN ('postgres', 'pgshield_service', 'pgshield_auth', 'pg_execute_server_program',
		  'pg_read_server_files', 'pg_write_server_files')
		   OR u.rolname IN ('postgres', 'pgshield_service', 'pgshield_auth')`)
	guard = s.pinnedSQL(t, `SELECT current_setting('pgshield_guard.reserved_roles') || '|' ||
		current_setting('pgshield_guard.admin_roles') || '|' || current_setting('pgshield_guard.reserved_memberships')`)
	return
}

// trojanVictims lists who ran a trojan other than the administrator.
func trojanVictims(t *testing.T, s *server) string {
	t.Helper()
	return s.pinnedSQL(t, `SELECT coalesce(string_agg(DISTINCT who || '/' || sess || ': ' || what, '; '), '')
		FROM public.trojan_log WHERE who <> 'pgadmin' OR sess <> 'pgadmin'`)
}

func TestHostileTenant(t *testing.T) {
	is := oidcissuer.Start(t)
	s, err := newServer("hostile")
	if s != nil {
		defer s.stop()
	}
	if err != nil {
		t.Fatal(err)
	}
	ca, err := is.WriteCA(baseDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range [][2]string{{"pgshield.oidc_issuer", is.URL}, {"pgshield.oidc_audience", oidcAudience},
		{"pgshield.oidc_ca_file", ca}} {
		mustCLI(t, s, "parameter", "set", kv[0], kv[1])
	}
	wantSupers, wantMembers, _ := hostileState(t, s)

	// The administrator plants its trojans, through the gateway.
	a := actorConn(t, s, admin, adminPassword, "")
	for _, stmt := range append([]string{trojanSetup}, func() []string {
		var all []string
		for _, sch := range trojanSchemas {
			all = append(all, trojansIn(sch)...)
		}
		return all
	}()...) {
		mustExec(t, a, stmt)
	}
	// Positive control: the trojans are live for whoever resolves names
	// the way pgshield's SQL once did.
	mustExec(t, a, `SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = 'pg_catalog.pg_class'::regclass`)
	mustExec(t, a, `SELECT array_agg(x) FROM (VALUES ('a'::text)) v(x)`)
	if got := s.pinnedSQL(t, `SELECT count(DISTINCT what) FROM public.trojan_log WHERE who = 'pgadmin'`); got != "2" {
		t.Fatalf("positive control: the administrator's own trojans fired %s times; want 2 (the trojans are not live): %s", got,
			s.pinnedSQL(t, `SELECT string_agg(DISTINCT what, '; ') FROM public.trojan_log`))
	}

	// A role with pg_read_all_data (the administrator may grant it, as on a
	// managed server) and pg_write_all_data against pgshield's catalog.
	// pg_write_all_data is reserved (it writes pg_authid and pg_database
	// through the updatable views pg_group and pg_stat_database_conflicts):
	// here a superuser grants it, as on a server made before it was, and
	// the next start takes it back.
	mustExec(t, a, `CREATE ROLE hostile_rw LOGIN PASSWORD 'Hostile-RW-1' CREATEROLE`)
	mustExec(t, a, `GRANT pg_read_all_data TO hostile_rw`)
	if err := execSQL(a, `GRANT pg_write_all_data TO hostile_rw`); sqlState(err) != "42501" {
		t.Errorf("the administrator granting pg_write_all_data: %v; want 42501", err)
	}
	s.pinnedSQL(t, `GRANT pg_write_all_data TO hostile_rw`)
	mustCLI(t, s, "principal", "create", "--name", "Mary.Smith@Contoso.com", "--object-id", "oid-mary", "--admin")
	mustCLI(t, s, "principal", "create", "--name", `Contoso "DBAs" Team`, "--object-id", "oid-dbas", "--type", "group", "--admin")
	mustCLI(t, s, "principal", "create", "--name", "Carl O'Neil@contoso.com", "--object-id", "oid-carl")
	rw := actorConn(t, s, "hostile_rw", "Hostile-RW-1", "")
	t.Run("pgshield's catalog is out of reach", func(t *testing.T) {
		for _, c := range []struct{ sql, state string }{
			{`INSERT INTO pgshield.principals (role_oid, object_id, kind) SELECT oid, 'attacker', 'user' FROM pg_roles WHERE rolname = 'pgadmin'`, "42501"},
			{`COPY pgshield.principals FROM STDIN`, "0A000"},
			{`SELECT pgshield.login_role('pgadmin')`, "42501"},
			{`CREATE TRIGGER t BEFORE INSERT ON pgshield.principals FOR EACH ROW EXECUTE FUNCTION public.trojan_hit()`, "42501"},
			{`CREATE FUNCTION pgshield.f() RETURNS int LANGUAGE sql AS 'SELECT 1'`, "42501"},
			{`GRANT pgshield_auth TO hostile_rw`, "42501"},
			{`ALTER ROLE pgshield_auth PASSWORD 'x'`, "42501"},
		} {
			if err := execSQL(rw, c.sql); sqlState(err) != c.state {
				t.Errorf("%s: %v (SQLSTATE %q); want SQLSTATE %s", c.sql, err, sqlState(err), c.state)
			}
		}
		for _, q := range []string{`SELECT count(*) FROM pgshield.principals`,
			`WITH u AS (UPDATE pgshield.principals SET object_id = 'attacker' RETURNING 1) SELECT count(*) FROM u`,
			`WITH d AS (DELETE FROM pgshield.principals RETURNING 1) SELECT count(*) FROM d`} {
			var n int
			if err := rw.QueryRow(context.Background(), q).Scan(&n); err != nil || n != 0 {
				t.Errorf("%s = %d, %v; want 0 rows", q, n, err)
			}
		}
		// pg_statistic, which pg_read_all_data reads, holds no value of the
		// table (pg_stats would respect row-level security; it does not).
		s.pinnedSQL(t, `ANALYZE pgshield.principals`)
		var nstats int
		if err := rw.QueryRow(context.Background(), `SELECT count(*) FROM pg_catalog.pg_statistic WHERE starelid OPERATOR(pg_catalog.=) 'pgshield.principals'::pg_catalog.regclass`).Scan(&nstats); err != nil || nstats != 0 {
			t.Errorf("pg_statistic rows of pgshield.principals read by pg_read_all_data: %d, %v; want 0", nstats, err)
		}
		if got := s.pinnedSQL(t, `SELECT count(*) FROM pgshield.principals`); got != "3" {
			t.Errorf("pgshield.principals has %s rows; want the 3 principals", got)
		}
		// The administrator still logs in with its password (a mapping row
		// would have made it a token principal).
		if out, err := psql(t, s.dsn("user="+admin+" sslmode=verify-full channel_binding=require"), adminPassword, "-c", "SELECT 1"); err != nil {
			t.Errorf("administrator login: %v %s", err, out)
		}
	})

	t.Run("admin principals are protected whatever their names", func(t *testing.T) {
		mustExec(t, rw, `CREATE ROLE hostile_sub LOGIN PASSWORD 'Hostile-Sub-1'`)
		for _, name := range []string{`"Mary.Smith@Contoso.com"`, `"Contoso ""DBAs"" Team"`, admin} {
			for _, stmt := range []string{"GRANT " + name + " TO hostile_rw", "ALTER ROLE " + name + " NOLOGIN",
				"DROP ROLE " + name, "ALTER ROLE " + name + " RENAME TO x", "ALTER ROLE " + name + " PASSWORD 'x'"} {
				if err := execSQL(rw, stmt); sqlState(err) != "42501" {
					t.Errorf("%s by a role the administrator made: %v; want 42501", stmt, err)
				}
			}
		}
	})

	// Every path that runs privileged SQL.
	t.Run("logins", func(t *testing.T) {
		for _, c := range []struct{ user, pw string }{{admin, "wrong"}, {"nobody", "x"}, {"pgshield_auth", "x"},
			{"pgshield_service", "x"}, {"postgres", "x"}, {"Mary.Smith@Contoso.com", "not-a-token"},
			{"Carl O'Neil@contoso.com", "not-a-token"}, {"hostile_rw", "Hostile-RW-1"}} {
			_, _ = psql(t, s.dsn(fmt.Sprintf("user='%s' sslmode=verify-full", strings.ReplaceAll(c.user, "'", `\'`))), c.pw, "-c", "SELECT 1")
		}
		tok, err := oidcissuer.Sign(is.Keys()[0], "", is.Access(oidcAudience, "oid-carl", time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if out, err := psql(t, s.dsn(`user='Carl O\'Neil@contoso.com' sslmode=verify-full`), tok, "-c", "SELECT 1"); err != nil {
			t.Errorf("token login of a principal: %v %s", err, out)
		}
	})
	t.Run("parameters and extensions", func(t *testing.T) {
		mustCLI(t, s, "parameter", "set", "work_mem", "8MB")
		mustCLI(t, s, "parameter", "show", "work_mem")
		mustCLI(t, s, "parameter", "show", "WORK_MEM")
		mustCLI(t, s, "parameter", "list")
		mustCLI(t, s, "parameter", "set", "pgshield.allowed_extensions", "pg_trgm,pgcrypto,pg_stat_statements,citext")
		mustCLI(t, s, "parameter", "set", "pgshield.max_connection_rate_per_ip", "500")
		mustExec(t, a, `CREATE EXTENSION pg_trgm`)
		mustExec(t, a, `CREATE EXTENSION pg_stat_statements`)
		mustExec(t, a, `CREATE EXTENSION citext SCHEMA pgshield_service`)
		mustCLI(t, s, "principal", "list")
	})
	t.Run("a statement older than a new admin principal cannot take it over", func(t *testing.T) {
		// A backend reads its settings between statements only: this DO
		// block, begun before the principal exists, would see the old list.
		a2 := actorConn(t, s, admin, adminPassword, "")
		done := make(chan error, 1)
		go func() {
			done <- execSQL(a2, `DO $$ BEGIN FOR i IN 1..90 LOOP
				IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'Zed@Contoso.com') THEN
					EXECUTE 'GRANT "Zed@Contoso.com" TO pgadmin'; RETURN; END IF;
				PERFORM pg_catalog.pg_sleep(0.2); END LOOP; END $$`)
		}()
		time.Sleep(500 * time.Millisecond)
		mustCLI(t, s, "principal", "create", "--name", "Zed@Contoso.com", "--object-id", "oid-zed", "--admin")
		err := <-done
		if got := s.pinnedSQL(t, `SELECT pg_has_role('pgadmin', 'Zed@Contoso.com', 'MEMBER')`); got != "false" {
			t.Errorf("a DO block begun before principal create made pgadmin a member of the new admin principal (its error: %v)", err)
		}
	})
	t.Run("principal delete of an admin principal", func(t *testing.T) {
		mustCLI(t, s, "principal", "delete", "--name", "Mary.Smith@Contoso.com")
		if got := s.pinnedSQL(t, `SELECT count(*) FROM pg_roles WHERE rolname = 'Mary.Smith@Contoso.com'`); got != "0" {
			t.Errorf("the admin principal's role survived principal delete")
		}
	})
	t.Run("keys, backups, restart", func(t *testing.T) {
		mustCLI(t, s, "key", "rotate")
		createBackup(t, s)
		mustExec(t, a, `CREATE TABLE public.after_backup (x int)`)
		walArchived(t, s)
		mustCLI(t, s, "key", "lock")
		mustCLI(t, s, "key", "unlock")
		mustCLI(t, s, "down", "--timeout", "60s")
		mustCLI(t, s, "up", "--timeout", "2m")
		if out, err := psql(t, s.dsn("user="+admin+" sslmode=verify-full"), adminPassword, "-c", "SELECT 1"); err != nil {
			t.Fatalf("administrator login after up: %v %s", err, out)
		}
		if got := s.pinnedSQL(t, `SELECT pg_has_role('hostile_rw', 'pg_write_all_data', 'MEMBER')`); got != "false" {
			t.Errorf("hostile_rw still holds pg_write_all_data after a start")
		}
		r, _ := restoredServer(t, s, "hostile-restored")
		if out, err := r.cli("up", "--timeout", "2m"); err != nil {
			t.Fatalf("up of the restored server: %v\n%s", err, out)
		}
		if out, err := psql(t, r.dsn("user="+admin+" sslmode=verify-full"), adminPassword, "-c", "SELECT count(*) FROM public.after_backup"); err != nil {
			t.Fatalf("administrator on the restored server: %v %s", err, out)
		}
		if v := trojanVictims(t, r); v != "" {
			t.Errorf("on the restored server, trojans ran as: %s", v)
		}
		if got := r.pinnedSQL(t, `SELECT string_agg(rolname, ',' ORDER BY rolname) FROM pg_authid WHERE rolsuper`); got != "pgshield_service,postgres" {
			t.Errorf("superusers on the restored server: %s", got)
		}
	})

	if v := trojanVictims(t, s); v != "" {
		t.Errorf("trojans ran as a role other than the administrator: %s", v)
	}
	supers, members, guard := hostileState(t, s)
	if supers != wantSupers {
		t.Errorf("roles with superuser attributes: %s; want %s", supers, wantSupers)
	}
	if members != wantMembers {
		t.Errorf("memberships of reserved roles: %s; want %s", members, wantMembers)
	}
	if !strings.Contains(guard, `"pgshield_auth"`) || !strings.Contains(guard, `"Contoso ""DBAs"" Team"`) ||
		strings.Contains(guard, "Mary.Smith") {
		t.Errorf("pgshield_guard settings = %s", guard)
	}
	if got := s.pinnedSQL(t, `SELECT rolsuper FROM pg_roles WHERE rolname = 'pgadmin'`); got != "false" {
		t.Errorf("the administrator became a superuser")
	}
}
