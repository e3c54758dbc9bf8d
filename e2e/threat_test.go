package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshield/pgshield/internal/threat"
)

// Many sources on one machine: Linux routes all of 127.0.0.0/8 to lo, so a
// client socket bound to 127.x.y.z is its own source. The usual client is
// psql from 127.0.0.1 (libpq cannot choose its source address); attackers
// are pgconn and raw sockets bound to other addresses.

func loopbackIP(b, c, d byte) net.IP { return net.IPv4(127, b, c, d) }

// connectFrom logs in with pgconn from src; the error is the login's.
func (s *server) connectFrom(src net.IP, user, password string) error {
	cfg, err := pgconn.ParseConfig(s.dsn(fmt.Sprintf("user='%s' password='%s' sslmode=verify-full connect_timeout=15",
		strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(user), password)))
	if err != nil {
		return err
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: 5 * time.Second}
	cfg.DialFunc = d.DialContext
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := pgconn.ConnectConfig(ctx, cfg)
	if err == nil {
		c.Close(ctx)
	}
	return err
}

// silentlyClosed dials from src, sends an SSLRequest and reports whether
// the gateway closed the connection having sent nothing at all.
func (s *server) silentlyClosed(t *testing.T, src net.IP) bool {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", s.addr())
	if err != nil {
		return true // refused outright: nothing sent either
	}
	defer c.Close()
	_, _ = c.Write([]byte{0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f}) // SSLRequest
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	var ne net.Error
	return len(b) == 0 && !(errors.As(err, &ne) && ne.Timeout())
}

func (s *server) psqlAdmin(t *testing.T) (string, time.Duration, error) {
	t.Helper()
	start := time.Now()
	out, err := psql(t, s.dsn("user="+admin+" sslmode=verify-full"), adminPassword, "-c", "SELECT 'in'")
	return out, time.Since(start), err
}

type banRow struct {
	Source   string    `json:"source"`
	BannedAt time.Time `json:"banned_at"`
	Until    time.Time `json:"until"`
	Count    int       `json:"count"`
}

func (s *server) bans(t *testing.T) map[string]banRow {
	t.Helper()
	out := mustCLI(t, s, "ban", "list", "-o", "json")
	var rows []banRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("ban list -o json: %v\n%s", err, out)
	}
	m := map[string]banRow{}
	for _, r := range rows {
		m[r.Source] = r
	}
	return m
}

func TestThreat(t *testing.T) {
	// 1,000 sockets of our own, plus the test's.
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil && rl.Cur < 4096 {
		rl.Cur = min(rl.Max, 4096)
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
	s := startedServer(t, "threat")
	mustCLI(t, s, "firewall-rule", "create", "--name", "Loopback8", "--start-ip-address", "127.0.0.0",
		"--end-ip-address", "127.255.255.255")
	// Short role delays keep the attack below bounded in time.
	mustCLI(t, s, "parameter", "set", "pgshield.bruteforce_role_max_delay", "1s")
	// The usual client is psql from 127.0.0.1, which is ignored by default
	// (the host's own loopback): protect every source, so the known-good
	// reservations are what lets it in.
	mustCLI(t, s, "parameter", "set", "pgshield.bruteforce_ignore_sources", "")
	// The administrator's usual source: a first login makes it known-good.
	if out, _, err := s.psqlAdmin(t); err != nil || out != "in" {
		t.Fatalf("first admin login: %v %s", err, out)
	}

	t.Run("flood of silent sockets", func(t *testing.T) {
		var flood []net.Conn
		defer func() {
			for _, c := range flood {
				c.Close()
			}
		}()
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: loopbackIP(0, 0, 2)}, Timeout: 2 * time.Second}
		for i := 0; i < 1000; i++ {
			c, err := d.Dial("tcp", s.addr())
			if err != nil {
				continue // the backlog is full: part of the flood's effect
			}
			flood = append(flood, c)
		}
		out, took, err := s.psqlAdmin(t)
		if err != nil || out != "in" {
			t.Fatalf("admin during a flood of %d silent sockets: %v %s", len(flood), err, out)
		}
		t.Logf("admin logged in in %v while %d silent sockets were open from 127.0.0.2", took, len(flood))
		if took > 3*time.Second {
			t.Errorf("admin login took %v during the flood; want within 3 s", took)
		}
	})

	src3 := loopbackIP(0, 0, 3)
	t.Run("five bad passwords ban the source", func(t *testing.T) {
		for i := 0; i < 5; i++ {
			if err := s.connectFrom(src3, admin, "wrong"); sqlState(err) != "28P01" {
				t.Fatalf("bad password %d: %v; want 28P01", i+1, err)
			}
		}
		if !s.silentlyClosed(t, src3) {
			t.Fatal("6th connection from the banned source got bytes; want a close at accept, before TLS")
		}
		if err := s.connectFrom(src3, admin, adminPassword); err == nil || sqlState(err) != "" {
			t.Fatalf("right password from the banned source = %v; want the connection closed", err)
		}
		b, ok := s.bans(t)["127.0.0.3/32"]
		if !ok || b.Count != 1 || b.Until.Sub(b.BannedAt) != 10*time.Minute {
			t.Fatalf("ban list = %v; want 127.0.0.3/32 banned for 10 minutes", s.bans(t))
		}
		if out, _, err := s.psqlAdmin(t); err != nil || out != "in" {
			t.Fatalf("admin from its usual source after the ban: %v %s", err, out)
		}
	})

	t.Run("50 sources x 3 guesses while the usual source logs in", func(t *testing.T) {
		var wg sync.WaitGroup
		var mu sync.Mutex
		codes := map[string]int{}
		start := time.Now()
		for i := 1; i <= 50; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := 0; j < 3; j++ {
					err := s.connectFrom(loopbackIP(0, 1, byte(i)), admin, fmt.Sprintf("guess-%d-%d", i, j))
					mu.Lock()
					codes[sqlState(err)]++
					mu.Unlock()
				}
			}()
		}
		var tooks []time.Duration
		for k := 0; k < 3; k++ {
			time.Sleep(300 * time.Millisecond)
			out, took, err := s.psqlAdmin(t)
			if err != nil || out != "in" {
				t.Fatalf("admin from its usual source under attack: %v %s", err, out)
			}
			tooks = append(tooks, took)
		}
		wg.Wait()
		t.Logf("attack of 150 guesses over %v: answers by SQLSTATE %v; admin logins took %v", time.Since(start), codes, tooks)
		for _, d := range tooks {
			if d > 3*time.Second {
				t.Errorf("admin login took %v under attack; want within 3 s", d)
			}
		}
		if codes["53300"] == 0 || codes["28P01"] >= 150 {
			t.Errorf("answers %v; want the role's guesses slowed (some refused with 53300)", codes)
		}
		for src := range s.bans(t) {
			if strings.HasPrefix(src, "127.0.1.") {
				t.Errorf("source %s banned after 3 guesses; want none (5 make a ban)", src)
			}
		}
	})

	hostile := "evil\n\"127.0.0.9\" {\"client\":\"10.9.9.9\"}\r\tx'y"
	src4 := loopbackIP(0, 0, 4)
	t.Run("a hostile user name bans only the real peer", func(t *testing.T) {
		for i := 0; i < 5; i++ {
			if err := s.connectFrom(src4, hostile, "wrong"); sqlState(err) != "28P01" {
				t.Fatalf("hostile name %d: %v; want 28P01", i+1, err)
			}
		}
		bans := s.bans(t)
		if _, ok := bans["127.0.0.4/32"]; !ok {
			t.Fatalf("ban list = %v; want 127.0.0.4/32", bans)
		}
		for src := range bans {
			if src != "127.0.0.3/32" && src != "127.0.0.4/32" {
				t.Errorf("ban list has %s; want only the real peers", src)
			}
		}
		if s.silentlyClosed(t, loopbackIP(0, 0, 9)) {
			t.Error("127.0.0.9, named in the user name, was refused")
		}
		// Every record of the audit log is one line of valid JSON, and the
		// name comes back exactly as sent.
		f, err := os.Open(filepath.Join(s.dataDir, "volume", "data", "audit", "audit.jsonl"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<24)
		found := map[string]bool{}
		for n := 1; sc.Scan(); n++ {
			var r map[string]any
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
				t.Fatalf("audit line %d is not JSON: %v\n%s", n, err, sc.Bytes())
			}
			if r["user"] == hostile {
				found[fmt.Sprint(r["type"])] = true
				if r["client"] != "127.0.0.4" {
					t.Errorf("record for the hostile name has client %v; want 127.0.0.4", r["client"])
				}
			}
		}
		if !found["auth.failure"] || !found["threat.ban"] {
			t.Errorf("records with the hostile name: %v; want auth.failure and threat.ban", found)
		}
		if out, err := s.cli("audit", "verify"); err != nil {
			t.Errorf("audit verify: %v\n%s", err, out)
		}
	})

	t.Run("ban delete", func(t *testing.T) {
		out := mustCLI(t, s, "ban", "list", "-o", "table")
		if !strings.Contains(out, "SOURCE") || !strings.Contains(out, "127.0.0.4/32") {
			t.Errorf("ban list -o table:\n%s", out)
		}
		mustCLI(t, s, "ban", "delete", "127.0.0.4")
		if _, ok := s.bans(t)["127.0.0.4/32"]; ok {
			t.Fatal("127.0.0.4/32 still listed after ban delete")
		}
		if s.silentlyClosed(t, src4) {
			t.Error("127.0.0.4 still refused after ban delete")
		}
		if out, err := s.cli("ban", "delete", "127.0.0.4"); err == nil {
			t.Errorf("ban delete of a source not banned succeeded: %s", out)
		}
		if out, err := s.cli("ban", "delete", "not-an-address"); err == nil {
			t.Errorf("ban delete not-an-address succeeded: %s", out)
		}
		waitRecord(t, s, "threat.unban", func(r map[string]any) bool { return r["type"] == "threat.unban" })
	})

	t.Run("bans survive down and up", func(t *testing.T) {
		mustCLI(t, s, "down", "--timeout", "60s")
		mustCLI(t, s, "up", "--timeout", "2m")
		if _, ok := s.bans(t)["127.0.0.3/32"]; !ok {
			t.Fatalf("ban list after down/up = %v; want 127.0.0.3/32 still banned", s.bans(t))
		}
		if !s.silentlyClosed(t, src3) {
			t.Error("banned source got bytes after down/up; want a close at accept")
		}
		if out, took, err := s.psqlAdmin(t); err != nil || out != "in" {
			t.Fatalf("admin after down/up: %v %s", err, out)
		} else {
			t.Logf("admin after down/up in %v", took)
		}
	})
}

// pgshield.max_connections = auto: the daemon read PostgreSQL's limits and
// derived the session cap (audited), parameter show says auto, and a
// restart with another max_connections moves the cap.
func TestSessionCapAuto(t *testing.T) {
	maxConns, reserved := shared.pinnedSQL(t, "SHOW max_connections"), shared.pinnedSQL(t, "SHOW superuser_reserved_connections")
	m, _ := strconv.Atoi(maxConns)
	r, _ := strconv.Atoi(reserved)
	want := threat.DeriveMaxSessions(m, r)
	awaitCap := func(want int) {
		t.Helper()
		deadline := time.Now().Add(25 * time.Second) // read every 10 s
		for {
			out := mustCLI(t, shared, "audit", "search", "--event", "threat.session_cap", "-o", "json")
			if strings.Contains(out, fmt.Sprintf(`"derived_max_sessions": %d`, want)) ||
				strings.Contains(out, fmt.Sprintf(`"derived_max_sessions":%d`, want)) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("no threat.session_cap record of %d sessions:\n%s", want, out)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	awaitCap(want)
	if out := mustCLI(t, shared, "parameter", "show", "pgshield.max_connections"); !strings.Contains(out, "auto") {
		t.Errorf("parameter show pgshield.max_connections:\n%s", out)
	}

	// PostgreSQL restarted with another max_connections: the cap follows.
	// The shared server gets its settings back however this ends.
	mustCLI(t, shared, "parameter", "set", "pgshield.shutdown_grace", "0s")
	t.Cleanup(func() {
		shared.superSQL(t, "ALTER SYSTEM RESET max_connections")
		if out, err := shared.cli("restart"); err != nil {
			t.Errorf("restart back to max_connections %s: %v %s", maxConns, err, out)
		}
		if out, err := shared.cli("parameter", "set", "pgshield.shutdown_grace", "30s"); err != nil {
			t.Errorf("shutdown_grace back: %v %s", err, out)
		}
	})
	mustCLI(t, shared, "parameter", "set", "max_connections", strconv.Itoa(m-40))
	mustCLI(t, shared, "restart")
	awaitCap(threat.DeriveMaxSessions(m-40, r))
}
