package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// clientQuery is what a DBA asks PostgreSQL about a session: issue 14's
// four queries (and show ssl), joined with how it logged in.
const clientQuery = `SELECT concat_ws(' ', host(a.client_addr), a.client_port, host(inet_client_addr()), inet_client_port(),
  s.ssl, s.version, s.cipher, s.bits, c.method, c.identity, current_setting('ssl'))
  FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) JOIN pgshield.sessions c USING (pid)
 WHERE a.pid = pg_backend_pid()`

// checkClient checks one line of clientQuery: the address, equal ports,
// TLS on with a TLS 1.3 suite, the method, and show ssl off.
func checkClient(t *testing.T, out, addr, method string) (port string) {
	t.Helper()
	f := strings.Fields(out)
	if len(f) != 11 || f[0] != addr || f[2] != addr || f[1] != f[3] || f[1] == "-1" || f[4] != "t" || f[5] != "TLSv1.3" ||
		!strings.HasPrefix(f[6], "TLS_") || f[8] != method || f[9] != "pgadmin" || f[10] != "off" {
		t.Fatalf("client view = %q; want %s, its port twice, t TLSv1.3 TLS_..., %s pgadmin, show ssl off", out, addr, method)
	}
	return f[1]
}

func TestClientIdentity(t *testing.T) {
	ns := newNetns(t)
	s := startedServer(t, "cid", "--listen", "[::]:0")
	mustCLI(t, s, "firewall-rule", "create", "--name", "ns4", "--start-ip-address", ns.ClientV4[0], "--end-ip-address", ns.ClientV4[0])
	mustCLI(t, s, "firewall-rule", "create", "--name", "ns6", "--start-ip-address", ns.ClientV6, "--end-ip-address", ns.ClientV6)
	mustCLI(t, s, "parameter", "set", "log_connections", "on")
	mustCLI(t, s, "parameter", "set", "pgaudit.log", "read")

	// IPv4 from the namespace, SCRAM-SHA-256-PLUS (libpq's default over
	// TLS); RESET ALL and DISCARD ALL in the same session change nothing.
	out, err := ns.psqlFrom(t, ns.ClientV4[0], ns.HostV4, s.port, "pgadmin", adminPassword,
		"-c", clientQuery, "-c", "RESET ALL", "-c", "DISCARD ALL", "-c", clientQuery,
		"-c", "CREATE TABLE IF NOT EXISTS cid_audited (x int)", "-c", "SELECT count(*) FROM cid_audited")
	if err != nil {
		t.Fatalf("psql from %s: %v\n%s", ns.ClientV4[0], err, out)
	}
	lines := strings.Split(out, "\n")
	if len(lines) < 2 {
		t.Fatalf("psql output %q", out)
	}
	port := checkClient(t, lines[0], ns.ClientV4[0], "scram-sha-256-plus")
	var after string
	for _, l := range lines[1:] {
		if strings.HasPrefix(l, ns.ClientV4[0]+" ") {
			after = l
		}
	}
	if after != lines[0] {
		t.Errorf("after RESET ALL and DISCARD ALL: %q; want %q", after, lines[0])
	}
	// Changing it in the session: refused.
	out, err = ns.psqlFrom(t, ns.ClientV4[0], ns.HostV4, s.port, "pgadmin", adminPassword,
		"-c", "SET pgshield_guard.client = 'v=1&addr=6.6.6.6&port=6&method=token'")
	if err == nil || !strings.Contains(out, "invalid configuration parameter name") {
		t.Errorf("SET pgshield_guard.client = %v %q; want refused", err, out)
	}
	out, err = ns.psqlFrom(t, ns.ClientV4[0], ns.HostV4, s.port, "pgadmin", adminPassword,
		"-c", "SELECT set_config('pgshield_guard.bind_client', 'v=1&seq=9&pid=1&addr=6.6.6.6&port=6&method=token&mac=00', false)")
	if err == nil || !strings.Contains(out, "not authenticated by the gateway") {
		t.Errorf("set_config(pgshield_guard.bind_client) = %v %q; want refused", err, out)
	}

	// IPv6 from the namespace, SCRAM without channel binding.
	out, err = ns.psqlFrom(t, "", ns.HostV6, s.port, "pgadmin", adminPassword, "-c", clientQuery)
	if err != nil {
		t.Fatalf("psql over IPv6: %v\n%s", err, out)
	}
	checkClient(t, out, ns.ClientV6, "scram-sha-256-plus")

	// The carrier from a client (libpq's options, from PGOPTIONS): refused
	// by the gateway with 42501, before any backend.
	t.Setenv("PGOPTIONS", "-c pgshield_guard.client=v=1&addr=6.6.6.6&port=6&method=token")
	out, err = ns.psqlFrom(t, ns.ClientV4[0], ns.HostV4, s.port, "pgadmin", adminPassword, "-c", "SELECT 1")
	if err == nil || !strings.Contains(out, "permission denied to set parameter") {
		t.Errorf("login with the carrier in options = %v %q; want 42501 from the gateway", err, out)
	}
	t.Setenv("PGOPTIONS", "")

	// The local superuser socket shows what PostgreSQL would.
	if got := s.superSQL(t, `SELECT concat_ws(' ', coalesce(host(client_addr), 'null'), client_port,
	    coalesce(host(inet_client_addr()), 'null'), ssl) FROM pg_stat_activity JOIN pg_stat_ssl USING (pid)
	  WHERE pid = pg_backend_pid()`); got != "null -1 null f" {
		t.Errorf("local superuser session = %q; want null -1 null f", got)
	}

	// A pgaudit record and the log_connections line name the client.
	client := ns.ClientV4[0] + ":" + port
	for _, w := range []string{`connection authenticated: identity="pgadmin" method=scram-sha-256-plus`, "cid_audited"} {
		deadline := time.Now().Add(20 * time.Second)
		for !auditHas(t, s, client, w) {
			if time.Now().After(deadline) {
				t.Fatalf("no audit record with %q from %s", w, client)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}

	// PROXY protocol: a trusted proxy's carried address is the client.
	mustCLI(t, s, "parameter", "set", "pgshield.trusted_proxies", "127.0.0.1/32")
	mustCLI(t, s, "firewall-rule", "create", "--name", "proxied", "--start-ip-address", "203.0.113.7", "--end-ip-address", "203.0.113.7")
	proxy := proxyV1(t, fmt.Sprintf("127.0.0.1:%d", s.port), "PROXY TCP4 203.0.113.7 127.0.0.1 5555 5432\r\n")
	out, err = psql(t, fmt.Sprintf("host=127.0.0.1 port=%d user=pgadmin dbname=postgres sslmode=require", proxy), adminPassword, "-c", clientQuery)
	if err != nil {
		t.Fatalf("psql through the proxy: %v\n%s", err, out)
	}
	if p := checkClient(t, out, "203.0.113.7", "scram-sha-256-plus"); p != "5555" {
		t.Errorf("port through the proxy = %s; want the carried 5555", p)
	}

	// Schema pgshield: PUBLIC reaches the sessions view, nothing else.
	for _, stmt := range []string{"SELECT * FROM pgshield.principals", "INSERT INTO pgshield.principals (role_oid, object_id, kind) VALUES (1, 'x', 'user')",
		"DELETE FROM pgshield.principals", "SELECT * FROM pgshield.login_role('postgres')", "CREATE TABLE pgshield.t (x int)",
		"CREATE OR REPLACE VIEW pgshield.sessions AS SELECT 1 AS pid", "DROP VIEW pgshield.sessions"} {
		out, err := ns.psqlFrom(t, ns.ClientV4[0], ns.HostV4, s.port, "pgadmin", adminPassword, "-c", stmt)
		if err == nil || !strings.Contains(out, "permission denied") && !strings.Contains(out, "must be owner") {
			t.Errorf("%s as the administrator = %v %q; want permission denied", stmt, err, out)
		}
	}
}

// proxyV1 listens on loopback and forwards each connection to target after
// sending hdr: a load balancer speaking the PROXY protocol.
func proxyV1(t *testing.T, target, hdr string) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var d net.Dialer
				u, err := d.DialContext(ctx, "tcp", target)
				if err != nil {
					return
				}
				defer u.Close()
				if _, err := io.WriteString(u, hdr); err != nil {
					return
				}
				go func() { _, _ = io.Copy(u, c); u.Close() }()
				_, _ = io.Copy(c, u)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// auditHas reports whether an audit record from client mentions what.
func auditHas(t *testing.T, s *server, client, what string) bool {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(mustCLI(t, s, "audit", "search", "--since", "1h", "-o", "json")))
	for {
		var v any
		if err := dec.Decode(&v); err != nil {
			return false
		}
		recs, ok := v.([]any)
		if !ok {
			recs = []any{v}
		}
		for _, r := range recs {
			m, _ := r.(map[string]any)
			b, _ := json.Marshal(m)
			if m["client"] == client && strings.Contains(string(b), strings.ReplaceAll(what, `"`, `\"`)) {
				return true
			}
		}
	}
}
