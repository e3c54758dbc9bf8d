package etcd

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgshield/pgshield/internal/testutil/pgtest"
)

// The real test drives Debian's etcd and etcdctl (etcd-server and
// etcd-client, from scripts/deps.sh). The Go client
// (go.etcd.io/etcd/client/v3) would add a dozen modules (etcd's api and
// client/pkg, zap, grpc-gateway, go-semver, go-systemd...) to pgshield's
// build for a test alone; etcdctl 3.4 is the client of the same release
// as the server and reports the same errors.

// netlab is a hub namespace with a bridge and one namespace per member,
// each joined to the bridge by a veth pair, on 10.77.0.0/24.
type netlab struct {
	t      *testing.T
	hub    string
	ns     []string
	suffix string
}

func run(ctx context.Context, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func (l *netlab) must(args ...string) {
	l.t.Helper()
	if out, err := run(context.Background(), args[0], args[1:]...); err != nil {
		l.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func newNetlab(t *testing.T, n int) *netlab {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	l := &netlab{t: t, suffix: hex.EncodeToString(b)}
	l.hub = "pgsh-etcdhub-" + l.suffix
	// Namespaces go even when a step below fails.
	t.Cleanup(l.close)
	l.must("ip", "netns", "add", l.hub)
	l.must("ip", "-n", l.hub, "link", "add", "br0", "type", "bridge")
	l.must("ip", "-n", l.hub, "link", "set", "br0", "up")
	for i := 0; i < n; i++ {
		ns := fmt.Sprintf("pgsh-etcd%d-%s", i+1, l.suffix)
		l.ns = append(l.ns, ns)
		l.must("ip", "netns", "add", ns)
		l.must("ip", "-n", ns, "link", "set", "lo", "up")
		// Created inside the member's namespace, the hub end moved out: the
		// host namespace never sees either end.
		hubEnd := fmt.Sprintf("m%d", i+1)
		l.must("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", hubEnd)
		l.must("ip", "-n", ns, "link", "set", hubEnd, "netns", l.hub)
		l.must("ip", "-n", l.hub, "link", "set", hubEnd, "master", "br0", "up")
		l.must("ip", "-n", ns, "addr", "add", fmt.Sprintf("%s/24", l.ip(i)), "dev", "eth0")
		l.must("ip", "-n", ns, "link", "set", "eth0", "up")
	}
	return l
}

func (l *netlab) ip(i int) net.IP { return net.IPv4(10, 77, 0, byte(11+i)) }

func (l *netlab) close() {
	for _, ns := range append(append([]string(nil), l.ns...), l.hub) {
		out, err := run(context.Background(), "ip", "netns", "del", ns)
		if err != nil && !strings.Contains(out, "No such file") {
			l.t.Errorf("ip netns del %s: %v %s", ns, err, out)
		}
	}
}

// partition cuts member i off: nftables inside its namespace drops
// everything on eth0, while its own address still answers on loopback.
func (l *netlab) partition(i int) {
	l.t.Helper()
	rules := "table inet partition {\n" +
		" chain in { type filter hook input priority 0; policy accept; iifname \"eth0\" drop; }\n" +
		" chain out { type filter hook output priority 0; policy accept; oifname \"eth0\" drop; }\n}\n"
	f := filepath.Join(l.t.TempDir(), "partition.nft")
	if err := os.WriteFile(f, []byte(rules), 0o600); err != nil {
		l.t.Fatal(err)
	}
	l.must("ip", "netns", "exec", l.ns[i], "nft", "-f", f)
}

type etcdctl struct {
	ns       string
	endpoint string
	args     []string // TLS flags
}

func (c etcdctl) run(ctx context.Context, args ...string) (string, error) {
	full := append([]string{"netns", "exec", c.ns, "etcdctl", "--endpoints=" + c.endpoint, "--dial-timeout=2s", "--command-timeout=4s"}, c.args...)
	full = append(full, args...)
	cmd := exec.CommandContext(ctx, "ip", full...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "ETCDCTL_API=3"}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return strings.TrimSpace(out.String()), err
}

func TestRealThreeMembersTLS(t *testing.T) {
	if os.Getenv(pgtest.EnvVar) != "1" {
		t.Skip("needs etcd and network namespaces as root: set PGSHIELD_E2E=1 (scripts/test.sh does)")
	}
	bin := Installed()
	if bin == "" {
		t.Skip("etcd is not installed: scripts/deps.sh installs Debian's etcd-server and etcd-client")
	}
	if _, err := exec.LookPath("etcdctl"); err != nil {
		t.Skip("etcdctl is not installed: scripts/deps.sh installs Debian's etcd-client")
	}
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}

	lab := newNetlab(t, 3)
	c := Cluster{Token: "pgshield-test-" + lab.suffix}
	for i := range 3 {
		c.Members = append(c.Members, Member{Name: fmt.Sprintf("m%d", i+1), IP: lab.ip(i)})
	}
	root := t.TempDir()
	pki := PKI{Dir: filepath.Join(root, "pki")}
	if err := pki.Generate(c, time.Now()); err != nil {
		t.Fatal(err)
	}
	// A second CA, to show a certificate from elsewhere is refused.
	other := PKI{Dir: filepath.Join(root, "other")}
	if err := other.Generate(c, time.Now()); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	logs := make([]*syncBuffer, 3)
	t.Cleanup(func() {
		cancel()
		wg.Wait() // every member stopped before the namespaces go
		if t.Failed() {
			for i, l := range logs {
				if l != nil {
					t.Logf("member m%d log (tail):\n%s", i+1, l.tail(3000))
				}
			}
		}
	})
	for i, m := range c.Members {
		dataDir := filepath.Join(root, "data-"+m.Name)
		if err := os.Mkdir(dataDir, 0o700); err != nil {
			t.Fatal(err)
		}
		args, err := Args(c, m.Name, pki, dataDir)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range args {
			if strings.Contains(a, "PRIVATE KEY") {
				t.Fatalf("key material in argv: %q", a)
			}
		}
		logs[i] = &syncBuffer{}
		s := &Supervisor{Bin: bin, Prefix: []string{"ip", "netns", "exec", lab.ns[i]}, Args: args, Dir: dataDir, Log: logs[i], StopGrace: 5 * time.Second}
		wg.Add(1)
		go func() { defer wg.Done(); _ = s.Run(ctx) }()
	}

	tlsArgs := []string{"--cacert=" + pki.CACert(), "--cert=" + pki.ClientCert(), "--key=" + pki.ClientKey()}
	cli := func(i int) etcdctl { return etcdctl{ns: lab.ns[i], endpoint: ClientURL(c.Members[i]), args: tlsArgs} }
	all := etcdctl{ns: lab.ns[0], endpoint: strings.Join(c.Endpoints(), ","), args: tlsArgs}

	// Healthy: every member answers a linearizable health check over TLS
	// with the client certificate. Bounded: 60 s.
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := all.run(ctx, "endpoint", "health")
		if err == nil && strings.Count(out, "is healthy") == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the cluster is not healthy after 60 s: %v\n%s", err, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
	out, err := all.run(ctx, "member", "list")
	if err != nil || strings.Count(out, "started") != 3 || strings.Contains(out, "http://") {
		t.Fatalf("member list: %v\n%s", err, out)
	}

	// Nothing listens on the host: etcd is only inside its namespaces.
	if out, _ := run(ctx, "ss", "-Hltn", "sport = :2379 or sport = :2380"); strings.TrimSpace(out) != "" {
		t.Errorf("an etcd port is open in the host namespace:\n%s", out)
	}

	// A client without a certificate, or with one from another CA, is
	// refused; so is plain HTTP.
	refused := map[string]etcdctl{
		"no certificate": {ns: lab.ns[0], endpoint: ClientURL(c.Members[0]), args: []string{"--cacert=" + pki.CACert()}},
		"another CA's":   {ns: lab.ns[0], endpoint: ClientURL(c.Members[0]), args: []string{"--cacert=" + pki.CACert(), "--cert=" + other.ClientCert(), "--key=" + other.ClientKey()}},
		"plain HTTP":     {ns: lab.ns[0], endpoint: strings.Replace(ClientURL(c.Members[0]), "https://", "http://", 1)},
	}
	for name, bad := range refused {
		if out, err := bad.run(ctx, "put", "intruder", "1"); err == nil {
			t.Errorf("%s: a write was accepted: %s", name, out)
		}
		if out, err := bad.run(ctx, "get", "--consistency=s", "k"); err == nil {
			t.Errorf("%s: a read was accepted: %s", name, out)
		}
	}
	if out, err := cli(0).run(ctx, "get", "intruder"); err != nil || strings.Contains(out, "intruder") {
		t.Fatalf("a refused client's write is there: %v %s", err, out)
	}
	// A peer without the cluster's certificate cannot join either: a plain
	// TCP connection to the peer port gets no HTTP answer.
	if out, err := run(ctx, "ip", "netns", "exec", lab.ns[0], "curl", "-sS", "--max-time", "3", "--cacert", pki.CACert(), "https://"+net.JoinHostPort(lab.ip(1).String(), "2380")+"/members"); err == nil {
		t.Errorf("the peer port answered a client without a certificate: %s", out)
	}

	// Fencing's primitive: partition member 3 after it has seen v1, write
	// v2 through the majority, then read on member 3.
	if out, err := cli(0).run(ctx, "put", "leader", "v1"); err != nil {
		t.Fatalf("put v1: %v %s", err, out)
	}
	seen := time.Now().Add(10 * time.Second)
	for {
		out, err := cli(2).run(ctx, "get", "--consistency=s", "--print-value-only", "leader")
		if err == nil && out == "v1" {
			break
		}
		if time.Now().After(seen) {
			t.Fatalf("member 3 never saw v1: %v %s", err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	lab.partition(2)
	if out, err := cli(0).run(ctx, "put", "leader", "v2"); err != nil {
		t.Fatalf("the majority could not write v2: %v %s", err, out)
	}
	out, err = cli(2).run(ctx, "get", "--consistency=l", "--print-value-only", "leader")
	if err == nil {
		t.Fatalf("a linearizable read on the partitioned member succeeded: %q", out)
	}
	t.Logf("linearizable read on the partitioned member: %v (%s)", err, out)
	out, err = cli(2).run(ctx, "get", "--consistency=s", "--print-value-only", "leader")
	if err != nil || out != "v1" {
		t.Fatalf("serializable read on the partitioned member: %v %q, want the stale v1", err, out)
	}
	t.Logf("serializable read on the partitioned member: %q while the majority holds v2", out)
	if out, err := cli(0).run(ctx, "get", "--consistency=l", "--print-value-only", "leader"); err != nil || out != "v2" {
		t.Fatalf("linearizable read on the majority: %v %q, want v2", err, out)
	}
}

// syncBuffer is a bytes.Buffer the member's output goroutines and the
// test may share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) tail(n int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.b.Bytes()
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
