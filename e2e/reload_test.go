package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReloadBrokenInputs: a broken pgshield.json on SIGHUP, and malformed
// parameter values and rule payloads through the API, are refused; the
// configuration in force is kept, an open session and new logins work
// throughout, each refusal is audited, and the daemon says why in its log.
// A valid edit of a parameter is applied by the same SIGHUP. (On the
// shared server: every change is undone before the test ends.)
func TestReloadBrokenInputs(t *testing.T) {
	s := shared
	cfgPath := filepath.Join(s.dataDir, "pgshield.json")
	orig, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	pidBytes, err := os.ReadFile(filepath.Join(s.dataDir, "run", "pgshield.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(pidBytes)))
	if err != nil || pid <= 1 {
		t.Fatalf("pid file: %q", pidBytes)
	}
	hup := func() {
		t.Helper()
		if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
			t.Fatalf("SIGHUP: %v", err)
		}
	}
	t.Cleanup(func() {
		if err := os.WriteFile(cfgPath, orig, 0o600); err != nil {
			t.Errorf("restoring pgshield.json: %v", err)
		}
		_ = syscall.Kill(pid, syscall.SIGHUP)
		time.Sleep(500 * time.Millisecond)
	})
	const rate = "pgshield.max_connection_rate_per_ip"
	paramValue := func() string {
		t.Helper()
		var v struct {
			Value string `json:"value"`
		}
		out := mustCLI(t, s, "parameter", "show", rate, "-o", "json")
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("parameter show: %v %s", err, out)
		}
		return v.Value
	}
	before := paramValue()

	dsn := s.dsn("user=" + admin + " password=" + adminPassword + " sslmode=verify-full")
	open, err := pgxConnect(t, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close(context.Background())
	clientsWork := func(when string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		var one int
		if err := open.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
			t.Fatalf("%s: the open session: %v", when, err)
		}
		c, err := pgxConnect(t, dsn)
		if err != nil {
			t.Fatalf("%s: a new login: %v", when, err)
		}
		c.Close(context.Background())
		if syscall.Kill(pid, 0) != nil {
			t.Fatalf("%s: the daemon (pid %d) is gone", when, pid)
		}
	}
	reloadRecords := func(event string) int { return len(auditRecords(t, s, "--event", event)) }

	with := func(mod func(m map[string]any)) string {
		var m map[string]any
		if err := json.Unmarshal(orig, &m); err != nil {
			t.Fatal(err)
		}
		mod(m)
		b, _ := json.MarshalIndent(m, "", "  ")
		return string(b)
	}
	setParam := func(name, value string) func(map[string]any) {
		return func(m map[string]any) {
			p, _ := m["parameters"].(map[string]any)
			if p == nil {
				p = map[string]any{}
			}
			p[name] = value
			m["parameters"] = p
		}
	}
	broken := []struct{ name, file, reason string }{
		{"truncated", string(orig[:len(orig)/2]), "decoding config"},
		{"not JSON", "\x00\xff garbage", "decoding config"},
		{"unknown field", with(func(m map[string]any) { m["listen_everywhere"] = true }), "unknown field"},
		{"malformed parameter value", with(setParam(rate, "lots")), rate},
		{"a field init decides", with(func(m map[string]any) { m["listen"] = "0.0.0.0:1" }), "listen changed"},
		{"a parameter only parameter set applies", with(setParam("pgshield.kernel_firewall", "on")), "parameter set"},
	}
	for _, tc := range broken {
		failed := reloadRecords("config.reload_failed")
		if err := os.WriteFile(cfgPath, []byte(tc.file), 0o600); err != nil {
			t.Fatal(err)
		}
		hup()
		r := waitRecord(t, s, "config.reload_failed for "+tc.name, func(r map[string]any) bool {
			reason, _ := r["reason"].(string)
			return r["outcome"] == "failure" && strings.Contains(reason, tc.reason)
		}, "--event", "config.reload_failed")
		if n := reloadRecords("config.reload_failed"); n != failed+1 {
			t.Errorf("%s: %d config.reload_failed records after one SIGHUP; want %d", tc.name, n, failed+1)
		}
		if fields(r)["trigger"] != "SIGHUP" {
			t.Errorf("%s: record %v; want trigger SIGHUP", tc.name, r)
		}
		if v := paramValue(); v != before {
			t.Errorf("%s: %s in force = %q; want %q kept", tc.name, rate, v, before)
		}
		clientsWork(tc.name)
	}
	log, _ := os.ReadFile(filepath.Join(s.dataDir, "log", "pgshield.log"))
	if !strings.Contains(string(log), "Configuration reload refused") {
		t.Errorf("the daemon's log does not say the reload was refused")
	}

	// A valid edit of a parameter is applied by SIGHUP, then undone.
	if err := os.WriteFile(cfgPath, []byte(with(setParam(rate, "123"))), 0o600); err != nil {
		t.Fatal(err)
	}
	hup()
	waitRecord(t, s, "config.reload", func(r map[string]any) bool {
		b, _ := json.Marshal(fields(r)["changed"])
		return r["outcome"] == "success" && strings.Contains(string(b), rate)
	}, "--event", "config.reload")
	if v := paramValue(); v != "123" {
		t.Errorf("after a valid reload %s = %q; want 123", rate, v)
	}
	clientsWork("after a valid reload")
	if err := os.WriteFile(cfgPath, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	hup()
	deadline := time.Now().Add(10 * time.Second)
	for paramValue() != before && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	if v := paramValue(); v != before {
		t.Errorf("after restoring the file %s = %q; want %q", rate, v, before)
	}

	// Through the API: a malformed value and a malformed rule are refused
	// (exit 5), nothing changes, and the refused call is audited.
	calls := len(auditRecords(t, s, "--event", "api.call"))
	out, err := s.cli("parameter", "set", rate, "lots")
	if code := exitCodeOf(err); code != 5 {
		t.Errorf("parameter set %s lots = exit %d %s; want 5", rate, code, out)
	}
	out, err = s.cli("firewall-rule", "create", "--name", "broken", "--start-ip-address", "192.0.2.1", "--end-ip-address", "192.0.2.300")
	if code := exitCodeOf(err); code != 5 {
		t.Errorf("firewall-rule create with a bad address = exit %d %s; want 5", code, out)
	}
	if out, err := s.cli("firewall-rule", "show", "--name", "broken"); exitCodeOf(err) != 6 {
		t.Errorf("firewall-rule show broken = %v %s; want exit 6 (not created)", err, out)
	}
	if v := paramValue(); v != before {
		t.Errorf("after a refused parameter set %s = %q; want %q", rate, v, before)
	}
	var refusedCalls int
	for _, r := range auditRecords(t, s, "--event", "api.call")[calls:] {
		if r["outcome"] == "failure" {
			refusedCalls++
		}
	}
	if refusedCalls < 2 {
		t.Errorf("%d failed api.call records for the two refused calls; want 2", refusedCalls)
	}
	clientsWork("after the refused API calls")
}
