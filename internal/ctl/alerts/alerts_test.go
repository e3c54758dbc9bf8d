package alerts

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgshield/pgshield/internal/alerting"
	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/config"
)

type recorder struct {
	mu sync.Mutex
	es []audit.Event
}

func (r *recorder) record(e audit.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.es = append(r.es, e)
}

func (r *recorder) types() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.es {
		out = append(out, e.Type)
	}
	return out
}

func params(t *testing.T, set map[string]string) config.Params {
	t.Helper()
	p, err := config.ResolveParams(set)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newController(t *testing.T, set map[string]string) (*Controller, *recorder, *fakeClock) {
	t.Helper()
	rec := &recorder{}
	clk := &fakeClock{t: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)}
	c := New(Config{Layout: config.Layout{Root: t.TempDir()}, Audit: rec.record, Params: params(t, set), Now: clk.now,
		RetryMin: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond, RetryAttempts: 200})
	return c, rec, clk
}

func failure(client, user string) audit.Event {
	return audit.Event{Type: "auth.failure", Outcome: audit.OutcomeFailure, Client: client, User: user, Database: "postgres",
		Reason: "wrong password", Fields: map[string]any{"role_exists": true, "method": "SCRAM-SHA-256"}}
}

func TestRepeatsCountedNotStored(t *testing.T) {
	c, rec, clk := newController(t, map[string]string{"pgshield.alert_bruteforce_role_failures": "0"})
	for i := 0; i < 40; i++ {
		c.Observe(failure("10.0.0.9", "app"))
		clk.advance(time.Second)
	}
	as := c.List()
	if len(as) != 1 || as[0].Type != alerting.TypeBruteForceValid || as[0].Count != 36 || as[0].Severity != "High" {
		t.Fatalf("alerts = %+v; want one brute-force alert counted 36 times", as)
	}
	// Audited at 1, 2, 4, 8, 16, 32: 6 records.
	n := 0
	for _, ty := range rec.types() {
		if ty == alerting.TypeBruteForceValid {
			n++
		}
	}
	if n != 6 {
		t.Errorf("audit records of the alert = %d; want 6", n)
	}
	if got := testutil.ToFloat64(c.raised.WithLabelValues(alerting.TypeBruteForceValid, "High")); got != 1 {
		t.Errorf("pgshield_alerts_total = %v; want 1", got)
	}
	// After an hour of quiet, a repeat is a new alert.
	clk.advance(2 * time.Hour)
	for i := 0; i < 5; i++ {
		c.Observe(failure("10.0.0.9", "app"))
	}
	if n := len(c.List()); n != 2 {
		t.Errorf("after an hour: %d alerts; want 2", n)
	}
}

func TestRateLimitAndBound(t *testing.T) {
	c, _, _ := newController(t, map[string]string{"pgshield.alert_bruteforce_failures": "1"})
	// 2,000 sources, one failure each, at one instant: a flood of new
	// alerts of one type.
	for i := 0; i < 2000; i++ {
		c.Observe(failure("10.1."+itoa(i/250)+"."+itoa(i%250), "app"))
	}
	as := c.List()
	var valid, suppressed int
	for _, a := range as {
		switch a.Type {
		case alerting.TypeBruteForceValid:
			valid++
		case alerting.TypeSuppressed:
			suppressed++
			if a.Count < 1900 {
				t.Errorf("suppressed alert counts %d; want the excess", a.Count)
			}
		}
	}
	if valid > burst+2 || suppressed != 1 {
		t.Errorf("valid=%d suppressed=%d; want at most the burst and one suppressed alert", valid, suppressed)
	}
	// A High alert survives a flood of Low ones in a full store.
	c2, _, clk := newController(t, nil)
	c2.mu.Lock()
	c2.raiseLocked(alerting.Finding{Type: alerting.TypeDecoyTable, Key: "x"})
	for i := 0; i < MaxAlerts+50; i++ {
		clk.advance(time.Minute) // refills the bucket
		c2.raiseLocked(alerting.Finding{Type: alerting.TypeSourceNotSeen, Key: itoa(i)})
	}
	c2.mu.Unlock()
	as = c2.List()
	if len(as) != MaxAlerts || as[len(as)-1].Type != alerting.TypeDecoyTable {
		t.Errorf("store has %d alerts, oldest %s; want %d with the High one kept", len(as), as[len(as)-1].Type, MaxAlerts)
	}
}

func itoa(i int) string {
	return strings.TrimSpace(strings.Replace(time.Duration(i).String(), "ns", "", 1))
}

func TestPersistAndDismiss(t *testing.T) {
	c, rec, clk := newController(t, nil)
	name := "evil\n\"quote\"\x00" + strings.Repeat("x", 500)
	for i := 0; i < 5; i++ {
		c.Observe(failure("10.0.0.9", name))
	}
	as := c.List()
	if len(as) != 1 || len(as[0].User) > alerting.MaxName {
		t.Fatalf("alerts = %+v; want one with a bounded user", as)
	}
	id := as[0].ID
	if _, err := c.Dismiss(id); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Dismiss("nope"); err == nil {
		t.Errorf("Dismiss(unknown) succeeded")
	}
	st, err := os.Stat(StateFile(c.cfg.Layout))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("state file: %v %v; want 0600", err, st)
	}
	b, _ := os.ReadFile(StateFile(c.cfg.Layout))
	if !json.Valid(b) {
		t.Fatalf("state file is not JSON")
	}
	c2 := New(Config{Layout: c.cfg.Layout, Audit: rec.record, Params: params(t, nil), Now: clk.now})
	a, err := c2.Get(id)
	if err != nil || !a.Dismissed || a.User != as[0].User {
		t.Fatalf("after reload Get(%s) = %+v, %v; want the dismissed alert", id, a, err)
	}
	// Every audit record of it is valid JSON with the name escaped.
	for _, e := range rec.es {
		if _, err := json.Marshal(e); err != nil {
			t.Errorf("event %s does not marshal: %v", e.Type, err)
		}
	}
	// A corrupt file is reported, not fatal.
	os.WriteFile(StateFile(c.cfg.Layout), []byte("{not json"), 0o600)
	rec2 := &recorder{}
	c3 := New(Config{Layout: c.cfg.Layout, Audit: rec2.record, Params: params(t, nil), Now: clk.now})
	if len(c3.List()) != 0 || len(rec2.types()) != 1 || rec2.types()[0] != "alert.state" {
		t.Errorf("corrupt state: alerts %d, events %v", len(c3.List()), rec2.types())
	}
}

func TestDecoyIndex(t *testing.T) {
	c, _, _ := newController(t, nil)
	c.mu.decoys = []*decoy{{OID: 1}}
	c.mu.decoys[0].Kind, c.mu.decoys[0].Name, c.mu.decoys[0].Database = "table", "finance.payroll", "postgres"
	// The same table name as a decoy in a database with a hostile name.
	hostile := "evil\" db'; DROP DATABASE postgres; --\n"
	c.mu.decoys = append(c.mu.decoys, &decoy{OID: 2, Decoy: apitype.Decoy{Kind: "table", Name: "hr.salaries", Database: hostile}})
	x := decoyIndex{c}
	if name, ok := x.DecoyTable(hostile, `hr."salaries"`); !ok || name != "hr.salaries" {
		t.Errorf("the decoy in database %q: %q %v", hostile, name, ok)
	}
	for _, db := range []string{"postgres", "evil", strings.TrimSuffix(hostile, "\n")} {
		if _, ok := x.DecoyTable(db, "hr.salaries"); ok {
			t.Errorf("hr.salaries matched in database %q", db)
		}
	}
	for obj, want := range map[string]bool{"finance.payroll": true, `"finance"."payroll"`: true, `finance."payroll"`: true,
		"public.payroll": false, `"finance.payroll"`: false, "finance.payroll.x": false} {
		if _, got := x.DecoyTable("postgres", obj); got != want {
			t.Errorf("DecoyTable(%q) = %v; want %v", obj, got, want)
		}
	}
	if _, ok := x.DecoyTable("other", "finance.payroll"); ok {
		t.Errorf("a table in another database matched")
	}
}

// tlsReceiver is an HTTPS receiver that can be down; certFile is its CA.
type tlsReceiver struct {
	srv      *httptest.Server
	certFile string
	mu       sync.Mutex
	down     bool
	got      []Payload
}

func newReceiver(t *testing.T) *tlsReceiver {
	r := &tlsReceiver{}
	r.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.down {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		b, _ := io.ReadAll(req.Body)
		var p Payload
		if err := json.Unmarshal(b, &p); err != nil || req.Header.Get("Content-Type") != "application/json" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		r.got = append(r.got, p)
	}))
	t.Cleanup(r.srv.Close)
	r.certFile = filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.srv.Certificate().Raw})
	if err := os.WriteFile(r.certFile, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *tlsReceiver) setDown(d bool) { r.mu.Lock(); r.down = d; r.mu.Unlock() }
func (r *tlsReceiver) count() int     { r.mu.Lock(); defer r.mu.Unlock(); return len(r.got) }

func TestWebhookDownThenBack(t *testing.T) {
	r := newReceiver(t)
	c, _, _ := newController(t, map[string]string{"pgshield.alert_webhook_url": r.srv.URL + "/hook?token=s3cret",
		"pgshield.alert_webhook_ca_file": r.certFile, "pgshield.alert_harmful_applications": "sqlmap"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.hook.run(ctx)
	r.setDown(true)
	// Raising is never slowed by a receiver that is down.
	start := time.Now()
	for i := 0; i < 3; i++ {
		e := failure("10.0.0."+itoa(i+1), "app")
		e.Fields["application_name"] = "sqlmap/1.7"
		c.Observe(e)
	}
	if took := time.Since(start); took > 100*time.Millisecond {
		t.Errorf("Observe took %v with the receiver down", took)
	}
	time.Sleep(300 * time.Millisecond)
	if r.count() != 0 {
		t.Fatalf("delivered while down")
	}
	r.setDown(false)
	deadline := time.Now().Add(10 * time.Second)
	for r.count() < 3 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if r.count() != 3 {
		t.Fatalf("delivered %d of 3 after the receiver came back", r.count())
	}
	r.mu.Lock()
	p := r.got[0]
	r.mu.Unlock()
	if p.Type != alerting.TypeHarmfulApplication || p.Severity != "High" || p.ID == "" || p.Source != "pgshield" {
		t.Errorf("payload = %+v", p)
	}
	b, _ := json.Marshal(p)
	if strings.Contains(string(b), "s3cret") || strings.Contains(string(b), "key") {
		t.Errorf("payload carries the URL token or the dedup key: %s", b)
	}
	// The sender counts a delivery after the receiver's answer reaches it,
	// which can be just after the receiver has counted the post.
	delivered := func() float64 { return testutil.ToFloat64(c.results.WithLabelValues("delivered")) }
	for deadline := time.Now().Add(5 * time.Second); delivered() < 3 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if got := delivered(); got != 3 {
		t.Errorf("delivered counter = %v", got)
	}
}

func TestWebhookQueueBoundAndTLSVerified(t *testing.T) {
	r := newReceiver(t)
	// No CA file: the receiver's self-signed certificate is refused.
	c, _, _ := newController(t, map[string]string{"pgshield.alert_webhook_url": r.srv.URL,
		"pgshield.alert_bruteforce_failures": "1"})
	// The delivery goroutine is not running: the queue fills and the rest
	// is dropped and counted, without waiting.
	start := time.Now()
	for i := 0; i < 300; i++ {
		c.hook.Enqueue(Payload{ID: itoa(i)})
	}
	if time.Since(start) > 100*time.Millisecond {
		t.Errorf("Enqueue waited")
	}
	if got := testutil.ToFloat64(c.results.WithLabelValues("dropped")); got != 300-256 {
		t.Errorf("dropped = %v; want %d", got, 300-256)
	}
	err := c.hook.post(context.Background(), []byte(`{}`))
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("post to an unverified certificate = %v; want a certificate error", err)
	}
	if r.count() != 0 {
		t.Errorf("the unverified receiver got %d posts", r.count())
	}
}
