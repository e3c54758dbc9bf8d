package etcd

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgshield/pgshield/internal/testutil/pgtest"
	"github.com/pgshield/pgshield/internal/tlsconf"
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

// realCluster is three members running in a netlab.
type realCluster struct {
	lab  *netlab
	c    Cluster
	pki  PKI
	root string
	logs []*syncBuffer
	// tlsArgs are etcdctl's flags for the client certificate.
	tlsArgs []string
}

// cli is etcdctl in member i's namespace, talking to member i only.
func (r *realCluster) cli(i int) etcdctl {
	return etcdctl{ns: r.lab.ns[i], endpoint: ClientURL(r.c.Members[i]), args: r.tlsArgs}
}

// skipUnlessReal skips unless the real tests can run here.
func skipUnlessReal(t *testing.T) string {
	t.Helper()
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
	return bin
}

// startRealCluster starts three members, each in its namespace, and waits
// (60 s at most) until all three answer a linearizable health check over
// TLS with the client certificate. Everything stops at the test's end.
func startRealCluster(t *testing.T, bin string) *realCluster {
	lab := newNetlab(t, 3)
	r := &realCluster{lab: lab, c: Cluster{Token: "pgshield-test-" + lab.suffix}, root: t.TempDir(), logs: make([]*syncBuffer, 3)}
	for i := range 3 {
		r.c.Members = append(r.c.Members, Member{Name: fmt.Sprintf("m%d", i+1), IP: lab.ip(i)})
	}
	r.pki = PKI{Dir: filepath.Join(r.root, "pki")}
	if err := r.pki.Generate(r.c, time.Now()); err != nil {
		t.Fatal(err)
	}
	r.tlsArgs = []string{"--cacert=" + r.pki.CACert(), "--cert=" + r.pki.ClientCert(), "--key=" + r.pki.ClientKey()}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		wg.Wait() // every member stopped before the namespaces go
		if t.Failed() {
			for i, l := range r.logs {
				if l != nil {
					t.Logf("member m%d log (tail):\n%s", i+1, l.tail(3000))
				}
			}
		}
	})
	for i, m := range r.c.Members {
		dataDir := filepath.Join(r.root, "data-"+m.Name)
		if err := os.Mkdir(dataDir, 0o700); err != nil {
			t.Fatal(err)
		}
		args, err := Args(r.c, m.Name, r.pki, dataDir)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range args {
			if strings.Contains(a, "PRIVATE KEY") {
				t.Fatalf("key material in argv: %q", a)
			}
		}
		r.logs[i] = &syncBuffer{}
		s := &Supervisor{Bin: bin, Prefix: []string{"ip", "netns", "exec", lab.ns[i]}, Args: args, Dir: dataDir, Log: r.logs[i], StopGrace: 5 * time.Second}
		wg.Add(1)
		go func() { defer wg.Done(); _ = s.Run(ctx) }()
	}

	all := etcdctl{ns: lab.ns[0], endpoint: strings.Join(r.c.Endpoints(), ","), args: r.tlsArgs}
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
	return r
}

func TestRealThreeMembersTLS(t *testing.T) {
	bin := skipUnlessReal(t)
	ctx := context.Background()
	r := startRealCluster(t, bin)
	lab, c, pki, root := r.lab, r.c, r.pki, r.root
	cli := r.cli
	// A second CA pair, to show a certificate from elsewhere is refused.
	other := PKI{Dir: filepath.Join(root, "other")}
	if err := other.Generate(c, time.Now()); err != nil {
		t.Fatal(err)
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
		// A member's peer certificate is no client: the client port trusts
		// only the client CA.
		"a peer certificate": {ns: lab.ns[0], endpoint: ClientURL(c.Members[0]), args: []string{"--cacert=" + pki.CACert(), "--cert=" + pki.PeerCert("m1"), "--key=" + pki.PeerKey("m1")}},
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

	r.peerAttacks(t)

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
	// If member 3 led, the other two elect a new leader first; on a loaded
	// machine (the CI suite runs beside this) that can outlast one
	// etcdctl timeout: a few attempts, bounded.
	for attempt := 1; ; attempt++ {
		out, err := cli(0).run(ctx, "put", "leader", "v2")
		if err == nil {
			break
		}
		if attempt == 5 {
			t.Fatalf("the majority could not write v2 in %d attempts: %v %s", attempt, err, out)
		}
		t.Logf("the majority's write, attempt %d: %v", attempt, err)
	}
	out, err := cli(2).run(ctx, "get", "--consistency=l", "--print-value-only", "leader")
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

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
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

// peerAttacks presents certificates to member 2's peer port (raft's HTTP
// endpoints: /raft/probing, and /members) the way a fourth etcd joining
// would, and checks that only a member's own peer certificate, from its
// own address, gets an answer, and that each refusal is etcd's for the
// reason meant (its log says why).
func (r *realCluster) peerAttacks(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	pki := r.pki
	// A certificate from the peer CA itself, on the attacker's own address,
	// but not issued as a peer (CN): what a mis-issued or second-purpose
	// certificate of that CA would be.
	intruder := filepath.Join(r.root, "intruder")
	peerCA := readCert(t, pki.PeerCACert())
	kb, err := os.ReadFile(pki.peerCAKey())
	if err != nil {
		t.Fatal(err)
	}
	caKey, err := tlsconf.ParseKey(kb)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, ok := caKey.(*ecdsa.PrivateKey)
	if !ok {
		t.Fatalf("peer CA key is %T", caKey)
	}
	wrongCN := leafSpec{CN: "m4", IPs: []net.IP{r.lab.ip(2)}, Server: true}
	if err := pki.issue(peerCA, ecKey, wrongCN, filepath.Join(intruder, "peer.crt"), filepath.Join(intruder, "peer.key"), time.Now()); err != nil {
		t.Fatal(err)
	}

	target := "https://" + net.JoinHostPort(r.lab.ip(1).String(), strconv.Itoa(PeerPort))
	curl := func(from int, cert, key string, path string) (string, error) {
		args := []string{"netns", "exec", r.lab.ns[from], "curl", "-sS", "--http1.1", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3",
			"--cacert", pki.PeerCACert()}
		if cert != "" {
			args = append(args, "--cert", cert, "--key", key)
		}
		return run(ctx, "ip", append(args, target+path)...)
	}
	paths := []string{"/raft/probing", "/members"}
	// The control: member 1's peer certificate from member 1's address.
	for _, path := range paths {
		if out, err := curl(0, pki.PeerCert("m1"), pki.PeerKey("m1"), path); err != nil || out != "200" {
			t.Fatalf("member 1 on member 2's peer port %s: %v %s", path, err, out)
		}
	}
	cases := []struct {
		name      string
		from      int
		cert, key string
		// why is what member 2 logs about the refused connection.
		why string
	}{
		{"the client certificate (Patroni's and pgshield's)", 0, pki.ClientCert(), pki.ClientKey(), "unknown authority"},
		{"member 1's client-port certificate (client CA)", 0, pki.ServerCert("m1"), pki.ServerKey("m1"), "unknown authority"},
		// etcd 3.4's --peer-cert-allowed-cn check says only this; the
		// certificate differs from a member's in its CN alone (same CA, its
		// source address as its IP SAN).
		{"a peer-CA certificate with another CN", 2, filepath.Join(intruder, "peer.crt"), filepath.Join(intruder, "peer.key"), "client certificate authentication failed"},
		{"member 1's peer certificate from member 3's address", 2, pki.PeerCert("m1"), pki.PeerKey("m1"), "not " + r.lab.ip(2).String()},
		{"no certificate", 0, "", "", "didn't provide a certificate"},
	}
	for _, tc := range cases {
		before := strings.Count(r.logs[1].String(), tc.why)
		for _, path := range paths {
			out, err := curl(tc.from, tc.cert, tc.key, path)
			if err == nil || out == "200" {
				t.Errorf("%s: member 2's peer port answered %s: %s (%v)", tc.name, path, out, err)
			}
		}
		// The log line may come a moment after curl gives up.
		deadline := time.Now().Add(3 * time.Second)
		for strings.Count(r.logs[1].String(), tc.why) <= before && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if strings.Count(r.logs[1].String(), tc.why) <= before {
			var rejected []string
			for _, l := range strings.Split(r.logs[1].String(), "\n") {
				if strings.Contains(l, "rejected") || strings.Contains(l, "TLS handshake") {
					rejected = append(rejected, l)
				}
			}
			t.Errorf("%s: member 2 logged no refusal saying %q; its refusals:\n%s", tc.name, tc.why, strings.Join(rejected, "\n"))
		} else {
			log := r.logs[1].String()
			i := strings.LastIndex(log, tc.why)
			line := log[strings.LastIndex(log[:i], "\n")+1:]
			line, _, _ = strings.Cut(line, "\n")
			t.Logf("%s: refused by member 2's peer port: %s", tc.name, line)
		}
	}
}
