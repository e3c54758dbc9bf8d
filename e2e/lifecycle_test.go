package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestPostmasterCrashIsRestarted kills the postmaster with SIGKILL and
// expects the supervisor to bring it back, say so in status, and keep the data.
func TestPostmasterCrashIsRestarted(t *testing.T) {
	s, err := newServer("crash")
	t.Cleanup(func() {
		if s != nil {
			s.stop()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	dsn := s.dsn("user=" + admin + " sslmode=verify-full")
	if out, err := psql(t, dsn, adminPassword, "-c", "CREATE TABLE kept(v int)", "-c", "INSERT INTO kept VALUES (7)"); err != nil {
		t.Fatalf("setup: %v %s", err, out)
	}
	// An open session at crash time must not wedge the gateway.
	open, err := pgxConnect(t, s.dsn("user="+admin+" password="+adminPassword+" sslmode=require"))
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close(context.Background())

	before := pidOf(s.status(t)["postgres"].(map[string]any)["pid"])
	if before <= 1 {
		t.Fatalf("no postmaster pid in status")
	}
	if err := syscall.Kill(before, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var out string
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		out, err = psql(t, dsn, adminPassword, "-c", "SELECT v FROM kept")
		if err == nil {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err != nil || out != "7" {
		t.Fatalf("after kill -9 of the postmaster: %v %q; want the row back", err, out)
	}
	pg := s.status(t)["postgres"].(map[string]any)
	if pg["state"] != "Running" || pidOf(pg["pid"]) == before || pidOf(pg["restarts"]) < 1 {
		t.Fatalf("status after crash = %v; want Running, a new pid and restarts >= 1", pg)
	}
	if !strings.Contains(pg["last_exit"].(string), "killed") {
		t.Fatalf("last_exit = %v; want it to say the postmaster was killed", pg["last_exit"])
	}
	if _, err := open.Exec(context.Background(), "SELECT 1"); err == nil {
		t.Fatalf("a session whose backend died still answers")
	}
}

// TestRestartKeepsStateAndSalts stops and starts a server: parameters
// persist, unknown-role salts do not change, nothing is left running.
func TestRestartKeepsStateAndSalts(t *testing.T) {
	s, err := newServer("restart")
	t.Cleanup(func() {
		if s != nil {
			s.stop()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	salt := saltFor(t, s, "ghost")
	if out, err := s.cli("parameter", "set", "ssl_min_protocol_version", "TLSv1.3"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	pg := pidOf(s.status(t)["postgres"].(map[string]any)["pid"])
	if out, err := s.cli("up"); err == nil || !strings.Contains(out, "already running") {
		t.Fatalf("second up = %v %q; want already running", err, out)
	}
	if out, err := s.cli("down"); err != nil {
		t.Fatalf("down: %v %s", err, out)
	}
	if syscall.Kill(pg, 0) == nil {
		t.Fatalf("postmaster %d still alive after down", pg)
	}
	if _, err := os.Stat(filepath.Join(s.dataDir, "volume", "data", "pgdata", "postmaster.pid")); err == nil {
		t.Fatalf("postmaster.pid left behind: not a clean shutdown")
	}
	if st := s.status(t); st["state"] != "Stopped" {
		t.Fatalf("status after down = %v", st["state"])
	}
	if out, err := s.cli("up"); err != nil {
		t.Fatalf("up again: %v %s", err, out)
	}
	if got := saltFor(t, s, "ghost"); got != salt {
		t.Fatalf("unknown-role salt changed across restart: %q vs %q", got, salt)
	}
	if tlsSt := s.status(t)["tls"].(map[string]any); tlsSt["ssl_min_protocol_version"] != "TLSv1.3" {
		t.Fatalf("parameter did not persist: %v", tlsSt)
	}
}

func TestInitRefusals(t *testing.T) {
	dir := filepath.Join(baseDir, "refusals")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"superuser name", []string{"--admin-user", "postgres"}, "reserved"},
		{"pg_ prefix", []string{"--admin-user", "pg_admin"}, "reserved"},
		{"bad name", []string{"--admin-user", "Robert'); DROP"}, "invalid administrator name"},
		{"bad listen", []string{"--listen", "nowhere"}, "invalid --listen"},
		{"missing password file", []string{"--admin-password-file", "/nonexistent"}, "password file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &server{dataDir: dir}
			out, err := s.cli(append([]string{"init"}, tc.args...)...)
			if err == nil || !strings.Contains(out, tc.want) {
				t.Fatalf("init %v = %v %q; want failure with %q", tc.args, err, out, tc.want)
			}
			if _, err := os.Stat(filepath.Join(dir, "pgshield.json")); err == nil {
				t.Fatalf("failed init left a config behind")
			}
		})
	}
	// init over an existing server is refused and changes nothing.
	out, err := shared.cli("init")
	if err == nil || !strings.Contains(out, "already exists") {
		t.Fatalf("init on an existing server = %v %q", err, out)
	}
}
