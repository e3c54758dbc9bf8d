package link

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshield/pgshield/internal/cluster/etcd"
	"github.com/pgshield/pgshield/internal/cluster/patroni"
	"github.com/pgshield/pgshield/internal/testutil/localkms"
	"github.com/pgshield/pgshield/internal/testutil/pgtest"
)

// daemonNode is one whole pgshield server (`pgshield init --ha` and `up`)
// in its own network namespace.
type daemonNode struct {
	name, ns, ip, dir string
	bin               string
}

// cli runs the pgshield binary inside the node's namespace.
func (n *daemonNode) cli(ctx context.Context, limit time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.ns, n.bin}, append(args, "--data-dir", n.dir)...)...)
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func (n *daemonNode) daemonLog(max int) string {
	b, _ := os.ReadFile(filepath.Join(n.dir, "log", "pgshield.log"))
	// Without the refused logins of a writer knocking on a standby.
	var keep [][]byte
	for _, line := range bytes.Split(b, []byte("\n")) {
		if !bytes.Contains(line, []byte("Refused a login")) && !bytes.Contains(line, []byte("INFO: no action.")) &&
			!bytes.Contains(line, []byte("not the healthiest node")) && !bytes.Contains(line, []byte("Role lookup failed")) {
			keep = append(keep, line)
		}
	}
	b = bytes.Join(keep, []byte("\n"))
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(b)
}

// pid is the daemon's, 0 if none.
func (n *daemonNode) pid() int {
	b, err := os.ReadFile(filepath.Join(n.dir, "run", "pgshield.pid"))
	if err != nil {
		return 0
	}
	p, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return p
}

// postmaster is the node's postmaster, or 0. Found by its -D argument:
// its postmaster.pid is on the volume, mounted in the daemon's mount
// namespace (ip netns exec makes one), not the test's; and Patroni
// detaches the postmaster, so it is no descendant of the daemon.
func (n *daemonNode) postmaster() int {
	for _, p := range procsOf(filepath.Join(n.dir, "volume", "data", "pgdata")) {
		if alive(p) {
			return p
		}
	}
	return 0
}

// kill9 kills the whole node at once: the daemon, Patroni, PostgreSQL.
func (n *daemonNode) kill9() {
	var pids []int
	if p := n.pid(); p > 1 && alive(p) {
		pids = append(pids, p)
		pids = append(pids, descendants(p)...)
	}
	if pm := n.postmaster(); pm > 0 {
		pids = append(pids, pm)
		pids = append(pids, descendants(pm)...)
	}
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, p := range pids {
		for alive(p) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// sql runs sql as the superuser on the node's private socket (root may;
// pg_hba trusts the socket, which only root and postgres can reach).
func (n *daemonNode) sql(ctx context.Context, sql string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/usr/bin/psql", "-X", "-qAt", "-v", "ON_ERROR_STOP=1",
		"-h", filepath.Join(n.dir, "run", "pg"), "-p", "5432", "-U", "postgres", "-d", "postgres")
	cmd.Env = []string{"PATH=/usr/bin:/bin", "PGCONNECT_TIMEOUT=3"}
	cmd.Dir = "/"
	cmd.WaitDelay = 2 * time.Second
	cmd.Stdin = strings.NewReader(sql)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return strings.TrimSpace(out.String()), err
}

// cleanup deletes the server whatever state it is in: stopped (down),
// what is left killed, then delete; if delete cannot finish, the
// mount, loop device and system key file are removed by hand (as the
// e2e harness does for a killed server).
func (n *daemonNode) cleanup(t *testing.T) {
	ctx := context.Background()
	if n.pid() > 1 && alive(n.pid()) {
		if out, err := n.cli(ctx, 90*time.Second, "down", "--timeout", "60s"); err != nil {
			t.Logf("%s: down: %v\n%s", n.name, err, out)
		}
	}
	n.kill9()
	if out, err := n.cli(ctx, 2*time.Minute, "delete", "--yes", "--delete-backups"); err == nil {
		return
	} else {
		t.Logf("%s: delete: %v\n%s", n.name, err, out)
	}
	_ = exec.Command("umount", "-l", filepath.Join(n.dir, "volume")).Run()
	if out, err := exec.Command("losetup", "--noheadings", "--output", "NAME", "--associated", filepath.Join(n.dir, "storage", "volume.img")).Output(); err == nil {
		for _, dev := range strings.Fields(string(out)) {
			_ = exec.Command("losetup", "-d", dev).Run()
		}
	}
	if b, err := os.ReadFile(filepath.Join(n.dir, "pgshield.json")); err == nil {
		var c struct {
			ServerID string `json:"server_id"`
		}
		if json.Unmarshal(b, &c) == nil && c.ServerID != "" {
			_ = os.Remove(filepath.Join("/etc/pgshield/keys", c.ServerID+".key"))
			_ = os.Remove(filepath.Join("/etc/pgshield/keys", c.ServerID+".owner"))
		}
	}
}

// daemonBase makes the test's base directory (0711: postgres runs the
// pre_promote hook, so the binary must be reachable) and builds the
// pgshield binary into it.
func daemonBase(t *testing.T, prefix string) (base, bin string) {
	t.Helper()
	base, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o711); err != nil {
		t.Fatal(err)
	}
	bin = filepath.Join(base, "pgshield")
	gobin := "go"
	if _, err := exec.LookPath("go"); err != nil {
		gobin = "/usr/local/go/bin/go"
	}
	if out, err := exec.Command(gobin, "build", "-o", bin, "../../../cmd/pgshield").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return base, bin
}

// runEtcdMembers runs etcd's three members with `pgshield cluster etcd`,
// each in its namespace from its `cluster init` directory, until the test
// ends, and returns their client addresses once all three are healthy.
func runEtcdMembers(t *testing.T, l *lab, base, bin, matDir string, pki etcd.PKI) []string {
	t.Helper()
	var endpoints, urls []string
	type member struct {
		cmd  *exec.Cmd
		log  *syncBuf
		done chan struct{}
	}
	var members []member
	t.Cleanup(func() {
		for _, m := range members {
			_ = m.cmd.Process.Signal(syscall.SIGTERM)
		}
		for i, m := range members {
			select {
			case <-m.done:
			case <-time.After(20 * time.Second):
				_ = m.cmd.Process.Kill()
				<-m.done
			}
			if t.Failed() {
				t.Logf("etcd e%d (cluster etcd) log (tail):\n%s", i+1, m.log.tail(1500))
			}
		}
	})
	for _, name := range []string{"e1", "e2", "e3"} {
		m := member{log: &syncBuf{}, done: make(chan struct{})}
		m.cmd = exec.Command("ip", "netns", "exec", l.ns[name], bin, "cluster", "etcd",
			"--dir", filepath.Join(matDir, "etcd-member-"+name), "--data-dir", filepath.Join(base, "etcd-"+name))
		m.cmd.Stdout, m.cmd.Stderr = m.log, m.log
		if err := m.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { _ = m.cmd.Wait(); close(m.done) }()
		members = append(members, m)
		endpoints = append(endpoints, net.JoinHostPort(l.ips[name], "2379"))
		urls = append(urls, "https://"+net.JoinHostPort(l.ips[name], "2379"))
	}
	waitFor(t, "etcd (cluster etcd) healthy", 60*time.Second, nil, func() (bool, string) {
		out, err := sh(context.Background(), "ip", "netns", "exec", l.ns["e1"], "etcdctl", "--endpoints="+strings.Join(urls, ","), "--dial-timeout=2s", "--command-timeout=4s",
			"--cacert="+pki.CACert(), "--cert="+pki.ClientCert(), "--key="+pki.ClientKey(), "endpoint", "health")
		return err == nil && strings.Count(out, "is healthy") == 3, out
	})
	// As Debian's etcd user, not root.
	for _, name := range []string{"e1", "e2", "e3"} {
		pids := procsOf("--data-dir=" + filepath.Join(base, "etcd-"+name))
		if len(pids) != 1 {
			t.Fatalf("etcd member %s: processes %v", name, pids)
		}
		if st, err := os.Stat(fmt.Sprintf("/proc/%d", pids[0])); err != nil || st.Sys().(*syscall.Stat_t).Uid == 0 {
			t.Errorf("etcd member %s runs as root (%v)", name, err)
		}
	}
	return endpoints
}

// gatewayConfig is a client's connection to the given gateways (a libpq
// multi-host string), dialled from inside namespace ns.
func gatewayConfig(t *testing.T, ns string, ips []string, password, rootCA, extra string) *pgx.ConnConfig {
	t.Helper()
	ports := slices.Repeat([]string{"5432"}, len(ips))
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%s dbname=postgres user=pgadmin sslmode=verify-full sslrootcert=%s channel_binding=require connect_timeout=3 %s",
		strings.Join(ips, ","), strings.Join(ports, ","), rootCA, extra))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Password = password
	cfg.DialFunc = func(ctx context.Context, _, addr string) (net.Conn, error) { return dialIn(ns, addr) }
	return cfg
}

// TestRealHADaemons runs two whole pgshield servers as a cluster: `init
// --ha` on the first node, `init --ha` with join on the second, `up` on
// both. Each daemon runs Patroni in place of the postmaster, the node
// link, the promotion socket and the fence in front of its gateway. A
// writer goes through both gateways with one multi-host string
// (verify-full, channel_binding=require, target_session_attrs=read-write);
// the first node is killed whole (kill -9); the second promotes after
// its daemon allowed it, its gateway starts taking logins, and no
// acknowledged row is lost. The killed node then comes back with `up` and
// rejoins as the standby, its gateway refusing logins.
func TestRealHADaemons(t *testing.T) {
	if os.Getenv(pgtest.EnvVar) != "1" {
		t.Skip("needs Patroni, etcd, PostgreSQL and network namespaces as root: set PGSHIELD_E2E=1")
	}
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	for _, p := range []string{"/usr/bin/patroni", "/usr/bin/etcd", "/usr/bin/etcdctl", "/usr/lib/postgresql/15/bin/postgres", "/usr/bin/unshare"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("%s is not installed", p)
		}
	}
	hosts := map[string]string{"e1": "10.77.40.11", "e2": "10.77.40.12", "e3": "10.77.40.13", "n1": "10.77.40.21", "n2": "10.77.40.22", "c1": "10.77.40.31", "k1": "10.77.40.51"}
	l := newLab(t, hosts)
	base, bin := daemonBase(t, "pgsh-had-")
	ctx := context.Background()
	// The cluster's material from `cluster init`, and etcd's members run
	// by `cluster etcd` from their directories, as the README's walkthrough
	// does. (Names from internal/cluster/material, which imports this
	// package.)
	timings := patroni.TestTimings
	matDir := filepath.Join(base, "cluster")
	if out, err := exec.Command(bin, "cluster", "init", "--scope", "pgsh-"+l.suffix, "--out", matDir,
		"--node", "n1="+hosts["n1"], "--node", "n2="+hosts["n2"],
		"--etcd", "e1="+hosts["e1"], "--etcd", "e2="+hosts["e2"], "--etcd", "e3="+hosts["e3"],
		"--ttl", strconv.Itoa(timings.TTL), "--loop-wait", strconv.Itoa(timings.LoopWait), "--retry-timeout", strconv.Itoa(timings.RetryTimeout),
		// Two nodes: with synchronous_mode_strict the survivor of the
		// kill would take no write until the killed node is back.
		"--async-when-alone").CombinedOutput(); err != nil {
		t.Fatalf("cluster init: %v\n%s", err, out)
	}
	if err := os.Chmod(matDir, 0o711); err != nil { // etcd's user reaches its member's directory
		t.Fatal(err)
	}
	pki := etcd.PKI{Dir: filepath.Join(matDir, "etcd-pki")}
	endpoints := runEtcdMembers(t, l, base, bin, matDir, pki)
	// One customer-managed key wraps both nodes' data keys; the KMS has a
	// namespace of its own, which both nodes reach.
	kms := localkms.StartIn(t, localkms.Elsewhere{Prefix: []string{"ip", "netns", "exec", l.ns["k1"]}, Host: hosts["k1"],
		Dial: func(_ context.Context, _, addr string) (net.Conn, error) { return dialIn(l.ns["k1"], addr) }}, 4599)
	kms.SetEnv(t) // the daemons inherit the fake credentials
	keyID, _ := kms.CreateKey(t)

	names := []string{"n1", "n2"}
	var nodes []*daemonNode
	t.Cleanup(func() {
		for _, n := range nodes {
			if t.Failed() {
				t.Logf("%s daemon log (tail):\n%s", n.name, n.daemonLog(20000))
				if n.pid() > 1 && alive(n.pid()) {
					// In the daemon's mount namespace, where the volume is.
					out, _ := exec.Command("nsenter", "-t", strconv.Itoa(n.pid()), "-m", "-n", "--", n.bin, "audit", "search",
						"--event", "postgres.log", "--limit", "40", "--data-dir", n.dir).CombinedOutput()
					t.Logf("%s PostgreSQL log (last 40):\n%s", n.name, out)
				}
			}
			n.cleanup(t)
		}
	})
	password := "hA-" + rand.Text()[:12]
	pwFile := filepath.Join(base, "admin.pw")
	if err := os.WriteFile(pwFile, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i, name := range names {
		n := &daemonNode{name: name, ns: l.ns[name], ip: hosts[name], dir: filepath.Join(base, name), bin: bin}
		files := filepath.Join(matDir, "node-"+name)
		clFile := filepath.Join(files, "cluster.json")
		nodes = append(nodes, n)
		if i > 0 {
			// Joining without secrets.json: n1 may give them once.
			if out, err := nodes[0].cli(ctx, time.Minute, "cluster", "allow-join", name, "--for", "5m"); err != nil {
				t.Fatalf("cluster allow-join %s: %v\n%s", name, err, out)
			}
		}
		if out, err := n.cli(ctx, 3*time.Minute, "init", "--listen", n.ip+":5432", "--admin-password-file", pwFile, "--storage-size", "1GiB",
			"--ha", clFile, "--ha-files", files, "--key-uri", kms.KeyURI(keyID)); err != nil {
			t.Fatalf("%s: init --ha: %v\n%s", name, err, out)
		}
		if i > 0 {
			// Joining, it had no secrets.json: n1 gave them over the link.
			if _, err := os.Stat(filepath.Join(files, "secrets.json")); err == nil {
				t.Fatalf("cluster init gave %s, joining, the secrets as a file", name)
			}
			if !strings.Contains(nodes[0].daemonLog(1<<22), "gave the cluster's secrets to a joining peer") {
				t.Errorf("n1 did not log giving %s the secrets", name)
			}
		}
		if out, err := n.cli(ctx, 4*time.Minute, "up", "--timeout", "3m"); err != nil {
			t.Fatalf("%s: up: %v\n%s\n%s", name, err, out, n.daemonLog(6000))
		}
		// Default-deny: the client's address is let in on the primary;
		// the second node gets the rule from the cluster.
		// (Just after up, Patroni may not have promoted the first node
		// yet: it starts existing data as a replica.)
		if i == 0 {
			waitFor(t, "the firewall rule made on n1", time.Minute, nil, func() (bool, string) {
				out, err := n.cli(ctx, time.Minute, "firewall-rule", "create", "--name", "clients", "--start-ip-address", hosts["c1"], "--end-ip-address", hosts["c1"])
				return err == nil, out
			})
		}
		t.Logf("%s: up", name)
	}
	n1, n2 := nodes[0], nodes[1]

	// Both gateways' CAs, for verify-full against whichever answers.
	var bundle []byte
	for _, n := range nodes {
		b, err := os.ReadFile(filepath.Join(n.dir, "tls", "ca.crt"))
		if err != nil {
			t.Fatal(err)
		}
		bundle = append(bundle, b...)
	}
	rootCA := filepath.Join(base, "gateways-ca.crt")
	if err := os.WriteFile(rootCA, bundle, 0o600); err != nil {
		t.Fatal(err)
	}
	both := []string{n1.ip, n2.ip}
	client := l.ns["c1"]

	streaming := func(p, s *daemonNode) (bool, string) {
		out, err := p.sql(ctx, "SELECT application_name || ' ' || state || ' ' || sync_state FROM pg_catalog.pg_stat_replication")
		return err == nil && strings.Contains(out, s.name+" streaming sync"), fmt.Sprintf("%q %v", out, err)
	}
	waitFor(t, "n2 streaming as n1's synchronous standby", 3*time.Minute, nil, func() (bool, string) { return streaming(n1, n2) })
	// Patroni promotes only the member its /sync key names, which it
	// writes after the standby is seen synchronous.
	waitFor(t, "Patroni naming n2 the synchronous standby", time.Minute, nil, func() (bool, string) { return patroniRole(n2, 8102, "n2", "sync_standby") })
	showCluster(t, n1, map[string]string{"n1": "leader", "n2": "sync_standby"}, true)
	showCluster(t, n2, map[string]string{"n1": "leader", "n2": "sync_standby"}, false)

	waitFor(t, "n2 holding the cluster's firewall rule", 30*time.Second, nil, func() (bool, string) { return hasRule(n2, "clients", hosts["c1"]) })
	// The standby's gateway refuses logins (57P01: not the confirmed
	// primary), the primary's takes them.
	if conn, err := pgx.ConnectConfig(ctx, gatewayConfig(t, client, []string{n2.ip}, password, rootCA, "")); err == nil {
		conn.Close(ctx)
		t.Fatal("n2's gateway took a login while n2 is the standby")
	} else if pe := (*pgconn.PgError)(nil); !errors.As(err, &pe) || pe.Code != "57P01" {
		t.Fatalf("n2's gateway: %v; want 57P01", err)
	}
	var conn *pgx.Conn
	waitFor(t, "a login through n1's gateway", time.Minute, nil, func() (bool, string) {
		var err error
		conn, err = pgx.ConnectConfig(ctx, gatewayConfig(t, client, []string{n1.ip}, password, rootCA, ""))
		return err == nil, fmt.Sprint(err)
	})
	if _, err := conn.Exec(ctx, "CREATE TABLE public.ledger (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())"); err != nil {
		t.Fatalf("ledger: %v", err)
	}
	// The cluster's roles are not the administrator's: it may not become
	// them, grant them, change them, or read the server's files as the
	// rewind role may.
	for _, q := range []string{"SET ROLE pgshield_rewind", "SET ROLE pgshield_replication", "GRANT pgshield_rewind TO pgadmin",
		"ALTER ROLE pgshield_replication PASSWORD 'x-x-x-x-x-x'", "ALTER ROLE pgshield_rewind NOLOGIN",
		"SELECT pg_catalog.pg_read_binary_file('global/pg_control')", "SET SESSION AUTHORIZATION pgshield_rewind"} {
		if _, err := conn.Exec(ctx, q); err == nil {
			t.Errorf("the administrator ran %q", q)
		}
	}
	conn.Close(ctx)

	// No TCP listener where PostgreSQL runs, on either node.
	for _, n := range nodes {
		pm := n.postmaster()
		if pm == 0 {
			t.Fatalf("%s: no postmaster", n.name)
		}
		if ls := tcpListeners(t, pm); len(ls) != 0 {
			t.Errorf("%s: TCP listeners in PostgreSQL's namespace: %v", n.name, ls)
		}
		pmNS, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pm))
		dNS, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", n.pid()))
		if pmNS == dNS {
			t.Errorf("%s: PostgreSQL runs in the daemon's network namespace", n.name)
		}
	}

	// The writer, through both gateways at once.
	w := &gatewayWriter{cfg: func() *pgx.ConnConfig {
		return gatewayConfig(t, client, both, password, rootCA, "target_session_attrs=read-write")
	}}
	wctx, wcancel := context.WithCancel(ctx)
	wdone := make(chan struct{})
	go func() { defer close(wdone); w.run(wctx) }()
	stopWriter := func() {
		wcancel()
		<-wdone
	}
	defer stopWriter()
	waitFor(t, "50 rows acknowledged through the gateways", time.Minute, nil, func() (bool, string) {
		return w.count() >= 50, fmt.Sprintf("%d rows, last error %v", w.count(), w.lastErr())
	})

	killedAt := time.Now()
	n1.kill9()
	w.markKill(killedAt)
	t.Logf("n1 killed (daemon, Patroni and PostgreSQL) at %d rows", w.count())
	waitFor(t, "the first acknowledged write after the kill", 90*time.Second, nil, func() (bool, string) {
		return !w.firstAfterKill().IsZero(), fmt.Sprintf("last error %v", w.lastErr())
	})
	failover := w.firstAfterKill().Sub(killedAt)
	t.Logf("kill -9 of n1 -> first write acknowledged through n2's gateway after %.2f s", failover.Seconds())
	at := w.count()
	waitFor(t, "20 more rows", time.Minute, nil, func() (bool, string) { return w.count() >= at+20, fmt.Sprint(w.lastErr()) })
	stopWriter()
	if !strings.Contains(n2.daemonLog(1<<20), "Promotion allowed") {
		t.Errorf("n2's daemon did not answer Patroni's pre_promote hook:\n%s", n2.daemonLog(4000))
	}
	acked := w.acked()
	if lost := missingOn(t, ctx, n2, acked); len(lost) > 0 {
		t.Fatalf("%d of %d acknowledged rows missing on n2: %v", len(lost), len(acked), lost[:min(len(lost), 20)])
	}
	t.Logf("HA-DAEMON-FIGURES failover=%.2fs rows=%d lost=0", failover.Seconds(), len(acked))

	// n1 comes back with up: Patroni rewinds it and it follows n2; its
	// gateway refuses logins (not the confirmed primary).
	if out, err := n1.cli(ctx, 4*time.Minute, "up", "--timeout", "3m"); err != nil {
		t.Fatalf("n1: up after kill -9: %v\n%s\n%s", err, out, n1.daemonLog(6000))
	}
	waitFor(t, "n1 streaming as n2's synchronous standby", 3*time.Minute, nil, func() (bool, string) { return streaming(n2, n1) })
	waitFor(t, "Patroni naming n1 the synchronous standby", time.Minute, nil, func() (bool, string) { return patroniRole(n1, 8101, "n1", "sync_standby") })
	if conn, err := pgx.ConnectConfig(ctx, gatewayConfig(t, client, []string{n1.ip}, password, rootCA, "")); err == nil {
		conn.Close(ctx)
		t.Fatal("n1's gateway took a login as the standby")
	} else if pe := (*pgconn.PgError)(nil); !errors.As(err, &pe) || pe.Code != "57P01" {
		t.Fatalf("n1's gateway as the standby: %v; want 57P01", err)
	}
	if lost := missingOn(t, ctx, n1, acked); len(lost) > 0 {
		t.Fatalf("%d acknowledged rows missing on the rejoined n1: %v", len(lost), lost[:min(len(lost), 20)])
	}

	// Switchover back to n1 (the synchronous standby, chosen by default)
	// with the writer running: n2 steps down, n1's gateway takes the
	// writes, nothing acknowledged is lost.
	if out, err := n2.cli(ctx, time.Minute, "cluster", "switchover", "--to", "n9"); err == nil || !strings.Contains(out, "not a member") {
		t.Fatalf("switchover to a node that is no member: %v\n%s", err, out)
	}
	if out, err := n2.cli(ctx, time.Minute, "cluster", "failover"); err == nil || !strings.Contains(out, "--to is required") {
		t.Fatalf("failover without --to: %v\n%s", err, out)
	}
	w2 := &gatewayWriter{cfg: w.cfg, next: w.acked()[len(acked)-1] + 1_000_000}
	wctx2, wcancel2 := context.WithCancel(ctx)
	wdone2 := make(chan struct{})
	go func() { defer close(wdone2); w2.run(wctx2) }()
	defer func() { wcancel2(); <-wdone2 }()
	waitFor(t, "20 rows through n2's gateway", time.Minute, nil, func() (bool, string) { return w2.count() >= 20, fmt.Sprint(w2.lastErr()) })
	askedAt := time.Now()
	w2.markKill(askedAt)
	out, err := n2.cli(ctx, 3*time.Minute, "cluster", "switchover")
	if err != nil || !strings.Contains(out, "to n1") {
		t.Fatalf("cluster switchover: %v\n%s", err, out)
	}
	t.Logf("cluster switchover: %s", strings.TrimSpace(out))
	waitFor(t, "n2 streaming as n1's synchronous standby after the switchover", 3*time.Minute, nil, func() (bool, string) { return streaming(n1, n2) })
	at2 := w2.count()
	waitFor(t, "20 more rows after the switchover", time.Minute, nil, func() (bool, string) { return w2.count() >= at2+20, fmt.Sprint(w2.lastErr()) })
	wcancel2()
	<-wdone2
	// The writes stopped while the primary changed: the longest gap
	// between two acknowledged commits after the switchover was asked.
	t.Logf("HA-DAEMON-SWITCHOVER longest gap between acknowledged writes %.2f s", w2.longestGapAfter(askedAt).Seconds())
	if lost := missingOn(t, ctx, n1, append(acked, w2.acked()...)); len(lost) > 0 {
		t.Fatalf("%d acknowledged rows missing after the switchover: %v", len(lost), lost[:min(len(lost), 20)])
	}
	waitFor(t, "Patroni naming n2 the synchronous standby after the switchover", time.Minute, nil, func() (bool, string) { return patroniRole(n1, 8101, "n2", "sync_standby") })
	showCluster(t, n1, map[string]string{"n1": "leader", "n2": "sync_standby"}, true)
	showCluster(t, n2, map[string]string{"n1": "leader", "n2": "sync_standby"}, false)

	// The network policy is the cluster's: a rule made on the primary is
	// on the standby within about a second, and so is its removal; the
	// standby refuses to change it; a row changed in PostgreSQL by anyone
	// but a pgshield node (here the superuser, on the primary's socket) is
	// applied nowhere.
	if out, err := n2.cli(ctx, time.Minute, "firewall-rule", "create", "--name", "other", "--start-ip-address", "10.77.40.40", "--end-ip-address", "10.77.40.40"); err == nil || !strings.Contains(out, "standby") {
		t.Fatalf("a rule made on the standby: %v\n%s", err, out)
	}
	for _, op := range []struct {
		args []string
		want bool
	}{
		{[]string{"firewall-rule", "create", "--name", "extra", "--start-ip-address", "10.77.40.41", "--end-ip-address", "10.77.40.41"}, true},
		{[]string{"firewall-rule", "delete", "--name", "extra"}, false},
	} {
		if out, err := n1.cli(ctx, time.Minute, op.args...); err != nil {
			t.Fatalf("%v on the primary: %v\n%s", op.args, err, out)
		}
		made := time.Now()
		waitFor(t, fmt.Sprintf("%v reaching n2", op.args), 30*time.Second, nil, func() (bool, string) {
			ok, s := hasRule(n2, "extra", "10.77.40.41")
			return ok == op.want, s
		})
		t.Logf("HA-DAEMON-SHARED %s on n1 -> in force on n2 after %.2f s", op.args[1], time.Since(made).Seconds())
	}
	if out, err := n1.sql(ctx, "UPDATE pgshield.cluster_config SET version = version + 5, body = pg_catalog.convert_to(pg_catalog.replace(pg_catalog.convert_from(body, 'UTF8'), '"+hosts["c1"]+"', '10.77.40.42'), 'UTF8')"); err != nil {
		t.Fatalf("tampering: %v %s", err, out)
	}
	time.Sleep(3 * time.Second)
	for _, n := range nodes {
		if ok, s := hasRule(n, "clients", hosts["c1"]); !ok {
			t.Errorf("%s applied a forged policy: %s", n.name, s)
		}
	}
	if !strings.Contains(n2.daemonLog(1<<20), "MAC does not match") {
		t.Errorf("n2 did not say why it refused the forged policy")
	}
	checkClusterParameter(t, ctx, n1, n2, l.ns["e1"], etcdctlArgs(pki, endpoints))

	checkSharedParams(t, ctx, n1, n2, client, password, rootCA)
	// Each node's audit chain head is anchored in etcd; audit verify
	// --cluster finds the anchored record in the node's own log (read in
	// the daemon's mount namespace, where the volume is).
	for _, n := range nodes {
		waitFor(t, n.name+"'s audit chain anchored and verified", time.Minute, nil, func() (bool, string) {
			out, err := exec.Command("nsenter", "-t", strconv.Itoa(n.pid()), "-m", "-n", "--", n.bin, "audit", "verify", "--cluster",
				"-o", "json", "--data-dir", n.dir).CombinedOutput()
			var res struct {
				AnchorOK bool `json:"anchor_ok"`
				Anchors  []struct{ Authentic bool }
			}
			if err != nil || json.Unmarshal(out, &res) != nil || !res.AnchorOK || len(res.Anchors) != 2 || !res.Anchors[0].Authentic || !res.Anchors[1].Authentic {
				return false, fmt.Sprintf("%v %s", err, out)
			}
			return true, ""
		})
	}

	var eps []string
	for _, e := range endpoints {
		eps = append(eps, "https://"+e)
	}
	etcdctl := func(args ...string) (string, error) {
		return sh(ctx, "ip", append([]string{"netns", "exec", l.ns["e1"], "etcdctl", "--endpoints=" + strings.Join(eps, ","),
			"--dial-timeout=3s", "--command-timeout=5s", "--cacert=" + pki.CACert(), "--cert=" + pki.ClientCert(), "--key=" + pki.ClientKey()}, args...)...)
	}
	checkKeyRevocation(t, ctx, kms, keyID, etcdctl, n1, n2, w.cfg, "pgsh-"+l.suffix)
}

// hasRule reports whether n's firewall rule name covers exactly ip.
func hasRule(n *daemonNode, name, ip string) (bool, string) {
	out, err := n.cli(context.Background(), time.Minute, "firewall-rule", "list", "-o", "json")
	if err != nil {
		return false, fmt.Sprintf("%v %s", err, out)
	}
	var rules []struct {
		Name  string
		Start string `json:"start_ip_address"`
		End   string `json:"end_ip_address"`
	}
	if err := json.Unmarshal([]byte(out), &rules); err != nil {
		return false, fmt.Sprintf("%v %s", err, out)
	}
	for _, r := range rules {
		if r.Name == name {
			return r.Start == ip && r.End == ip, out
		}
	}
	return false, out
}

// showCluster checks `cluster show -o json` on n: the members' roles,
// whether n's gateway may take read-write sessions, three healthy etcd
// members.
func showCluster(t *testing.T, n *daemonNode, roles map[string]string, mayWrite bool) {
	t.Helper()
	var info struct {
		Node       string
		Leadership struct {
			State    string
			MayWrite bool `json:"may_write"`
		}
		Members []struct{ Name, Role string }
		Etcd    []struct{ Healthy bool }
	}
	out, err := n.cli(context.Background(), time.Minute, "cluster", "show", "-o", "json")
	if err == nil {
		err = json.Unmarshal([]byte(out), &info)
	}
	if err != nil {
		t.Fatalf("%s: cluster show: %v\n%s", n.name, err, out)
	}
	got := map[string]string{}
	for _, m := range info.Members {
		got[m.Name] = m.Role
	}
	healthy := 0
	for _, e := range info.Etcd {
		if e.Healthy {
			healthy++
		}
	}
	if info.Node != n.name || !maps.Equal(got, roles) || info.Leadership.MayWrite != mayWrite || healthy != 3 {
		t.Fatalf("%s: cluster show: %s; want roles %v, may_write %v, 3 healthy etcd members", n.name, out, roles, mayWrite)
	}
	t.Logf("%s: cluster show: roles %v, leadership %s", n.name, got, info.Leadership.State)
}

// patroniRole reports whether Patroni's GET /cluster, asked on node n's
// loopback (its own REST port), gives member the role want.
func patroniRole(n *daemonNode, port int, member, want string) (bool, string) {
	c := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DialContext: func(_ context.Context, _, addr string) (net.Conn, error) { return dialIn(n.ns, addr) }}}
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/cluster")
	if err != nil {
		return false, err.Error()
	}
	defer resp.Body.Close()
	var body struct {
		Members []struct{ Name, Role, State string }
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return false, err.Error()
	}
	for _, m := range body.Members {
		if m.Name == member {
			return m.Role == want, fmt.Sprintf("%+v", body.Members)
		}
	}
	return false, fmt.Sprintf("%+v", body.Members)
}

// missingOn returns the acknowledged ids not on node n.
func missingOn(t *testing.T, ctx context.Context, n *daemonNode, ids []int64) []int64 {
	t.Helper()
	out, err := n.sql(ctx, "SELECT id FROM public.ledger")
	if err != nil {
		t.Fatalf("%s: reading the ledger: %v %s", n.name, err, out)
	}
	return notIn(out, ids)
}

// gatewayWriter inserts one row per transaction through a multi-host
// connection, reconnecting after any error; a row counts once its
// commit is acknowledged.
type gatewayWriter struct {
	cfg func() *pgx.ConnConfig

	mu       sync.Mutex
	next     int64
	ack      []int64
	ackAt    []time.Time
	err      error
	killedAt time.Time
	first    time.Time
}

func (w *gatewayWriter) count() int                { w.mu.Lock(); defer w.mu.Unlock(); return len(w.ack) }
func (w *gatewayWriter) acked() []int64            { w.mu.Lock(); defer w.mu.Unlock(); return slices.Clone(w.ack) }
func (w *gatewayWriter) lastErr() error            { w.mu.Lock(); defer w.mu.Unlock(); return w.err }
func (w *gatewayWriter) firstAfterKill() time.Time { w.mu.Lock(); defer w.mu.Unlock(); return w.first }
func (w *gatewayWriter) markKill(at time.Time)     { w.mu.Lock(); defer w.mu.Unlock(); w.killedAt = at }

// longestGapAfter is the longest time between two acknowledged writes
// from at on (at itself counts as the first).
func (w *gatewayWriter) longestGapAfter(at time.Time) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	var longest time.Duration
	prev := at
	for _, a := range w.ackAt {
		if a.Before(at) {
			continue
		}
		longest = max(longest, a.Sub(prev))
		prev = a
	}
	return longest
}

func (w *gatewayWriter) run(ctx context.Context) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for ctx.Err() == nil {
		if conn == nil {
			cctx, cancel := context.WithTimeout(ctx, 8*time.Second)
			c, err := pgx.ConnectConfig(cctx, w.cfg())
			cancel()
			if err != nil {
				w.mu.Lock()
				w.err = err
				w.mu.Unlock()
				time.Sleep(100 * time.Millisecond)
				continue
			}
			conn = c
		}
		w.mu.Lock()
		id := w.next
		w.next++
		w.mu.Unlock()
		ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
		begun := time.Now()
		_, err := conn.Exec(ictx, "INSERT INTO public.ledger (id) VALUES ($1)", id)
		cancel()
		w.mu.Lock()
		if err == nil {
			w.ack = append(w.ack, id)
			w.ackAt = append(w.ackAt, time.Now())
			// A write begun before the kill and answered after it does
			// not count as the first one after it.
			if !w.killedAt.IsZero() && w.first.IsZero() && begun.After(w.killedAt) {
				w.first = time.Now()
			}
		} else {
			w.err = err
		}
		w.mu.Unlock()
		if err != nil {
			conn.Close(context.Background())
			conn = nil
		}
	}
}
