package link

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/cluster/etcd"
)

// etcdctlArgs are etcdctl's flags for the test's etcd, with the client
// certificate every node and Patroni hold: an etcd writer's.
func etcdctlArgs(pki etcd.PKI, endpoints []string) []string {
	var eps []string
	for _, e := range endpoints {
		eps = append(eps, "https://"+e)
	}
	return []string{"--endpoints=" + strings.Join(eps, ","), "--dial-timeout=3s", "--command-timeout=5s",
		"--cacert=" + pki.CACert(), "--cert=" + pki.ClientCert(), "--key=" + pki.ClientKey()}
}

// checkClusterParameter is TestRealHADaemons' phase for `parameter set`
// of a PostgreSQL parameter on a cluster node, with both nodes up:
//   - set on the primary, and then on the standby, it is in force on both
//     nodes' PostgreSQL (SHOW) within seconds, and in no
//     postgresql.auto.conf (no ALTER SYSTEM);
//   - a restart-context parameter answers pending restart, on both nodes;
//   - protected, Patroni's own, pgshield-pinned, invalid values and
//     values Patroni would drop are refused (exit 5) and never reach etcd;
//   - an etcd writer (the client certificate every node and Patroni's
//     user hold) who puts protected parameters into the dynamic
//     configuration changes none of them on either node, while an
//     unprotected one in the same document is applied (so Patroni did
//     read it), neither in force at once nor after a restart.
func checkClusterParameter(t *testing.T, ctx context.Context, primary, standby *daemonNode, etcdNS string, etcdArgs []string) {
	t.Helper()
	nodes := []*daemonNode{primary, standby}
	show := func(n *daemonNode, name string) string {
		out, err := n.sql(ctx, "SHOW "+name)
		if err != nil {
			return fmt.Sprintf("error %v: %s", err, out)
		}
		return out
	}
	set := func(on *daemonNode, name, value string) (apitype.ParameterValue, string, error) {
		var v apitype.ParameterValue
		out, err := on.cli(ctx, time.Minute, "parameter", "set", name, value, "-o", "json")
		if err == nil {
			if jerr := json.Unmarshal([]byte(out), &v); jerr != nil {
				return v, out, jerr
			}
		}
		return v, out, err
	}
	// inForce sets name on one node and waits until SHOW gives want on
	// both: the seconds from the command to the second node.
	inForce := func(on *daemonNode, name, value, want string) float64 {
		start := time.Now()
		v, out, err := set(on, name, value)
		if err != nil || v.PendingRestart {
			t.Fatalf("%s: parameter set %s %s: %v %+v\n%s", on.name, name, value, err, v, out)
		}
		if got := show(on, name); got != want {
			t.Errorf("%s: SHOW %s = %q right after parameter set returned; want %q", on.name, name, got, want)
		}
		for _, n := range nodes {
			waitFor(t, fmt.Sprintf("%s = %s on %s", name, want, n.name), 30*time.Second, nil, func() (bool, string) {
				got := show(n, name)
				return got == want, got
			})
		}
		return time.Since(start).Seconds()
	}
	s1 := inForce(primary, "work_mem", "12MB", "12MB")
	t.Logf("cluster parameter: %.2f s (work_mem set on %s, in force on both nodes)", s1, primary.name)
	s2 := inForce(standby, "work_mem", "14MB", "14MB")
	t.Logf("cluster parameter: %.2f s (work_mem set on the standby %s, in force on both nodes)", s2, standby.name)
	for _, n := range nodes {
		if out, err := n.sql(ctx, "SELECT count(*) FROM pg_catalog.pg_file_settings WHERE name = 'work_mem' AND sourcefile LIKE '%postgresql.auto.conf'"); err != nil || out != "0" {
			t.Errorf("%s: work_mem in postgresql.auto.conf (ALTER SYSTEM): %v %s", n.name, err, out)
		}
	}

	// A restart-context parameter: stored, every node says it needs a
	// restart; set back, no node does.
	pendingOn := func(n *daemonNode, name string) string {
		out, _ := n.sql(ctx, "SELECT pending_restart FROM pg_catalog.pg_settings WHERE name = '"+name+"'")
		return out
	}
	v, out, err := set(primary, "max_files_per_process", "900")
	if err != nil || !v.PendingRestart || v.Context != "static" || v.Value != "1000" {
		t.Fatalf("parameter set max_files_per_process 900: %v %+v\n%s", err, v, out)
	}
	for _, n := range nodes {
		waitFor(t, "max_files_per_process pending restart on "+n.name, 30*time.Second, nil, func() (bool, string) {
			p := pendingOn(n, "max_files_per_process")
			return p == "t", p
		})
	}
	// Set back to the value running. Patroni 3.0.2 rewrites postgresql.conf
	// only when some value differs from the running one (reload_config's
	// conf_changed), so 900 stays in the file, and pending in pg_settings,
	// until its next change: here work_mem back to its default.
	if v, out, err := set(primary, "max_files_per_process", "1000"); err != nil || v.Value != "1000" {
		t.Fatalf("parameter set max_files_per_process 1000: %v %+v\n%s", err, v, out)
	}
	inForce(primary, "work_mem", "4MB", "4MB")
	for _, n := range nodes {
		waitFor(t, "max_files_per_process no longer pending on "+n.name, 30*time.Second, nil, func() (bool, string) {
			p := pendingOn(n, "max_files_per_process")
			return p == "f", p
		})
	}

	// Refused, exit 5 (the server refused a value), on either node.
	for _, r := range []struct {
		on          *daemonNode
		name, value string
		want        string
	}{
		{primary, "shared_preload_libraries", "auto_explain", "managed by pgshield"},
		{standby, "listen_addresses", "*", "managed by pgshield"},
		{primary, "primary_conninfo", "host=10.77.40.31", "set by Patroni"},
		{standby, "synchronous_standby_names", "", "set by Patroni"},
		{primary, "wal_init_zero", "on", "set by pgshield on each node"},
		{primary, "max_slot_wal_keep_size", "16GB", "set by pgshield on each node"},
		{primary, "work_mem", "abc", `invalid value for parameter "work_mem"`},
		{standby, "max_connections", "20", "Patroni does not accept"},
		{primary, "search_path", "a\nshared_preload_libraries = 'x'", "control characters"},
	} {
		out, err := r.on.cli(ctx, time.Minute, "parameter", "set", r.name, r.value)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 5 || !strings.Contains(out, r.want) {
			t.Errorf("%s: parameter set %s %q: %v\n%s\nwant exit 5 and %q", r.on.name, r.name, r.value, err, out, r.want)
		}
	}

	// The dynamic configuration: what was refused is not in it.
	etcdctl := func(args ...string) (string, error) {
		return sh(ctx, "ip", append([]string{"netns", "exec", etcdNS, "etcdctl"}, append(etcdArgs, args...)...)...)
	}
	keys, err := etcdctl("get", "--prefix", "/pgshield/", "--keys-only")
	if err != nil {
		t.Fatalf("%v %s", err, keys)
	}
	cfgKey := ""
	for _, k := range strings.Fields(keys) {
		if strings.HasSuffix(k, "/config") && strings.Count(k, "/") == 3 {
			cfgKey = k
		}
	}
	if cfgKey == "" {
		t.Fatalf("no Patroni config key in %s", keys)
	}
	raw, err := etcdctl("get", cfgKey, "--print-value-only")
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal([]byte(strings.TrimSpace(raw)), &doc); err != nil {
		t.Fatalf("%v: %s", err, raw)
	}
	pg, _ := doc["postgresql"].(map[string]any)
	params, _ := pg["parameters"].(map[string]any)
	if params == nil || params["work_mem"] != "4096" || params["max_files_per_process"] != "1000" {
		t.Fatalf("etcd %s: parameters %v; want work_mem 4096 (canonical, kB), max_files_per_process 1000", cfgKey, params)
	}
	for _, name := range []string{"shared_preload_libraries", "listen_addresses", "primary_conninfo", "wal_init_zero", "max_slot_wal_keep_size", "search_path", "max_connections"} {
		if _, ok := params[name]; ok {
			t.Errorf("etcd %s holds the refused %s: %v", cfgKey, name, params)
		}
	}

	// The etcd writer: protected parameters, pinned by pgshield in each
	// node's local YAML or on its postgres wrapper's command line, next to
	// an unprotected canary.
	watched := []string{"password_encryption", "log_destination", "unix_socket_permissions", "ssl", "zero_damaged_pages",
		"allow_system_table_mods", "session_preload_libraries", "dynamic_library_path", "listen_addresses", "shared_preload_libraries",
		"hba_file", "ident_file", "data_directory"}
	// The settings in force, and pending_restart for all but the three on
	// the wrapper's command line: PostgreSQL flags those pending when
	// postgresql.conf names another value, though at a restart the command
	// line wins again.
	snapshot := func(n *daemonNode) string {
		out, err := n.sql(ctx, "SELECT string_agg(name || '=' || setting || CASE WHEN name IN ('hba_file', 'ident_file', 'data_directory') THEN '' ELSE '/' || pending_restart END, ' ' ORDER BY name) FROM pg_catalog.pg_settings WHERE name IN ('"+strings.Join(watched, "','")+"')")
		if err != nil {
			t.Fatalf("%s: %v %s", n.name, err, out)
		}
		return out
	}
	before := map[string]string{}
	for _, n := range nodes {
		before[n.name] = snapshot(n)
	}
	canaryWas := show(primary, "vacuum_cost_page_miss")
	attack := maps.Clone(params)
	for k, v := range map[string]string{
		"password_encryption": "md5", "log_destination": "stderr", "unix_socket_permissions": "0777", "ssl": "on",
		"zero_damaged_pages": "on", "allow_system_table_mods": "on", "session_preload_libraries": "auto_explain",
		"dynamic_library_path": "/tmp", "listen_addresses": "*", "shared_preload_libraries": "",
		"hba_file": "/dev/null", "ident_file": "/dev/null", "data_directory": "/tmp",
		"vacuum_cost_page_miss": "7", // the canary
	} {
		attack[k] = v
	}
	forged := maps.Clone(doc)
	forgedPG := maps.Clone(pg)
	forgedPG["parameters"] = attack
	forged["postgresql"] = forgedPG
	fb, _ := json.Marshal(forged)
	if out, err := etcdctl("put", cfgKey, string(fb)); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	t.Cleanup(func() { _, _ = etcdctl("put", cfgKey, strings.TrimSpace(raw)) })
	for _, n := range nodes {
		waitFor(t, "the etcd writer's canary on "+n.name, 30*time.Second, nil, func() (bool, string) {
			got := show(n, "vacuum_cost_page_miss")
			return got == "7", got
		})
	}
	// One more Patroni cycle, for a slower effect to show.
	time.Sleep(3 * time.Second)
	for _, n := range nodes {
		if after := snapshot(n); after != before[n.name] {
			t.Errorf("ATTACK SUCCEEDED: an etcd writer changed protected parameters on %s:\nbefore %s\nafter  %s", n.name, before[n.name], after)
		}
	}
	// And at a start: the standby's postmaster killed, Patroni starts it
	// again from the postgresql.conf it wrote with the forged document.
	old := standby.postmaster()
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatalf("killing %s's postmaster %d: %v", standby.name, old, err)
	}
	waitFor(t, standby.name+"'s PostgreSQL started again", time.Minute, nil, func() (bool, string) {
		pm := standby.postmaster()
		got := show(standby, "vacuum_cost_page_miss")
		return pm != 0 && pm != old && got == "7", fmt.Sprintf("postmaster %d, canary %s", pm, got)
	})
	if after := snapshot(standby); after != before[standby.name] {
		t.Errorf("ATTACK SUCCEEDED: after a restart under the etcd writer's document, %s runs with changed protected parameters:\nbefore %s\nafter  %s", standby.name, before[standby.name], after)
	}
	// Patroni 3.0.2 records a configuration change that comes while its
	// PostgreSQL is not yet "running" without writing it (reload_config),
	// so the restore waits for that.
	waitFor(t, "Patroni seeing "+standby.name+"'s PostgreSQL running", time.Minute, nil, func() (bool, string) {
		var info apitype.ClusterInfo
		out, err := standby.cli(ctx, time.Minute, "cluster", "show", "-o", "json")
		if err != nil || json.Unmarshal([]byte(out), &info) != nil {
			return false, fmt.Sprintf("%v %s", err, out)
		}
		for _, m := range info.Members {
			if m.Name == standby.name {
				return m.State == "running" || m.State == "streaming", m.State
			}
		}
		return false, out
	})
	if out, err := etcdctl("put", cfgKey, strings.TrimSpace(raw)); err != nil {
		t.Fatalf("restoring %s: %v %s", cfgKey, err, out)
	}
	for _, n := range nodes {
		waitFor(t, "the canary gone on "+n.name, 30*time.Second, nil, func() (bool, string) {
			got := show(n, "vacuum_cost_page_miss")
			return got == canaryWas, got
		})
	}
}
