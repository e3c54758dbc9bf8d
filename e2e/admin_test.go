package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestAdministratorRole(t *testing.T) {
	out, err := psql(t, shared.dsn("user="+admin+" sslmode=verify-full"), adminPassword, "-c",
		`SELECT rolsuper, rolcreaterole, rolcreatedb, rolcanlogin FROM pg_roles WHERE rolname = current_user`)
	if err != nil || out != "f|t|t|t" {
		t.Fatalf("admin attributes = %q (%v); want not superuser, CREATEROLE, CREATEDB, LOGIN", out, err)
	}
	out, err = psql(t, shared.dsn("user="+admin+" sslmode=verify-full"), adminPassword, "-c",
		`SELECT string_agg(b.rolname, ',' ORDER BY b.rolname) FROM pg_auth_members m JOIN pg_roles b ON b.oid = m.roleid JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = current_user`)
	if err != nil || out != "pg_monitor,pg_read_all_settings,pg_read_all_stats,pg_signal_backend" {
		t.Fatalf("admin memberships = %q (%v)", out, err)
	}
	// The admin creates a role that can then log in through the gateway.
	if out, err := psql(t, shared.dsn("user="+admin+" sslmode=require"), adminPassword, "-c",
		`DROP ROLE IF EXISTS app_user`, "-c", `CREATE ROLE app_user LOGIN PASSWORD 'App-User-Pass-1'`); err != nil {
		t.Fatalf("create role: %v %s", err, out)
	}
	if out, err := psql(t, shared.dsn("user=app_user sslmode=verify-full channel_binding=require"), "App-User-Pass-1", "-c", "SELECT current_user"); err != nil || out != "app_user" {
		t.Fatalf("new role login: %v %q", err, out)
	}
}

func TestPostgresListensOnNoTCPPort(t *testing.T) {
	out, err := psql(t, shared.dsn("user="+admin+" sslmode=require"), adminPassword, "-c",
		`SELECT setting FROM pg_settings WHERE name = 'listen_addresses'`)
	if err != nil || out != "" {
		t.Fatalf("listen_addresses = %q (%v); want empty", out, err)
	}
	pid := int(shared.status(t)["postgres"].(map[string]any)["pid"].(float64))
	if hasTCPListener(t, pid) {
		t.Fatalf("the postmaster (pid %d) holds a listening TCP socket", pid)
	}
}

func TestParameterCLI(t *testing.T) {
	out, err := shared.cli("parameter", "list", "-o", "json")
	if err != nil {
		t.Fatalf("parameter list: %v", err)
	}
	var ps []map[string]any
	if err := json.Unmarshal([]byte(out), &ps); err != nil {
		t.Fatalf("parameter list -o json: %v", err)
	}
	seen := map[string]map[string]any{}
	for _, p := range ps {
		seen[p["name"].(string)] = p
	}
	for name, want := range map[string]string{"require_secure_transport": "on", "ssl_min_protocol_version": "TLSv1.2",
		"ssl_max_protocol_version": "", "accepted_password_auth_method": "scram-sha-256"} {
		if p, ok := seen[name]; !ok || p["value"] != want {
			t.Fatalf("parameter %s = %v; want %q", name, p, want)
		}
	}
	if p := seen["work_mem"]; p == nil || p["source"] != "postgresql" {
		t.Fatalf("work_mem missing from list: %v", p)
	}
	// A dynamic PostgreSQL parameter applies to new sessions at once.
	out, err = shared.cli("parameter", "set", "work_mem", "12MB", "-o", "json")
	if err != nil {
		t.Fatalf("set work_mem: %v %s", err, out)
	}
	var p map[string]any
	_ = json.Unmarshal([]byte(out), &p)
	if p["context"] != "dynamic" || p["pending_restart"] != false {
		t.Fatalf("work_mem set answer = %v; want dynamic, no restart", p)
	}
	if got, err := psql(t, shared.dsn("user="+admin+" sslmode=require"), adminPassword, "-c", "SHOW work_mem"); err != nil || got != "12MB" {
		t.Fatalf("new session sees work_mem = %q (%v); want 12MB", got, err)
	}
	// A static one is reported as needing a restart.
	out, err = shared.cli("parameter", "set", "max_connections", "120", "-o", "json")
	if err != nil {
		t.Fatalf("set max_connections: %v %s", err, out)
	}
	_ = json.Unmarshal([]byte(out), &p)
	if p["context"] != "static" || p["pending_restart"] != true {
		t.Fatalf("max_connections set answer = %v; want static, pending restart", p)
	}
	shared.superSQL(t, "ALTER SYSTEM RESET max_connections")
	shared.superSQL(t, "SELECT pg_reload_conf()")

	for _, tc := range []struct {
		args    []string
		code    int
		message string
	}{
		{[]string{"parameter", "set", "work_mem", "lots"}, 5, `invalid value for parameter "work_mem"`},
		{[]string{"parameter", "set", "no_such_param", "1"}, 6, `unrecognized configuration parameter "no_such_param"`},
		{[]string{"parameter", "set", "listen_addresses", "*"}, 5, "managed by pgshield"},
		{[]string{"parameter", "set", "port", "5433"}, 5, "managed by pgshield"},
		{[]string{"parameter", "set", "password_encryption", "md5"}, 5, "managed by pgshield"},
		{[]string{"parameter", "show", "no_such_param"}, 6, "unrecognized"},
		{[]string{"parameter", "set", "work_mem"}, 2, "accepts 2 arg"},
		{[]string{"status", "-o", "yaml"}, 2, "invalid output format"},
	} {
		out, err := shared.cli(tc.args...)
		code := exitCodeOf(err)
		if code != tc.code || !strings.Contains(out, tc.message) {
			t.Errorf("pgshield %v = exit %d %q; want exit %d containing %q", tc.args, code, out, tc.code, tc.message)
		}
	}
	if got, _ := psql(t, shared.dsn("user="+admin+" sslmode=require"), adminPassword, "-c", "SHOW work_mem"); got != "12MB" {
		t.Fatalf("a refused set changed work_mem to %q", got)
	}
}

func TestStatusJSON(t *testing.T) {
	st := shared.status(t)
	if st["state"] != "Available" {
		t.Fatalf("state = %v; want Available", st["state"])
	}
	pg := st["postgres"].(map[string]any)
	if v, _ := pg["version"].(string); !strings.HasPrefix(v, "15.") {
		t.Fatalf("postgres version = %v", pg["version"])
	}
	if st["listen"] != shared.addr() {
		t.Fatalf("listen = %v; want %s", st["listen"], shared.addr())
	}
	tlsSt := st["tls"].(map[string]any)
	if tlsSt["ssl_min_protocol_version"] != "TLSv1.2" || tlsSt["require_secure_transport"] != "on" {
		t.Fatalf("tls = %v", tlsSt)
	}
	if _, ok := st["uptime_seconds"].(float64); !ok {
		t.Fatalf("uptime_seconds missing: %v", st)
	}
}

func TestConnectionString(t *testing.T) {
	out, err := shared.cli("connection-string", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var ci map[string]string
	if err := json.Unmarshal([]byte(out), &ci); err != nil {
		t.Fatal(err)
	}
	if ci["sslrootcert"] != shared.caFile() || ci["sslmode"] != "verify-full" {
		t.Fatalf("connection-string = %v", ci)
	}
	// The printed URI works as-is with psql.
	if got, err := psql(t, ci["uri"], adminPassword, "-c", "SELECT current_user"); err != nil || got != admin {
		t.Fatalf("psql with the printed URI: %v %q", err, got)
	}
}

// TestPostgresHasNoNetwork runs a program from inside PostgreSQL (as the
// superuser, over the private socket: only a harness can) that opens a TCP
// connection. PostgreSQL's own network namespace has no route anywhere.
func TestPostgresHasNoNetwork(t *testing.T) {
	probe := fmt.Sprintf(`exec 3<>/dev/tcp/127.0.0.1/%d`, shared.port)
	// Control: the same probe from the host's namespace reaches the gateway.
	if out, err := exec.Command("bash", "-c", probe).CombinedOutput(); err != nil {
		t.Fatalf("control probe from the host failed: %v %s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=5432 user=postgres dbname=postgres sslmode=disable",
		filepath.Join(shared.dataDir, "run", "pg")))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, fmt.Sprintf(`COPY (SELECT 1) TO PROGRAM 'bash -c "%s"'`, probe))
	if err == nil {
		t.Fatalf("a program run by PostgreSQL opened a TCP connection to the host")
	}
	if !strings.Contains(err.Error(), "program") {
		t.Fatalf("unexpected error: %v", err)
	}
}

func TestPgauditStatementLogging(t *testing.T) {
	mustCLI(t, shared, "parameter", "set", "pgaudit.log", "read")
	t.Cleanup(func() { _, _ = shared.cli("parameter", "set", "pgaudit.log", "none") })
	marker := fmt.Sprintf("audit_marker_%d", time.Now().UnixNano())
	if out, err := psql(t, shared.dsn("user="+admin+" sslmode=require"), adminPassword, "-c", "SELECT '"+marker+"'"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		// PostgreSQL's log, pgaudit's records included, goes into the audit
		// stream (e2e/auditstream_test.go checks the parsed fields).
		out := mustCLI(t, shared, "audit", "search", "--event", "postgres.audit", "--user", admin, "-o", "json")
		if strings.Contains(out, `"class": "READ"`) && strings.Contains(out, marker) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no pgaudit READ record for the SELECT in the audit log")
		}
		time.Sleep(200 * time.Millisecond)
	}
}
