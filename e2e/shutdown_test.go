package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// adminConn connects as the administrator through the gateway.
func adminConn(t *testing.T, s *server) *pgx.Conn {
	t.Helper()
	c, err := pgxConnect(t, s.dsn("user="+admin+" password="+adminPassword+" sslmode=verify-full"))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// awaitTerminated blocks until the idle session c is ended by the server
// (or limit passes) and returns the error and when it came.
func awaitTerminated(c *pgx.Conn, limit time.Duration) (error, time.Time) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	err := c.PgConn().WaitForNotification(ctx)
	return err, time.Now()
}

// wantAdminShutdown checks err is PostgreSQL's FATAL 57P01 of a fast
// shutdown.
func wantAdminShutdown(t *testing.T, what string, err error) {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "57P01" || pe.Severity != "FATAL" ||
		pe.Message != "terminating connection due to administrator command" {
		t.Errorf("%s: %v; want FATAL 57P01 terminating connection due to administrator command", what, err)
	}
}

func paramJSON(t *testing.T, s *server, name string) map[string]any {
	t.Helper()
	var p map[string]any
	if err := json.Unmarshal([]byte(mustCLI(t, s, "parameter", "show", name, "-o", "json")), &p); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRestartAndShutdown drives one server through `pgshield restart`
// (a parameter pending restart) and then a SIGTERM with sessions open:
// each lets the sessions finish within pgshield.shutdown_grace, ends the
// rest with 57P01, refuses new ones meanwhile, and PostgreSQL stops
// cleanly (a shutdown checkpoint: no crash recovery at the next start).
func TestRestartAndShutdown(t *testing.T) {
	s := startedServer(t, "drain")
	const grace = 4 * time.Second
	mustCLI(t, s, "parameter", "set", "pgshield.shutdown_grace", grace.String())
	setup := adminConn(t, s)
	ctx := context.Background()
	if _, err := setup.Exec(ctx, "CREATE TABLE drain_ledger (n int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}

	t.Run("restart", func(t *testing.T) {
		mustCLI(t, s, "parameter", "set", "shared_buffers", "48MB")
		if p := paramJSON(t, s, "shared_buffers"); p["pending_restart"] != true {
			t.Fatalf("shared_buffers after set: %v; want pending_restart", p)
		}
		st := s.status(t)
		if pr, _ := st["pending_restart"].([]any); len(pr) != 1 || pr[0] != "shared_buffers" {
			t.Errorf("status pending_restart = %v; want [shared_buffers]", st["pending_restart"])
		}
		pgPID := int(st["postgres"].(map[string]any)["pid"].(float64))
		idle := adminConn(t, s)
		start := time.Now()
		type result struct {
			out string
			err error
		}
		done := make(chan result, 1)
		go func() {
			out, err := s.cli("restart", "-o", "json")
			done <- result{out, err}
		}()
		// During the window a new login is refused, and says why.
		time.Sleep(grace / 4)
		if st := s.status(t); st["state"] != "Restarting" {
			t.Errorf("status during the restart: %v; want Restarting", st["state"])
		}
		_, err := pgxConnect(t, s.dsn("user="+admin+" password="+adminPassword+" sslmode=verify-full"))
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "57P03" || !strings.Contains(pe.Message, "restarting") {
			t.Errorf("login during the restart: %v; want 57P03 ... restarting", err)
		}
		err, at := awaitTerminated(idle, time.Minute)
		wantAdminShutdown(t, "idle session at the end of the grace", err)
		if waited := at.Sub(start); waited < grace-time.Second {
			t.Errorf("the idle session was ended %s after the restart began; want the grace (%s) first", waited, grace)
		}
		r := <-done
		if r.err != nil {
			t.Fatalf("restart: %v\n%s", r.err, r.out)
		}
		var res struct {
			Result             string `json:"result"`
			PostgresPID        int    `json:"postgres_pid"`
			SessionsTerminated int    `json:"sessions_terminated"`
		}
		t.Logf("restart: %s after it began (grace %s)", time.Since(start).Round(10*time.Millisecond), grace)
		if err := json.Unmarshal([]byte(r.out), &res); err != nil || res.Result != "restarted" || res.SessionsTerminated < 1 ||
			res.PostgresPID == 0 || res.PostgresPID == pgPID {
			t.Errorf("restart said %s (%v); want restarted, a new postmaster (was %d), the idle session terminated", r.out, err, pgPID)
		}
		if p := paramJSON(t, s, "shared_buffers"); p["pending_restart"] != false || p["value"] != "6144" {
			t.Errorf("shared_buffers after restart: %v; want 6144 (48MB in 8kB pages), not pending restart", p)
		}
		if st := s.status(t); st["state"] != "Available" || st["pending_restart"] != nil {
			t.Errorf("status after restart: %v, pending restart %v; want Available, none", st["state"], st["pending_restart"])
		}
		// The volume stayed unlocked, the daemon up: a login works at once.
		c := adminConn(t, s)
		if _, err := c.Exec(ctx, "INSERT INTO drain_ledger VALUES (1)"); err != nil {
			t.Errorf("insert after restart: %v", err)
		}
	})

	t.Run("sigterm", func(t *testing.T) {
		b, err := os.ReadFile(filepath.Join(s.dataDir, "run", "pgshield.pid"))
		if err != nil {
			t.Fatal(err)
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		inTx, idle := adminConn(t, s), adminConn(t, s)
		tx, err := inTx.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO drain_ledger VALUES (2)"); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		time.Sleep(grace / 4)
		// New connections are refused during the drain: nothing listens.
		if c, err := net.DialTimeout("tcp", s.addr(), 2*time.Second); err == nil {
			c.Close()
			t.Errorf("the gateway accepted a connection during the drain")
		}
		// A transaction that finishes within the grace commits.
		if _, err := tx.Exec(ctx, "INSERT INTO drain_ledger VALUES (3)"); err != nil {
			t.Errorf("insert within the grace: %v", err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Errorf("commit within the grace: %v", err)
		}
		inTx.Close(ctx)
		err, at := awaitTerminated(idle, time.Minute)
		wantAdminShutdown(t, "idle session at the end of the grace", err)
		if waited := at.Sub(start); waited < grace-time.Second {
			t.Errorf("the idle session was ended %s after SIGTERM; want the grace (%s) first", waited, grace)
		}
		for i := 0; i < 1200 && syscall.Kill(pid, 0) == nil; i++ {
			time.Sleep(100 * time.Millisecond)
		}
		if syscall.Kill(pid, 0) == nil {
			t.Fatalf("the daemon (pid %d) still runs 2 minutes after SIGTERM", pid)
		}
		t.Logf("SIGTERM to exit: %s (grace %s)", time.Since(start).Round(10*time.Millisecond), grace)
		// The volume is locked: unmounted and detached.
		if out, _ := exec.Command("findmnt", "-n", filepath.Join(s.dataDir, "volume")).Output(); len(out) > 0 {
			t.Errorf("the volume is still mounted after the shutdown: %s", out)
		}
		// losetup --detach of a device something still has open (udev
		// probing after the unmount) only marks it to clear on last close.
		img := filepath.Join(s.dataDir, "storage", "volume.img")
		var attached []byte
		for i := 0; i < 100; i++ {
			if attached, _ = exec.Command("losetup", "--noheadings", "--associated", img).Output(); len(strings.TrimSpace(string(attached))) == 0 {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if len(strings.TrimSpace(string(attached))) > 0 {
			t.Errorf("the volume image is still attached 10 s after the daemon exited: %s", attached)
		}
		checkDaemonLog(t, s)

		// The next start needs no crash recovery: PostgreSQL says it was
		// shut down (a shutdown checkpoint), not interrupted.
		upStart := time.Now()
		if out, err := s.cli("up", "--timeout", "2m"); err != nil {
			t.Fatalf("up: %v\n%s", err, out)
		}
		t.Logf("up after the shutdown: %s", time.Since(upStart).Round(10*time.Millisecond))
		since := start.UTC().Format(time.RFC3339)
		rec := waitRecord(t, s, "PostgreSQL's first line after the shutdown", func(r map[string]any) bool {
			b, _ := json.Marshal(r)
			return strings.Contains(string(b), "database system was")
		}, "--event", "postgres.log", "--since", since)
		if b, _ := json.Marshal(rec); !strings.Contains(string(b), "database system was shut down at") {
			t.Errorf("PostgreSQL at the next start: %s; want \"database system was shut down at\"", b)
		}
		all, _ := json.Marshal(auditRecords(t, s, "--event", "postgres.log", "--since", since))
		for _, bad := range []string{"interrupted", "not properly shut down", "automatic recovery in progress"} {
			if strings.Contains(string(all), bad) {
				t.Errorf("PostgreSQL's log since the shutdown says %q: it did not stop cleanly", bad)
			}
		}
		if !strings.Contains(string(all), "checkpoint starting: shutdown") {
			t.Errorf("PostgreSQL's log since the shutdown has no shutdown checkpoint")
		}
		var n int
		c := adminConn(t, s)
		if err := c.QueryRow(ctx, "SELECT count(*) FROM drain_ledger").Scan(&n); err != nil || n != 3 {
			t.Errorf("rows after the restart and the shutdown: %d, %v; want 3 (every commit acknowledged)", n, err)
		}
	})
}

// checkDaemonLog checks every line the daemon wrote is one JSON object
// with a time, level and message, that the drain was logged, and that no
// password reached it.
func checkDaemonLog(t *testing.T, s *server) {
	t.Helper()
	f, err := os.Open(filepath.Join(s.dataDir, "log", "pgshield.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var lines int
	var drained bool
	for sc.Scan() {
		lines++
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Errorf("daemon log line %d is not JSON: %q", lines, sc.Text())
			continue
		}
		for _, k := range []string{"time", "level", "msg"} {
			if _, ok := rec[k]; !ok {
				t.Errorf("daemon log line %d has no %q: %s", lines, k, sc.Text())
			}
		}
		if rec["msg"] == "Sessions still open at the end of the grace were terminated." {
			drained = true
		}
		if strings.Contains(sc.Text(), adminPassword) {
			t.Errorf("daemon log line %d holds the administrator's password", lines)
		}
	}
	if lines == 0 || !drained {
		t.Errorf("daemon log: %d lines, drain logged %v; want the sessions terminated at the end of the grace logged", lines, drained)
	}
}
