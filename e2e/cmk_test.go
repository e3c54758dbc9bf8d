package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgshield/pgshield/internal/testutil/localkms"
)

// ledger commits numbered rows continuously and remembers every one whose
// commit was acknowledged.
type ledger struct {
	mu    sync.Mutex
	acked []int
	stop  chan struct{}
	done  chan struct{}
}

func startLedger(t *testing.T, dsn string) *ledger {
	l := &ledger{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		var conn *pgx.Conn
		defer func() {
			if conn != nil {
				conn.Close(context.Background())
			}
		}()
		for n := 1; n < 1_000_000; {
			select {
			case <-l.stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if conn == nil {
				c, err := pgx.Connect(ctx, dsn)
				if err != nil {
					cancel()
					time.Sleep(200 * time.Millisecond)
					continue
				}
				conn = c
			}
			_, err := conn.Exec(ctx, "INSERT INTO ledger VALUES ($1)", n)
			cancel()
			if err != nil {
				conn.Close(context.Background())
				conn = nil
				time.Sleep(200 * time.Millisecond)
				continue
			}
			l.mu.Lock()
			l.acked = append(l.acked, n)
			l.mu.Unlock()
			n++
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return l
}

func (l *ledger) finish() []int {
	close(l.stop)
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]int(nil), l.acked...)
}

func waitState(t *testing.T, s *server, want string, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < limit {
		if st := s.status(t); st["state"] == want {
			return time.Since(start)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("state did not become %s within %s (now %v)", want, limit, s.status(t)["state"])
	return 0
}

func TestCustomerManagedKey(t *testing.T) {
	kms := localkms.Start(t)
	kms.SetEnv(t) // fake credentials for the daemon, which inherits them
	keyID, _ := kms.CreateKey(t)
	s := startedServer(t, "cmk", "--key-uri", kms.KeyURI(keyID))
	const interval = 2 * time.Second
	mustCLI(t, s, "parameter", "set", "pgshield.key_revalidation_interval", interval.String())
	out := mustCLI(t, s, "key", "show", "-o", "json")
	if !strings.Contains(out, `"customer-managed"`) || strings.Contains(out, "secret") {
		t.Fatalf("key show = %s", out)
	}
	dsn := s.dsn("user=" + admin + " password=" + adminPassword + " sslmode=require")
	if out, err := psql(t, s.dsn("user="+admin+" sslmode=require"), adminPassword, "-c", "CREATE TABLE ledger(n int PRIMARY KEY)"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	l := startLedger(t, dsn)
	time.Sleep(2 * time.Second)

	// Revocation: Inaccessible within two revalidation intervals.
	kms.DisableKey(t, keyID)
	took := waitState(t, s, "Inaccessible", 2*interval+5*time.Second)
	t.Logf("key disabled -> Inaccessible in %s (revalidation interval %s)", took.Round(10*time.Millisecond), interval)
	if took > 2*interval+2*time.Second {
		t.Fatalf("revocation took %s; want within two intervals (%s)", took, 2*interval)
	}
	out, err := psql(t, s.dsn("user="+admin+" sslmode=require"), adminPassword, "-c", "SELECT 1")
	if err == nil || !strings.Contains(out, "customer-managed key is unavailable") {
		t.Fatalf("login while Inaccessible = %v %q", err, out)
	}

	// Restored key: Available again, every acknowledged commit present.
	kms.EnableKey(t, keyID)
	took = waitState(t, s, "Available", 2*interval+60*time.Second)
	t.Logf("key enabled -> Available in %s", took.Round(10*time.Millisecond))
	time.Sleep(2 * time.Second)
	checkKeyMetrics(t, s)

	// Rotation under load, then a move to another key.
	mustCLI(t, s, "key", "rotate")
	key2, _ := kms.CreateKey(t)
	mustCLI(t, s, "key", "set", "--key-uri", kms.KeyURI(key2))
	kms.DisableKey(t, keyID) // the old key no longer matters
	time.Sleep(2*interval + time.Second)
	if st := s.status(t)["state"]; st != "Available" {
		t.Fatalf("after moving to a new key and disabling the old one, state = %v", st)
	}
	acked := l.finish()
	if len(acked) < 10 {
		t.Fatalf("only %d commits acknowledged: the ledger did not run", len(acked))
	}
	got := s.superSQL(t, fmt.Sprintf("SELECT count(*) FROM ledger WHERE n <= %d", acked[len(acked)-1]))
	if got != fmt.Sprint(len(acked)) {
		t.Fatalf("ledger holds %s of %d acknowledged rows", got, len(acked))
	}
	amcheck := exec.Command("/usr/lib/postgresql/15/bin/pg_amcheck", "--install-missing", "-h", filepath.Join(s.dataDir, "run", "pg"), "-U", "postgres", "-d", "postgres")
	if out, err := amcheck.CombinedOutput(); err != nil {
		t.Fatalf("pg_amcheck: %v %s", err, out)
	}

	// An unreachable KMS is not a revocation: no Inaccessible within the
	// grace period, but an alert.
	kms.Stop()
	time.Sleep(3 * interval)
	if st := s.status(t)["state"]; st != "Available" {
		t.Fatalf("KMS unreachable for %s (grace 30m): state %v; want Available", 3*interval, st)
	}
	if out := mustCLI(t, s, "key", "show", "-o", "json"); !strings.Contains(out, "grace_since") {
		t.Fatalf("no alert while the KMS is unreachable: %s", out)
	}
	// status: degraded, key_grace running, with when the grace ends.
	if c := wantCondition(t, s, "key_grace", "warning"); !strings.Contains(c["message"].(string), "grace period ends at") {
		t.Fatalf("key_grace = %v; want the grace's end", c)
	}
	kms.Restart(t)
	time.Sleep(2 * interval)
	if out := mustCLI(t, s, "key", "show", "-o", "json"); strings.Contains(out, "grace_since") {
		t.Fatalf("alert not cleared after the KMS came back: %s", out)
	}
	if _, conds := healthOf(t, s); conds["key_grace"] != nil {
		t.Fatalf("key_grace still reported after the KMS came back: %v", conds)
	}
	// With a short grace period, an unreachable KMS does end in Inaccessible.
	mustCLI(t, s, "parameter", "set", "pgshield.key_unavailable_grace", "3s")
	kms.Stop()
	waitState(t, s, "Inaccessible", 3*interval+10*time.Second)
	kms.Restart(t)
	waitState(t, s, "Available", 2*interval+60*time.Second)
}

// checkKeyMetrics: after a revocation and a restore, both transitions and a
// denied revalidation are metrics, on the CLI and over HTTP.
func checkKeyMetrics(t *testing.T, s *server) {
	t.Helper()
	out := mustCLI(t, s, "metrics")
	for _, want := range []string{
		`pgshield_key_state_transitions_total{from="Available",to="Inaccessible"} 1`,
		`pgshield_key_state_transitions_total{from="Inaccessible",to="Available"} 1`,
		`pgshield_key_state{state="Available"} 1`,
		`pgshield_key_revalidations_total{result="denied"}`,
		`pgshield_audit_events_total{outcome="success",type="key.state"} 2`,
		"pgshield_postgres_up 1",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("pgshield metrics lacks %q:\n%s", want, out)
		}
	}
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	mustCLI(t, s, "parameter", "set", "pgshield.metrics_listen", addr)
	defer mustCLI(t, s, "parameter", "set", "pgshield.metrics_listen", "")
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics on pgshield.metrics_listen: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(b), `pgshield_key_state{state="Available"} 1`) {
		t.Errorf("metrics over HTTP lack the key state:\n%s", b)
	}
}
