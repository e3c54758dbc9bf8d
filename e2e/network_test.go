package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func mustCLI(t *testing.T, s *server, args ...string) string {
	t.Helper()
	out, err := s.cli(args...)
	if err != nil {
		t.Fatalf("pgshield %v: %v\n%s", args, err, out)
	}
	return out
}

func startedServer(t *testing.T, name string, initArgs ...string) *server {
	t.Helper()
	s, err := newServer(name, initArgs...)
	t.Cleanup(func() {
		if s != nil {
			s.stop()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// allowed reports whether a psql login from src inside ns succeeds.
func allowed(t *testing.T, ns *netns, src, host string, port int) bool {
	t.Helper()
	out, err := ns.psqlFrom(t, src, host, port, admin, adminPassword, "-c", "SELECT inet_client_addr() IS NULL")
	if err != nil && !strings.Contains(out, "server closed the connection") && !strings.Contains(out, "Connection reset") &&
		!strings.Contains(out, "SSL SYSCALL") && !strings.Contains(out, "EOF") && !strings.Contains(out, "timeout") {
		t.Logf("psql from %s: %v %s", src, err, out)
	}
	return err == nil
}

func TestPublicFirewallRules(t *testing.T) {
	ns := newNetns(t)
	s := startedServer(t, "fw", "--listen", "[::]:0")
	port := s.port
	v4a, v4b := ns.ClientV4[0], ns.ClientV4[1]

	// Default deny: a non-loopback listen address starts with no rules.
	if allowed(t, ns, v4a, ns.HostV4, port) {
		t.Fatalf("connected with no firewall rule; want default deny")
	}
	// A server listening on every interface cannot switch to private access.
	if out, err := s.cli("network", "set", "--mode", "private"); err == nil || !strings.Contains(out, "private") {
		t.Fatalf("switch to private mode on [::] = %v %q; want a refusal", err, out)
	}
	mustCLI(t, s, "firewall-rule", "create", "--name", "office", "--start-ip-address", v4a, "--end-ip-address", v4a)
	if !allowed(t, ns, v4a, ns.HostV4, port) {
		t.Fatalf("%s refused with a rule allowing it", v4a)
	}
	if allowed(t, ns, v4b, ns.HostV4, port) {
		t.Fatalf("%s allowed by a rule for %s only", v4b, v4a)
	}
	// Range edges: [b, b+7] allows b, not a (one below).
	mustCLI(t, s, "firewall-rule", "update", "--name", "office", "--start-ip-address", v4b,
		"--end-ip-address", fmt.Sprintf("10.77.%d.10", ns.n))
	if !allowed(t, ns, v4b, ns.HostV4, port) || allowed(t, ns, v4a, ns.HostV4, port) {
		t.Fatalf("range [%s, .10]: want %s allowed and %s refused", v4b, v4b, v4a)
	}
	// IPv6, and a rule written as an IPv4-mapped IPv6 address.
	mustCLI(t, s, "firewall-rule", "create", "--name", "v6", "--start-ip-address", ns.ClientV6, "--end-ip-address", ns.ClientV6)
	if !allowed(t, ns, "", ns.HostV6, port) {
		t.Fatalf("IPv6 client refused with a rule allowing it")
	}
	mustCLI(t, s, "firewall-rule", "create", "--name", "mapped", "--start-ip-address", "::ffff:"+v4a, "--end-ip-address", "::ffff:"+v4a)
	if !allowed(t, ns, v4a, ns.HostV4, port) {
		t.Fatalf("IPv4 client refused by an IPv4-mapped rule for it")
	}
	// Bad input is refused and changes nothing.
	for _, bad := range [][]string{
		{"firewall-rule", "create", "--name", "bad range", "--start-ip-address", "1.2.3.4", "--end-ip-address", "1.2.3.5"},
		{"firewall-rule", "create", "--name", "rev", "--start-ip-address", "1.2.3.5", "--end-ip-address", "1.2.3.4"},
		{"firewall-rule", "create", "--name", "mix", "--start-ip-address", "1.2.3.4", "--end-ip-address", "::1"},
		{"firewall-rule", "create", "--name", "office", "--start-ip-address", "1.2.3.4", "--end-ip-address", "1.2.3.4"},
		{"firewall-rule", "create", "--name", "x", "--start-ip-address", "nope", "--end-ip-address", "1.2.3.4"},
		{"firewall-rule", "delete", "--name", "no-such-rule"},
	} {
		if out, err := s.cli(bad...); err == nil {
			t.Fatalf("pgshield %v succeeded: %s", bad, out)
		}
	}
	var rules []map[string]any
	if err := json.Unmarshal([]byte(mustCLI(t, s, "firewall-rule", "list", "-o", "json")), &rules); err != nil {
		t.Fatal(err)
	}
	if len(rules) != 3 {
		t.Fatalf("firewall-rule list = %v; want office, v6, mapped", rules)
	}
	hits := map[string]float64{}
	for _, r := range rules {
		hits[r["name"].(string)], _ = r["hits"].(float64)
	}
	if hits["office"] < 1 || hits["v6"] < 1 {
		t.Fatalf("hits per rule = %v; want office and v6 counted", hits)
	}

	// Removing the rule ends an open session from that source within 1 s.
	mustCLI(t, s, "firewall-rule", "delete", "--name", "mapped")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns.name, "psql", "-X", "-At",
		fmt.Sprintf("host=%s port=%d user=%s dbname=postgres sslmode=require", ns.HostV6, port, admin),
		"-c", "SELECT 1", "-c", "SELECT pg_sleep(20)")
	cmd.Env = append(os.Environ(), "PGPASSWORD="+adminPassword)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	time.Sleep(1500 * time.Millisecond) // logged in and sleeping
	start := time.Now()
	mustCLI(t, s, "firewall-rule", "delete", "--name", "v6")
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("session not ended 10 s after its rule was removed")
	}
	elapsed := time.Since(start)
	if elapsed > 1500*time.Millisecond { // the CLI call itself is inside this
		t.Fatalf("session ended %s after the rule removal; want within about 1 s", elapsed)
	}
	if !strings.Contains(out.String(), "network rules no longer allow") {
		t.Fatalf("client saw %q; want the 57P01 message", out.String())
	}
	t.Logf("rule removal to session end: %s", elapsed)
}

func TestExpiringFirewallRule(t *testing.T) {
	ns := newNetns(t)
	s := startedServer(t, "fwexp", "--listen", "[::]:0")
	v4 := ns.ClientV4[0]
	mustCLI(t, s, "firewall-rule", "create", "--name", "jit", "--start-ip-address", v4, "--end-ip-address", v4, "--expires-in", "3s")
	if !allowed(t, ns, v4, ns.HostV4, s.port) {
		t.Fatalf("refused while the just-in-time rule is valid")
	}
	deadline := time.Now().Add(10 * time.Second)
	for allowed(t, ns, v4, ns.HostV4, s.port) {
		if time.Now().After(deadline) {
			t.Fatalf("still allowed 10 s after a 3 s rule")
		}
		time.Sleep(500 * time.Millisecond)
	}
	out := mustCLI(t, s, "firewall-rule", "list", "-o", "json")
	if strings.Contains(out, `"jit"`) {
		t.Fatalf("expired rule still listed: %s", out)
	}
}

func TestPrivateNetworkRules(t *testing.T) {
	// Private access refuses a public address before binding anything.
	bad := &server{dataDir: baseDir + "/private-bad"}
	for _, listen := range []string{"8.8.8.8:5432", "0.0.0.0:5432", "[2001:db8::1]:5432"} {
		out, err := bad.cli("init", "--network", "private", "--listen", listen)
		if err == nil || !strings.Contains(out, "private") {
			t.Fatalf("init --network private --listen %s = %v %q; want a refusal about private addresses", listen, err, out)
		}
	}
	ns := newNetns(t)
	s := startedServer(t, "private", "--network", "private", "--listen", ns.HostV4+":0")
	a, b := ns.ClientV4[0], ns.ClientV4[1]
	if allowed(t, ns, a, ns.HostV4, s.port) {
		t.Fatalf("private access with no rules allowed a client")
	}
	mustCLI(t, s, "network-rule", "create", "--name", "deny-ten", "--priority", "100", "--access", "Deny",
		"--source-address-prefix", "10.0.0.0/8")
	mustCLI(t, s, "network-rule", "create", "--name", "allow-a", "--priority", "200", "--access", "Allow",
		"--source-address-prefix", a+"/32", "--destination-port-range", fmt.Sprint(s.port))
	if allowed(t, ns, a, ns.HostV4, s.port) {
		t.Fatalf("Deny at priority 100 lost to Allow at 200")
	}
	// The decision is an audit event naming the rule.
	if out := mustCLI(t, s, "audit", "search", "--event", "connection.denied", "-o", "json"); !strings.Contains(out, `"rule": "deny-ten"`) ||
		!strings.Contains(out, a) {
		t.Fatalf("no audit record of the denial naming rule deny-ten: %s", out)
	}
	if out, err := s.cli("network-rule", "create", "--name", "dup", "--priority", "200", "--access", "Allow", "--source-address-prefix", "*"); err == nil {
		t.Fatalf("duplicate priority accepted: %s", out)
	}
	mustCLI(t, s, "network-rule", "delete", "--name", "deny-ten")
	if !allowed(t, ns, a, ns.HostV4, s.port) {
		t.Fatalf("Allow at 200 did not apply once the Deny was removed")
	}
	if allowed(t, ns, b, ns.HostV4, s.port) {
		t.Fatalf("%s allowed with no rule for it (default deny)", b)
	}
	// A port range that does not include the gateway's port does not match.
	mustCLI(t, s, "network-rule", "create", "--name", "other-port", "--priority", "150", "--access", "Allow",
		"--source-address-prefix", b+"/32", "--destination-port-range", "1-1000")
	if allowed(t, ns, b, ns.HostV4, s.port) {
		t.Fatalf("rule for ports 1-1000 allowed port %d", s.port)
	}
	// The kernel firewall follows the priority-ordered rules too.
	mustCLI(t, s, "parameter", "set", "pgshield.kernel_firewall", "on")
	if got := ns.tcpProbe(t, b, ns.HostV4, s.port); got != 124 {
		t.Fatalf("private mode, kernel firewall: denied %s's TCP connect = exit %d; want 124 (SYN dropped)", b, got)
	}
	if got := ns.tcpProbe(t, a, ns.HostV4, s.port); got != 0 {
		t.Fatalf("private mode, kernel firewall: allowed %s's TCP connect = exit %d; want 0", a, got)
	}
	mustCLI(t, s, "parameter", "set", "pgshield.kernel_firewall", "off")
	// Switching to public access: firewall rules apply (none yet), network
	// rules are kept for a switch back.
	mustCLI(t, s, "network", "set", "--mode", "public")
	if allowed(t, ns, a, ns.HostV4, s.port) {
		t.Fatalf("public mode with no firewall rule allowed %s", a)
	}
	mustCLI(t, s, "firewall-rule", "create", "--name", "a", "--start-ip-address", a, "--end-ip-address", a)
	if !allowed(t, ns, a, ns.HostV4, s.port) {
		t.Fatalf("public mode with a firewall rule refused %s", a)
	}
	mustCLI(t, s, "network", "set", "--mode", "private")
	if !allowed(t, ns, a, ns.HostV4, s.port) || allowed(t, ns, b, ns.HostV4, s.port) {
		t.Fatalf("back in private mode the kept network rules do not apply")
	}
}

// sslAnswer sends an optional prefix and an SSLRequest and returns the
// gateway's one-byte answer, or 0 if it closed the connection.
func sslAnswer(t *testing.T, s *server, prefix string) byte {
	t.Helper()
	c := dialRaw(t, s)
	defer c.Close()
	if _, err := c.Write(append([]byte(prefix), sslRequest...)); err != nil {
		return 0
	}
	var b [1]byte
	if _, err := c.Read(b[:]); err != nil {
		return 0
	}
	return b[0]
}

func TestConnectionRateLimit(t *testing.T) {
	mustCLI(t, shared, "parameter", "set", "pgshield.max_connection_rate_per_ip", "5")
	t.Cleanup(func() { _, _ = shared.cli("parameter", "set", "pgshield.max_connection_rate_per_ip", "200") })
	answered := 0
	for i := 0; i < 20; i++ {
		if sslAnswer(t, shared, "") == 'S' {
			answered++
		}
	}
	if answered < 4 || answered > 8 {
		t.Fatalf("%d of 20 rapid connections got past the limit of 5/s; want about 5", answered)
	}
	time.Sleep(1200 * time.Millisecond) // the bucket refills
	if sslAnswer(t, shared, "") != 'S' {
		t.Fatalf("still refused after the bucket refilled")
	}
}

func TestProxyProtocol(t *testing.T) {
	// From a source that is not a trusted proxy, a PROXY header is refused.
	if got := sslAnswer(t, shared, "PROXY TCP4 127.0.0.1 127.0.0.1 5555 5432\r\n"); got == 'S' {
		t.Fatalf("PROXY header from an untrusted source was accepted")
	}
	mustCLI(t, shared, "parameter", "set", "pgshield.trusted_proxies", "127.0.0.1/32")
	t.Cleanup(func() { _, _ = shared.cli("parameter", "set", "pgshield.trusted_proxies", "") })
	// The rules apply to the address the header carries: 203.0.113.7 has
	// no rule (it is only a string in the header; no traffic goes there).
	hdr := "PROXY TCP4 203.0.113.7 127.0.0.1 5555 5432\r\n"
	if got := sslAnswer(t, shared, hdr); got == 'S' {
		t.Fatalf("carried address with no firewall rule was admitted")
	}
	mustCLI(t, shared, "firewall-rule", "create", "--name", "proxied", "--start-ip-address", "203.0.113.7", "--end-ip-address", "203.0.113.7")
	t.Cleanup(func() { _, _ = shared.cli("firewall-rule", "delete", "--name", "proxied") })
	if got := sslAnswer(t, shared, hdr); got != 'S' {
		t.Fatalf("carried address with a firewall rule refused (answer %q)", got)
	}
	// A trusted proxy must send the header.
	if got := sslAnswer(t, shared, ""); got == 'S' {
		t.Fatalf("trusted proxy without a PROXY header was admitted")
	}
}

// tcpProbe opens a bare TCP connection from src inside ns: 0 connected,
// 124 timed out (the SYN was dropped), anything else refused.
func (ns *netns) tcpProbe(t *testing.T, src, host string, port int) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	script := fmt.Sprintf(`ip route replace %s dev pgsh%dc src %s || exit 99; timeout 3 bash -c 'exec 3<>/dev/tcp/%s/%d'`, host, ns.n, src, host, port)
	err := exec.CommandContext(ctx, "ip", "netns", "exec", ns.name, "bash", "-c", script).Run()
	return exitCodeOf(err)
}

func TestKernelFirewall(t *testing.T) {
	ns := newNetns(t)
	s := startedServer(t, "kfw", "--listen", "[::]:0")
	a, b := ns.ClientV4[0], ns.ClientV4[1]
	mustCLI(t, s, "firewall-rule", "create", "--name", "a-only", "--start-ip-address", a, "--end-ip-address", a)
	// Without the kernel firewall a denied source completes the TCP
	// handshake (the gateway closes it at accept).
	if got := ns.tcpProbe(t, b, ns.HostV4, s.port); got != 0 {
		t.Fatalf("control: denied source's TCP connect = exit %d; want 0 (handshake completes)", got)
	}
	mustCLI(t, s, "parameter", "set", "pgshield.kernel_firewall", "on")
	if got := ns.tcpProbe(t, b, ns.HostV4, s.port); got != 124 {
		t.Fatalf("denied source's TCP connect with the kernel firewall = exit %d; want 124 (SYN dropped, no SYN-ACK)", got)
	}
	if got := ns.tcpProbe(t, a, ns.HostV4, s.port); got != 0 {
		t.Fatalf("allowed source's TCP connect = exit %d; want 0", got)
	}
	if !allowed(t, ns, a, ns.HostV4, s.port) {
		t.Fatalf("allowed source cannot log in with the kernel firewall on")
	}
	// Rule changes reach the kernel too.
	mustCLI(t, s, "firewall-rule", "update", "--name", "a-only", "--start-ip-address", b, "--end-ip-address", b)
	if got := ns.tcpProbe(t, a, ns.HostV4, s.port); got != 124 {
		t.Fatalf("after narrowing the rule, old source's connect = exit %d; want 124", got)
	}
	// down removes the table.
	if out, err := s.cli("down"); err != nil {
		t.Fatalf("down: %v %s", err, out)
	}
	out, _ := exec.Command("nft", "list", "tables").CombinedOutput()
	if strings.Contains(string(out), "pgshield_") {
		t.Fatalf("nftables table left after down: %s", out)
	}
}
