package e2e

import (
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
)

// hookReceiver is an HTTPS webhook receiver on a fixed port that can be
// taken down and brought back (httptest's certificate is the same for
// every server, so the daemon trusts it through one CA file).
type hookReceiver struct {
	addr string
	mu   sync.Mutex
	srv  *httptest.Server
	got  []map[string]any
}

func (h *hookReceiver) up(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", h.addr)
	if err != nil {
		t.Fatalf("receiver listen: %v", err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		var p map[string]any
		if json.Unmarshal(b, &p) != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		h.mu.Lock()
		h.got = append(h.got, p)
		h.mu.Unlock()
	}))
	srv.Listener.Close()
	srv.Listener = ln
	srv.StartTLS()
	h.mu.Lock()
	h.srv = srv
	h.mu.Unlock()
}

func (h *hookReceiver) down() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.srv != nil {
		h.srv.Close()
		h.srv = nil
	}
}

func (h *hookReceiver) types() map[string]int {
	h.mu.Lock()
	defer h.mu.Unlock()
	m := map[string]int{}
	for _, p := range h.got {
		s, _ := p["type"].(string)
		m[s]++
	}
	return m
}

func (s *server) alerts(t *testing.T) []apitype.Alert {
	t.Helper()
	out := mustCLI(t, s, "alert", "list", "--all", "-o", "json")
	var as []apitype.Alert
	if err := json.Unmarshal([]byte(out), &as); err != nil {
		t.Fatalf("alert list -o json is not JSON: %v\n%s", err, out)
	}
	return as
}

// waitAlert polls the alert list (bounded) for one that match accepts.
func (s *server) waitAlert(t *testing.T, what string, within time.Duration, match func(apitype.Alert) bool) apitype.Alert {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		for _, a := range s.alerts(t) {
			if match(a) {
				return a
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s alert within %v; alerts: %+v", what, within, s.alerts(t))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func ofType(typ string) func(apitype.Alert) bool {
	return func(a apitype.Alert) bool { return a.Type == typ }
}

func TestAlerts(t *testing.T) {
	s := startedServer(t, "alerts")
	mustCLI(t, s, "firewall-rule", "create", "--name", "Loopback8", "--start-ip-address", "127.0.0.0",
		"--end-ip-address", "127.255.255.255")

	// The webhook receiver's port is chosen now; it is down until later.
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	hook := &hookReceiver{addr: fmt.Sprintf("127.0.0.1:%d", port)}
	probe := httptest.NewTLSServer(http.NotFoundHandler())
	ca := filepath.Join(baseDir, "alerts-hook-ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: probe.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	probe.Close()
	t.Cleanup(hook.down)
	mustCLI(t, s, "parameter", "set", "pgshield.alert_webhook_ca_file", ca)
	mustCLI(t, s, "parameter", "set", "pgshield.alert_webhook_url", "https://"+hook.addr+"/hook?token=e2e-webhook-secret")
	// No learning period: a role or network never seen alerts at once.
	mustCLI(t, s, "parameter", "set", "pgshield.alert_learning_period", "0s")

	var loginTimes []time.Duration
	adminLogin := func(t *testing.T) {
		t.Helper()
		out, took, err := s.psqlAdmin(t)
		if err != nil || out != "in" {
			t.Fatalf("admin login: %v %s", err, out)
		}
		loginTimes = append(loginTimes, took)
	}

	t.Run("principal not seen", func(t *testing.T) {
		adminLogin(t)
		if out, err := psql(t, s.dsn("user="+admin+" sslmode=verify-full"), adminPassword, "-c",
			"CREATE ROLE alert_new LOGIN PASSWORD 'New-Role-Pw-1'"); err != nil {
			t.Fatalf("create role: %v %s", err, out)
		}
		if out, err := psql(t, s.dsn("user=alert_new sslmode=verify-full"), "New-Role-Pw-1", "-c", "SELECT 1"); err != nil {
			t.Fatalf("new role login: %v %s", err, out)
		}
		a := s.waitAlert(t, "principal_not_seen", 10*time.Second, func(a apitype.Alert) bool {
			return a.Type == "alert.principal_not_seen" && a.User == "alert_new"
		})
		if a.Severity != "Medium" || a.Details["last_login"] != "never seen" {
			t.Errorf("alert = %+v", a)
		}
	})

	t.Run("brute force then success", func(t *testing.T) {
		// psql from 127.0.0.1: threat protection leaves the host's own
		// loopback alone (no ban), the alerts do not.
		for i := 0; i < 5; i++ {
			if _, err := psql(t, s.dsn("user="+admin+" sslmode=verify-full"), "wrong-"+fmt.Sprint(i), "-c", "SELECT 1"); err == nil {
				t.Fatalf("a wrong password logged in")
			}
		}
		a := s.waitAlert(t, "bruteforce_valid_user", 10*time.Second, ofType("alert.bruteforce_valid_user"))
		if a.Severity != "High" || a.Client != "127.0.0.1" || a.User != admin {
			t.Errorf("brute force alert = %+v", a)
		}
		adminLogin(t)
		a = s.waitAlert(t, "bruteforce_success", 10*time.Second, ofType("alert.bruteforce_success"))
		if a.Severity != "High" || a.Details["failures_before"] != "5" {
			t.Errorf("successful brute force alert = %+v", a)
		}
	})

	t.Run("harmful application", func(t *testing.T) {
		out, err := psql(t, s.dsn("user="+admin+" sslmode=verify-full application_name='sqlmap/1.7.2#stable (https://sqlmap.org)'"),
			adminPassword, "-c", "SELECT 'in'")
		if err != nil || out != "in" {
			t.Fatalf("login as sqlmap: %v %s", err, out)
		}
		a := s.waitAlert(t, "harmful_application", 10*time.Second, ofType("alert.harmful_application"))
		if a.Details["tool"] != "sqlmap" || a.Severity != "High" || !strings.HasPrefix(a.Application, "sqlmap/") {
			t.Errorf("harmful application alert = %+v", a)
		}
	})

	t.Run("attack tool fingerprint", func(t *testing.T) {
		// ncrack's startup packet byte for byte (modules/ncrack_psql.cc),
		// in plaintext as ncrack sends it: require_secure_transport
		// refuses it before any login, and the refusal still names the
		// tool (a default fingerprint, no application_name match: "psql").
		var pkt []byte
		pkt = append(pkt, 0, 0, 0, 0, 0, 3, 0, 0)
		for _, kv := range []string{"user", "scanme", "database", "postgres", "application_name", "psql", "client_encoding", "UTF8"} {
			pkt = append(append(pkt, kv...), 0)
		}
		pkt = append(pkt, 0)
		pkt[3] = byte(len(pkt))
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: loopbackIP(0, 0, 9)}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", s.addr())
		if err != nil {
			t.Fatal(err)
		}
		_, _ = c.Write(pkt)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		reply, _ := io.ReadAll(c)
		c.Close()
		if !strings.Contains(string(reply), "SSL connection is required") {
			t.Errorf("plaintext tool got %q; want the require_secure_transport refusal", reply)
		}
		a := s.waitAlert(t, "harmful_application (fingerprint)", 10*time.Second, func(a apitype.Alert) bool {
			return a.Type == "alert.harmful_application" && a.Details["tool"] == "ncrack"
		})
		if a.Severity != "High" || a.Client != "127.0.0.9" || a.Details["matched_by"] != "startup_fingerprint" || a.User != "scanme" {
			t.Errorf("fingerprint alert = %+v", a)
		}
	})

	t.Run("source not seen", func(t *testing.T) {
		if err := s.connectFrom(loopbackIP(0, 1, 7), admin, adminPassword); err != nil {
			t.Fatalf("admin from 127.0.1.7: %v", err)
		}
		a := s.waitAlert(t, "source_not_seen", 10*time.Second, ofType("alert.source_not_seen"))
		if a.Details["source_prefix"] != "127.0.1.0/24" {
			t.Errorf("source alert = %+v", a)
		}
	})

	t.Run("decoy role", func(t *testing.T) {
		mustCLI(t, s, "decoy", "create", "role", "backup_admin")
		if err := s.connectFrom(loopbackIP(0, 0, 5), "backup_admin", "Winter2024!"); err == nil {
			t.Fatalf("the decoy role logged in")
		}
		a := s.waitAlert(t, "decoy_role_login", 10*time.Second, ofType("alert.decoy_role_login"))
		if a.Severity != "High" || a.Client != "127.0.0.5" || a.User != "backup_admin" {
			t.Errorf("decoy role alert = %+v", a)
		}
		// The lure looks like a role that may log in.
		if got := s.pinnedSQL(t, `SELECT rolcanlogin::text FROM pg_catalog.pg_roles WHERE rolname = 'backup_admin'`); got != "true" {
			t.Errorf("decoy role rolcanlogin = %q", got)
		}
	})

	t.Run("decoy table", func(t *testing.T) {
		mustCLI(t, s, "decoy", "create", "table", "finance.payroll")
		if out, err := psql(t, s.dsn("user="+admin+" sslmode=verify-full"), adminPassword, "-c", "CREATE DATABASE alerts_own"); err != nil {
			t.Fatalf("create database: %v %s", err, out)
		}
		// The operator cannot switch the decoys off either: pgaudit.role
		// is pgshield's.
		if out, err := s.cli("parameter", "set", "pgaudit.role", "none"); exitCodeOf(err) != 5 || !strings.Contains(out, "managed by pgshield") {
			t.Errorf("parameter set pgaudit.role: exit %d %q; want 5, managed by pgshield", exitCodeOf(err), out)
		}
		if got := s.pinnedSQL(t, `SELECT pg_catalog.current_setting('pgaudit.role')`); got != "pgshield_decoy_audit" {
			t.Errorf("pgaudit.role = %q", got)
		}
		// Nor as a startup option of the administrator's own session.
		if out, err := psql(t, s.dsn("user="+admin+" sslmode=verify-full options='-c pgaudit.role=none'"), adminPassword,
			"-c", "SHOW pgaudit.role"); err == nil && out != "pgshield_decoy_audit" {
			t.Errorf("a startup option set pgaudit.role for the session: %s", out)
		}
		// The administrator cannot take the decoy or its auditing apart.
		for _, stmt := range []string{
			"DROP TABLE finance.payroll", "ALTER TABLE finance.payroll RENAME TO x", "REVOKE SELECT ON finance.payroll FROM pgshield_decoy_audit",
			"ALTER SCHEMA finance RENAME TO y", "DROP ROLE pgshield_decoy_audit", "ALTER ROLE pgshield_decoy_audit RENAME TO z",
			"SET pgaudit.role = 'none'", "SELECT pg_catalog.set_config('pgaudit.role', 'none', false)",
			// pgaudit.role is a superuser's setting (PGC_SUSET): no per-role
			// or per-database default either, not even in a database the
			// administrator owns.
			"ALTER ROLE " + admin + " SET pgaudit.role = 'none'", "ALTER ROLE ALL SET pgaudit.role = 'none'",
			"ALTER ROLE " + admin + " IN DATABASE postgres SET pgaudit.role = 'none'",
			"ALTER DATABASE postgres SET pgaudit.role = 'none'", "ALTER DATABASE alerts_own SET pgaudit.role = 'none'",
			"ALTER SYSTEM SET pgaudit.role = 'none'", "GRANT SET ON PARAMETER pgaudit.role TO " + admin,
		} {
			if out, err := psql(t, s.dsn("user="+admin+" sslmode=verify-full"), adminPassword, "-c", stmt); err == nil &&
				!strings.Contains(out, "WARNING") {
				t.Errorf("administrator ran %q: %s", stmt, out)
			}
		}
		out, err := psql(t, s.dsn("user="+admin+" sslmode=verify-full"), adminPassword, "-c", "SELECT count(*) FROM finance.payroll")
		if err != nil || out != "3" {
			t.Fatalf("reading the decoy: %v %s", err, out)
		}
		a := s.waitAlert(t, "decoy_table_read", 15*time.Second, ofType("alert.decoy_table_read"))
		if a.Severity != "High" || a.User != admin || a.Details["table"] != "finance.payroll" || !strings.HasPrefix(a.Client, "127.0.0.1") {
			t.Errorf("decoy table alert = %+v", a)
		}
		if as := s.alerts(t); hasType(as, "alert.decoy_tampered") {
			t.Errorf("a refused tamper attempt raised a tamper alert: %+v", as)
		}
		// A table of the administrator's own, with the same name in
		// another schema and granted to the audit role, is not the decoy.
		if out, err := psql(t, s.dsn("user="+admin+" sslmode=verify-full"), adminPassword, "-c", "CREATE TABLE public.payroll(i int)"); err != nil {
			t.Fatalf("own table: %v %s", err, out)
		}
		if out, err := psql(t, s.dsn("user="+admin+" sslmode=verify-full"), adminPassword, "-c", "GRANT SELECT ON public.payroll TO pgshield_decoy_audit"); err != nil {
			t.Logf("granting the look-alike to the audit role was refused (fine): %s", out)
		}
		if out, err := psql(t, s.dsn("user="+admin+" sslmode=verify-full"), adminPassword, "-c", "SELECT count(*) FROM public.payroll"); err != nil {
			t.Fatalf("reading own table: %v %s", err, out)
		}
		time.Sleep(2 * time.Second)
		n := 0
		for _, a := range s.alerts(t) {
			if a.Type == "alert.decoy_table_read" {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%d decoy read alerts after reading a look-alike; want 1", n)
		}

		// A decoy in another database (one the administrator owns), read
		// there through the gateway.
		mustCLI(t, s, "decoy", "create", "table", "--database", "alerts_own", "vault.api_keys")
		if out := mustCLI(t, s, "decoy", "list", "-o", "json"); !strings.Contains(out, `"database": "alerts_own"`) &&
			!strings.Contains(out, `"database":"alerts_own"`) {
			t.Errorf("decoy list does not show the database:\n%s", out)
		}
		out, err = psql(t, s.dsn("user="+admin+" sslmode=verify-full dbname=alerts_own"), adminPassword, "-c", "SELECT count(*) FROM vault.api_keys")
		if err != nil || out != "3" {
			t.Fatalf("reading the decoy in alerts_own: %v %s", err, out)
		}
		a = s.waitAlert(t, "decoy_table_read in alerts_own", 15*time.Second, func(a apitype.Alert) bool {
			return a.Type == "alert.decoy_table_read" && a.Database == "alerts_own"
		})
		if a.Details["table"] != "vault.api_keys" || a.User != admin {
			t.Errorf("decoy table alert in alerts_own = %+v", a)
		}
		mustCLI(t, s, "decoy", "delete", "--database", "alerts_own", "vault.api_keys")
	})

	t.Run("privilege change and refused escalation", func(t *testing.T) {
		if out, err := psql(t, s.dsn("user="+admin+" sslmode=verify-full"), adminPassword, "-c",
			"CREATE ROLE alert_esc LOGIN", "-c", "ALTER ROLE alert_esc CREATEROLE"); err != nil {
			t.Fatalf("create role: %v %s", err, out)
		}
		a := s.waitAlert(t, "privilege_change", 20*time.Second, func(a apitype.Alert) bool {
			return a.Type == "alert.privilege_change" && a.Details["role"] == "alert_esc" && a.Details["privilege"] == "CREATEROLE"
		})
		if a.Severity != "High" {
			t.Errorf("privilege alert = %+v", a)
		}
		// In a database of the administrator's own, through the gateway.
		if out, err := psql(t, s.dsn("user="+admin+" sslmode=verify-full dbname=alerts_own"), adminPassword, "-c",
			"GRANT CREATE ON SCHEMA public TO PUBLIC"); err != nil {
			t.Fatalf("grant in alerts_own: %v %s", err, out)
		}
		a = s.waitAlert(t, "privilege_change in alerts_own", 20*time.Second, func(a apitype.Alert) bool {
			return a.Type == "alert.privilege_change" && a.Database == "alerts_own" && a.Details["role"] == "PUBLIC"
		})
		if a.Details["privilege"] != "CREATE on schema public" || a.Severity != "High" {
			t.Errorf("privilege alert in alerts_own = %+v", a)
		}
		out, err := psql(t, s.dsn("user="+admin+" sslmode=verify-full"), adminPassword, "-c", "GRANT pg_execute_server_program TO "+admin)
		if err == nil || !strings.Contains(out, "42501") && !strings.Contains(out, "permission denied") && !strings.Contains(out, "pgshield") {
			t.Fatalf("escalation not refused: %v %s", err, out)
		}
		a = s.waitAlert(t, "escalation_refused", 15*time.Second, func(a apitype.Alert) bool {
			return a.Type == "alert.escalation_refused" && strings.Contains(a.Evidence["statement"], "pg_execute_server_program")
		})
		if a.User != admin || a.Severity != "Medium" {
			t.Errorf("refused escalation alert = %+v", a)
		}
	})

	t.Run("hostile user names stay data", func(t *testing.T) {
		name := "evil\n\"client\":\"10.6.6.6\",\"x\":'; DROP TABLE t; --\ttab"
		for i := 0; i < 5; i++ {
			_ = s.connectFrom(loopbackIP(0, 0, 6), name, "guess")
		}
		a := s.waitAlert(t, "bruteforce_invalid_users", 10*time.Second, ofType("alert.bruteforce_invalid_users"))
		if a.Client != "127.0.0.6" || a.Details["source"] != "127.0.0.6/32" {
			t.Errorf("invalid users alert blames %q / %q; want the real peer 127.0.0.6", a.Client, a.Details["source"])
		}
		if a.User != name {
			t.Errorf("user = %q; want the name as sent", a.User)
		}
		// The table output quotes it: one line per alert.
		table := mustCLI(t, s, "alert", "show", a.ID)
		if strings.Contains(table, "\n\"client\"") || !strings.Contains(table, `\n`) {
			t.Errorf("alert show prints the raw name:\n%s", table)
		}
		out := mustCLI(t, s, "audit", "search", "--event", "alert.bruteforce_invalid_users", "-o", "json")
		if !json.Valid([]byte(out)) || !strings.Contains(out, `"127.0.0.6"`) {
			t.Errorf("audit records of the alert are not valid JSON:\n%s", out)
		}
	})

	t.Run("webhook down, then back", func(t *testing.T) {
		// Logins went on while the receiver was down.
		for _, d := range loginTimes {
			if d > 5*time.Second {
				t.Errorf("a login took %v while the webhook was down", d)
			}
		}
		if got := hook.types(); len(got) != 0 {
			t.Fatalf("received %v while down", got)
		}
		hook.up(t)
		deadline := time.Now().Add(75 * time.Second)
		for {
			got := hook.types()
			if got["alert.decoy_table_read"] > 0 && got["alert.bruteforce_valid_user"] > 0 && got["alert.decoy_role_login"] > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("delivered after the receiver came back: %v", got)
			}
			time.Sleep(time.Second)
		}
		hook.mu.Lock()
		b, _ := json.Marshal(hook.got)
		hook.mu.Unlock()
		if strings.Contains(string(b), "e2e-webhook-secret") || strings.Contains(string(b), adminPassword) || strings.Contains(string(b), "evidence") {
			t.Errorf("a secret or evidence reached the webhook: %s", b)
		}
		metrics := mustCLI(t, s, "metrics")
		// Two decoy reads: in postgres and in alerts_own.
		if !strings.Contains(metrics, `pgshield_alerts_total{severity="High",type="alert.decoy_table_read"} 2`) {
			t.Errorf("metrics lack the alert counter")
		}
		// The listener that may face the network shows the administrator
		// nothing that moves when a decoy fires (review finding 13).
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		mustCLI(t, s, "parameter", "set", "pgshield.metrics_listen", addr)
		defer mustCLI(t, s, "parameter", "set", "pgshield.metrics_listen", "")
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Get("http://" + addr + "/metrics")
		if err != nil {
			t.Fatalf("GET /metrics on pgshield.metrics_listen: %v", err)
		}
		defer resp.Body.Close()
		b, _ = io.ReadAll(resp.Body)
		for _, leak := range []string{"decoy", "pgshield_alert_webhook_total", "postgres.audit"} {
			if strings.Contains(string(b), leak) {
				t.Errorf("metrics on pgshield.metrics_listen show %q", leak)
			}
		}
		if !strings.Contains(string(b), `type="alert.bruteforce_valid_user"`) {
			t.Errorf("metrics on pgshield.metrics_listen lack the other alerts")
		}
	})

	t.Run("show, dismiss, survive down and up", func(t *testing.T) {
		a := s.waitAlert(t, "decoy_table_read", time.Second, ofType("alert.decoy_table_read"))
		var shown apitype.Alert
		if err := json.Unmarshal([]byte(mustCLI(t, s, "alert", "show", a.ID, "-o", "json")), &shown); err != nil || shown.ID != a.ID {
			t.Fatalf("alert show: %v %+v", err, shown)
		}
		mustCLI(t, s, "alert", "dismiss", a.ID)
		if out := mustCLI(t, s, "alert", "list"); strings.Contains(out, a.ID) {
			t.Errorf("a dismissed alert is listed without --all")
		}
		if out, err := s.cli("alert", "show", "no-such-alert"); err == nil {
			t.Errorf("alert show of an unknown id succeeded: %s", out)
		}
		before := s.alerts(t)
		st, err := os.Stat(filepath.Join(s.dataDir, "alerts", "state.json"))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("state file: %v %v", err, st)
		}
		mustCLI(t, s, "down", "--timeout", "60s")
		mustCLI(t, s, "up", "--timeout", "2m")
		after := s.alerts(t)
		ids := map[string]apitype.Alert{}
		for _, x := range after {
			ids[x.ID] = x
		}
		for _, x := range before {
			if y, ok := ids[x.ID]; !ok || y.Type != x.Type {
				t.Errorf("alert %s (%s) lost across down/up", x.ID, x.Type)
			}
		}
		if !ids[a.ID].Dismissed {
			t.Errorf("dismissal lost across down/up")
		}
		if out := mustCLI(t, s, "decoy", "list", "-o", "json"); !strings.Contains(out, "finance.payroll") || !strings.Contains(out, "backup_admin") {
			t.Errorf("decoys lost across down/up: %s", out)
		}
		mustCLI(t, s, "decoy", "delete", "backup_admin")
		if got := s.pinnedSQL(t, `SELECT count(*) FROM pg_catalog.pg_roles WHERE rolname = 'backup_admin'`); got != "0" {
			t.Errorf("decoy role left after delete: %s", got)
		}
	})
}

func hasType(as []apitype.Alert, typ string) bool {
	for _, a := range as {
		if a.Type == typ {
			return true
		}
	}
	return false
}
