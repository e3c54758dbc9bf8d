package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestAuditTailFollowsRefusedEscalation: `audit tail -f` prints, as it
// happens, the privilege.refused record of an escalation the administrator
// attempts (refused by pgshield_guard inside PostgreSQL).
func TestAuditTailFollowsRefusedEscalation(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, pgshieldBin, "audit", "tail", "-f", "-n", "0", "-o", "json", "--data-dir", shared.dataDir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	found := make(chan map[string]any, 1)
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var r map[string]any
			if json.Unmarshal(sc.Bytes(), &r) == nil && r["type"] == "privilege.refused" {
				if f, _ := r["fields"].(map[string]any); f != nil && strings.Contains(f["statement"].(string), "e2e_tail_probe") {
					found <- r
					return
				}
			}
		}
	}()
	time.Sleep(time.Second) // let tail reach the end of the log
	o, err := psql(t, shared.dsn("user="+admin+" sslmode=verify-full"), adminPassword, "-c",
		"GRANT pg_execute_server_program TO "+admin+" /* e2e_tail_probe */")
	if err == nil || !strings.Contains(o, "42501") && !strings.Contains(o, "permission denied") {
		t.Fatalf("escalation attempt = %q, %v; want it refused", o, err)
	}
	select {
	case r := <-found:
		if r["user"] != admin || r["outcome"] != "failure" {
			t.Errorf("record = %v; want the admin's refused statement", r)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("audit tail -f printed no privilege.refused record for the attempt within 30 s")
	}
	// And search finds it by event type.
	if s := mustCLI(t, shared, "audit", "search", "--event", "privilege.refused", "--user", admin, "-o", "json"); !strings.Contains(s, "e2e_tail_probe") {
		t.Errorf("audit search --event privilege.refused lacks the attempt:\n%s", s)
	}
}
