package fence

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"
)

// fakeClock moves only when the test says so.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	c       chan time.Time
	at      time.Time
	done    bool
	clk     *fakeClock
	stopped bool
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: make(chan time.Time, 1), at: c.now.Add(d), clk: c}
	c.timers = append(c.timers, t)
	c.fireLocked()
	return t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.fireLocked()
}

func (c *fakeClock) fireLocked() {
	live := c.timers[:0]
	for _, t := range c.timers {
		if t.stopped || t.done {
			continue
		}
		if !t.at.After(c.now) {
			t.done = true
			t.c <- c.now
			continue
		}
		live = append(live, t)
	}
	c.timers = live
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }
func (t *fakeTimer) Stop() bool {
	t.clk.mu.Lock()
	defer t.clk.mu.Unlock()
	was := !t.done && !t.stopped
	t.stopped = true
	return was
}

// fakeEtcd answers the two calls the fence makes, as etcd 3.4's JSON
// gateway does, behind TLS that requires a client certificate.
type fakeEtcd struct {
	srv *httptest.Server

	mu        sync.Mutex
	value     string // "" = key missing
	lease     int64
	ttl       int64 // the lease's time left
	hang      bool  // never answer (a partitioned member)
	noQuorum  bool  // answer as a member without quorum does
	onRequest func()
	calls     int
}

func (e *fakeEtcd) set(f func(e *fakeEtcd)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	f(e)
}

func (e *fakeEtcd) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	hang, noQuorum, onRequest := e.hang, e.noQuorum, e.onRequest
	value, lease, ttl := e.value, e.lease, e.ttl
	e.calls++
	e.mu.Unlock()
	if hang {
		// The body read to its end, the server watches the connection and
		// ends the request's context when the client gives up.
		_, _ = io.Copy(io.Discard, r.Body)
		<-r.Context().Done()
		return
	}
	if onRequest != nil {
		onRequest()
	}
	if r.Method != http.MethodPost {
		http.Error(w, "method", http.StatusMethodNotAllowed)
		return
	}
	header := map[string]string{"cluster_id": "1", "member_id": "2", "revision": "9", "raft_term": "3"}
	switch r.URL.Path {
	case "/v3/kv/range":
		var req struct {
			Key          []byte `json:"key"`
			Serializable bool   `json:"serializable"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || string(req.Key) != "/pgshield/pg1/leader" || req.Serializable {
			// The fence must only ever ask linearizably, for its key.
			http.Error(w, `{"error":"unexpected request","code":3}`, http.StatusBadRequest)
			return
		}
		if noQuorum {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`{"error":"etcdserver: request timed out","code":14,"message":"etcdserver: request timed out"}`))
			return
		}
		resp := map[string]any{"header": header}
		if value != "" {
			resp["kvs"] = []map[string]any{{"key": req.Key, "value": []byte(value), "create_revision": "5", "mod_revision": "9",
				"version": "3", "lease": strconv.FormatInt(lease, 10)}}
			resp["count"] = "1"
		}
		_ = json.NewEncoder(w).Encode(resp)
	case "/v3/lease/timetolive":
		var req struct{ ID string }
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.ID != strconv.FormatInt(lease, 10) {
			http.Error(w, `{"error":"unexpected request","code":3}`, http.StatusBadRequest)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"header": header, "ID": req.ID, "TTL": strconv.FormatInt(ttl, 10), "grantedTTL": "10"})
	default:
		http.NotFound(w, r)
	}
}

// pki is a CA, a server certificate for 127.0.0.1 and a client one.
type pki struct {
	roots  *x509.CertPool
	server tls.Certificate
	client tls.Certificate
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leaf := func(serial int64, eku x509.ExtKeyUsage, ips []net.IP) tls.Certificate {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: fmt.Sprint(serial)}, NotBefore: time.Now().Add(-time.Hour),
			NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{eku}, IPAddresses: ips}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
	}
	p := &pki{roots: x509.NewCertPool()}
	p.roots.AddCert(ca)
	p.server = leaf(2, x509.ExtKeyUsageServerAuth, []net.IP{net.IPv4(127, 0, 0, 1)})
	p.client = leaf(3, x509.ExtKeyUsageClientAuth, nil)
	return p
}

func (p *pki) startEtcd(t *testing.T) *fakeEtcd {
	t.Helper()
	e := &fakeEtcd{value: "node1", lease: 7587868, ttl: 9}
	e.srv = httptest.NewUnstartedServer(e)
	e.srv.TLS = &tls.Config{Certificates: []tls.Certificate{p.server}, ClientCAs: p.roots, ClientAuth: tls.RequireAndVerifyClientCert}
	// Handshakes a test refuses on purpose are not news.
	e.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	e.srv.StartTLS()
	t.Cleanup(e.srv.Close)
	return e
}

// harness runs a fence against fake members on a fake clock.
type harness struct {
	t       *testing.T
	clk     *fakeClock
	f       *Fence
	applied chan Status
	fenced  chan Event
	t0      time.Time
	stop    func() // ends Run and waits for it (idempotent)
}

func newHarness(t *testing.T, members []*fakeEtcd, p *pki, tweak func(*Config)) *harness {
	t.Helper()
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	h := &harness{t: t, clk: &fakeClock{now: t0}, applied: make(chan Status, 100), fenced: make(chan Event, 100), t0: t0}
	var eps []string
	for _, m := range members {
		eps = append(eps, m.srv.URL)
	}
	cfg := Config{
		Endpoints: eps,
		TLS:       &tls.Config{RootCAs: p.roots, Certificates: []tls.Certificate{p.client}},
		Namespace: "/pgshield/", Scope: "pg1", Node: "node1",
		TTL: 10 * time.Second, LoopWait: 2 * time.Second, Margin: time.Second,
		Interval:    time.Second,
		CallTimeout: 200 * time.Millisecond,
		Clock:       h.clk,
		OnFence:     func(ev Event) { h.fenced <- ev },
	}
	if tweak != nil {
		tweak(&cfg)
	}
	f, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.testAfterApply = func(s Status) { h.applied <- s }
	h.f = f
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	var once sync.Once
	h.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != context.Canceled {
					t.Errorf("Run = %v, want context.Canceled", err)
				}
			case <-time.After(5 * time.Second):
				t.Error("Run did not return after its context ended")
			}
		})
	}
	t.Cleanup(h.stop)
	return h
}

// round waits for the next round's result.
func (h *harness) round() Status {
	h.t.Helper()
	select {
	case s := <-h.applied:
		return s
	case <-time.After(5 * time.Second):
		h.t.Fatal("no round in 5 s")
		return Status{}
	}
}

// next advances the fake clock by the interval and waits for that round.
func (h *harness) next() Status {
	h.t.Helper()
	h.clk.Advance(h.f.cfg.Interval)
	return h.round()
}

func (h *harness) noFence(within time.Duration) {
	h.t.Helper()
	select {
	case ev := <-h.fenced:
		h.t.Fatalf("fenced at %v (t0+%v): %+v", ev.At, ev.At.Sub(h.t0), ev)
	case <-time.After(within):
	}
}

func (h *harness) fence() Event {
	h.t.Helper()
	select {
	case ev := <-h.fenced:
		return ev
	case <-time.After(5 * time.Second):
		h.t.Fatal("no fence in 5 s")
		return Event{}
	}
}

func TestConfirmed(t *testing.T) {
	p := newPKI(t)
	m := p.startEtcd(t)
	h := newHarness(t, []*fakeEtcd{m}, p, nil)
	s := h.round()
	// ttl 10 - loop_wait 2 = 8 s is shorter than the lease's 9 s left;
	// minus the 1 s margin, from the round's start.
	if s.State != Confirmed || !s.MayWrite || !s.Deadline.Equal(h.t0.Add(7*time.Second)) || !s.LastConfirmed.Equal(h.t0) {
		t.Fatalf("status %+v, want confirmed until t0+7s", s)
	}
	if h.f.Key() != "/pgshield/pg1/leader" || h.f.Budget() != 7*time.Second {
		t.Errorf("key %q budget %v", h.f.Key(), h.f.Budget())
	}
	// Renewed every round: the deadline moves with each confirmation.
	s = h.next()
	if !s.Deadline.Equal(h.t0.Add(8 * time.Second)) {
		t.Errorf("deadline after a second round: t0+%v, want t0+8s", s.Deadline.Sub(h.t0))
	}
	h.noFence(50 * time.Millisecond)
}

func TestLeaseLeftBoundsTheDeadline(t *testing.T) {
	// A Patroni that stopped renewing (frozen): its key still reads as
	// ours, but the lease has 3 s left, and that is what counts.
	p := newPKI(t)
	m := p.startEtcd(t)
	m.set(func(e *fakeEtcd) { e.ttl = 3 })
	h := newHarness(t, []*fakeEtcd{m}, p, nil)
	if s := h.round(); !s.Deadline.Equal(h.t0.Add(2 * time.Second)) {
		t.Fatalf("deadline t0+%v, want t0+2s (3 s left - 1 s margin)", s.Deadline.Sub(h.t0))
	}
	// A lease with 1 s left leaves nothing after the margin: fenced.
	m.set(func(e *fakeEtcd) { e.ttl = 1 })
	h.clk.Advance(2 * time.Second) // the deadline passes, and a round runs
	ev := h.fence()
	if !ev.At.Equal(h.t0.Add(2 * time.Second)) {
		t.Errorf("fenced at t0+%v, want t0+2s", ev.At.Sub(h.t0))
	}
}

func TestStartNotEnd(t *testing.T) {
	// A reply that takes 5 s must not buy 5 s more: the deadline counts
	// from when the read was sent.
	p := newPKI(t)
	m := p.startEtcd(t)
	h := newHarness(t, []*fakeEtcd{m}, p, nil)
	h.round()
	var once sync.Once
	m.set(func(e *fakeEtcd) {
		e.onRequest = func() { once.Do(func() { h.clk.Advance(5 * time.Second) }) }
	})
	s := h.next() // sent at t0+1s, answered at t0+6s
	if !s.Deadline.Equal(h.t0.Add(8 * time.Second)) {
		t.Fatalf("deadline t0+%v after a 5 s reply, want t0+8s (sent at t0+1s)", s.Deadline.Sub(h.t0))
	}
}

func TestKeyNamesAnotherNode(t *testing.T) {
	p := newPKI(t)
	m := p.startEtcd(t)
	h := newHarness(t, []*fakeEtcd{m}, p, nil)
	if s := h.round(); s.State != Confirmed {
		t.Fatalf("first round: %+v", s)
	}
	m.set(func(e *fakeEtcd) { e.value = "node2" })
	s := h.next()
	ev := h.fence()
	// At once, not at the end of the budget.
	if s.State != NotLeader || s.MayWrite || !ev.At.Equal(h.t0.Add(time.Second)) || ev.State != NotLeader {
		t.Fatalf("status %+v, event %+v; want not-leader, fenced at t0+1s", s, ev)
	}
	// Leadership back (a switchover back to this node): allowed again.
	m.set(func(e *fakeEtcd) { e.value = "node1" })
	if s := h.next(); !s.MayWrite {
		t.Errorf("confirmed again but %+v", s)
	}
}

func TestKeyMissing(t *testing.T) {
	p := newPKI(t)
	m := p.startEtcd(t)
	h := newHarness(t, []*fakeEtcd{m}, p, nil)
	h.round()
	m.set(func(e *fakeEtcd) { e.value = "" })
	s := h.next()
	ev := h.fence()
	if s.State != NotLeader || !ev.At.Equal(h.t0.Add(time.Second)) {
		t.Fatalf("status %+v, event %+v; want not-leader, fenced at t0+1s", s, ev)
	}
}

func TestLeaseExpired(t *testing.T) {
	p := newPKI(t)
	m := p.startEtcd(t)
	h := newHarness(t, []*fakeEtcd{m}, p, nil)
	h.round()
	m.set(func(e *fakeEtcd) { e.ttl = -1 })
	if s := h.next(); s.State != NotLeader {
		t.Fatalf("status %+v, want not-leader", s)
	}
	h.fence()
}

func TestAllEndpointsTimeOut(t *testing.T) {
	p := newPKI(t)
	ms := []*fakeEtcd{p.startEtcd(t), p.startEtcd(t), p.startEtcd(t)}
	h := newHarness(t, ms, p, nil)
	if s := h.round(); s.State != Confirmed {
		t.Fatalf("first round: %+v", s)
	}
	for _, m := range ms {
		m.set(func(e *fakeEtcd) { e.hang = true })
	}
	began := time.Now()
	s := h.next()
	// Each member was given its 200 ms, in turn.
	if took := time.Since(began); s.State != Unconfirmed || !s.MayWrite || took < 600*time.Millisecond {
		t.Fatalf("status %+v after %v; want unconfirmed, still writable, after 3 timeouts", s, took)
	}
	for _, m := range ms {
		m.mu.Lock()
		calls := m.calls
		m.mu.Unlock()
		if calls < 1 {
			t.Errorf("a member was not tried: %d calls", calls)
		}
	}
	// Not one millisecond before t0+7s...
	h.clk.Advance(7*time.Second - time.Second - time.Millisecond)
	h.noFence(300 * time.Millisecond)
	if !h.f.MayWrite() {
		t.Fatal("not writable before the deadline")
	}
	// ...and at it, even while a round is stuck in its calls.
	h.clk.Advance(time.Millisecond)
	ev := h.fence()
	if !ev.At.Equal(h.t0.Add(7*time.Second)) || !ev.LastConfirmed.Equal(h.t0) || ev.State != Unconfirmed {
		t.Fatalf("fence %+v, want at t0+7s, last confirmed t0", ev)
	}
	if h.f.MayWrite() {
		t.Error("writable after the fence")
	}
}

func TestMemberWithoutQuorumDoesNotConfirm(t *testing.T) {
	// The local member lost quorum and answers the linearizable read with
	// an error (as etcd does, after its request timeout); the next member
	// confirms. With every member so, nothing confirms.
	p := newPKI(t)
	a, b := p.startEtcd(t), p.startEtcd(t)
	a.set(func(e *fakeEtcd) { e.noQuorum = true })
	h := newHarness(t, []*fakeEtcd{a, b}, p, nil)
	if s := h.round(); s.State != Confirmed {
		t.Fatalf("status %+v, want confirmed through the second member", s)
	}
	b.set(func(e *fakeEtcd) { e.noQuorum = true })
	s := h.next()
	if s.State != Unconfirmed || s.LastError == "" {
		t.Fatalf("status %+v, want unconfirmed with the members' errors", s)
	}
	t.Logf("last error: %s", s.LastError)
}

func TestNeverConfirmedIsFenced(t *testing.T) {
	p := newPKI(t)
	m := p.startEtcd(t)
	m.set(func(e *fakeEtcd) { e.noQuorum = true })
	h := newHarness(t, []*fakeEtcd{m}, p, nil)
	if s := h.round(); s.MayWrite {
		t.Fatalf("writable without any confirmation: %+v", s)
	}
}

func TestWrongServerCertificate(t *testing.T) {
	// A member whose certificate is from another CA is no member.
	p, other := newPKI(t), newPKI(t)
	m := other.startEtcd(t)
	h := newHarness(t, []*fakeEtcd{m}, p, nil)
	if s := h.round(); s.State != Unconfirmed || s.MayWrite {
		t.Fatalf("status %+v, want unconfirmed", s)
	}
}

func TestRunLeavesNoGoroutines(t *testing.T) {
	p := newPKI(t)
	ms := []*fakeEtcd{p.startEtcd(t), p.startEtcd(t)}
	ms[0].set(func(e *fakeEtcd) { e.noQuorum = true }) // both members get called
	before := runtime.NumGoroutine()
	h := newHarness(t, ms, p, nil)
	h.round()
	h.next()
	h.stop()
	// Run's prober and its connections (and the fake members' ends of
	// them) are gone once Run has returned.
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := runtime.NumGoroutine(); got > before {
		t.Errorf("goroutines = %d after Run returned; want <= %d (leak)", got, before)
	}
}

func TestNewRefuses(t *testing.T) {
	p := newPKI(t)
	good := func() Config {
		return Config{Endpoints: []string{"https://10.77.0.11:2379"}, TLS: &tls.Config{Certificates: []tls.Certificate{p.client}},
			Scope: "pg1", Node: "n1", TTL: 10 * time.Second, LoopWait: 2 * time.Second, Margin: time.Second}
	}
	if _, err := New(good()); err != nil {
		t.Fatalf("New(good) = %v", err)
	}
	bad := map[string]func(*Config){
		"plain http":       func(c *Config) { c.Endpoints = []string{"http://10.77.0.11:2379"} },
		"no endpoint":      func(c *Config) { c.Endpoints = nil },
		"no certificate":   func(c *Config) { c.TLS = &tls.Config{} },
		"no node":          func(c *Config) { c.Node = "" },
		"no budget":        func(c *Config) { c.Margin = 8 * time.Second },
		"no margin":        func(c *Config) { c.Margin = 0 },
		"long timeout":     func(c *Config) { c.CallTimeout = 4 * time.Second },
		"path in endpoint": func(c *Config) { c.Endpoints = []string{"https://10.77.0.11:2379/v3"} },
	}
	for name, f := range bad {
		c := good()
		f(&c)
		if _, err := New(c); err == nil {
			t.Errorf("New(%s) = nil error", name)
		}
	}
}

func TestParseRange(t *testing.T) {
	const key = "/pgshield/pg1/leader"
	good := `{"header":{"revision":"9"},"kvs":[{"key":"L3Bnc2hpZWxkL3BnMS9sZWFkZXI=","value":"bm9kZTE=","lease":"42"}],"count":"1"}`
	a, err := parseRange([]byte(good), key)
	if err != nil || !a.Found || a.Value != "node1" || a.Lease != 42 {
		t.Fatalf("parseRange(good) = %+v, %v", a, err)
	}
	if a, err := parseRange([]byte(`{"header":{"revision":"9"}}`), key); err != nil || a.Found {
		t.Fatalf("parseRange(missing) = %+v, %v", a, err)
	}
	for name, body := range map[string]string{
		"error object":  `{"error":"etcdserver: request timed out","code":14}`,
		"another key":   `{"header":{},"kvs":[{"key":"L290aGVy","value":"bm9kZTE=","lease":"42"}]}`,
		"two keys":      `{"header":{},"kvs":[{"key":"L3Bnc2hpZWxkL3BnMS9sZWFkZXI=","value":"bm9kZTE="},{"key":"L3Bnc2hpZWxkL3BnMS9sZWFkZXI=","value":"bm9kZTE="}]}`,
		"count no kvs":  `{"header":{},"count":"1"}`,
		"bad lease":     `{"header":{},"kvs":[{"key":"L3Bnc2hpZWxkL3BnMS9sZWFkZXI=","value":"bm9kZTE=","lease":"x"}]}`,
		"not base64":    `{"header":{},"kvs":[{"key":"!!","value":"bm9kZTE="}]}`,
		"not json":      `<html>`,
		"json null":     `null`,
		"trailing junk": good + "x",
	} {
		if a, err := parseRange([]byte(body), key); err == nil {
			t.Errorf("parseRange(%s) = %+v, want an error", name, a)
		}
	}
}

func TestParseLeaseTTL(t *testing.T) {
	for body, want := range map[string]int64{
		`{"header":{},"ID":"42","TTL":"7","grantedTTL":"10"}`: 7,
		`{"header":{},"ID":"42","TTL":"-1"}`:                  -1,
		`{"header":{},"ID":"42"}`:                             0,
	} {
		if got, err := parseLeaseTTL([]byte(body), 42); err != nil || got != want {
			t.Errorf("parseLeaseTTL(%s) = %d, %v; want %d", body, got, err, want)
		}
	}
	for _, body := range []string{`{"header":{},"ID":"43","TTL":"7"}`, `{"ID":"42","TTL":"7"}`, `{"header":{},"ID":"42","TTL":"-2"}`, `{"header":{},"ID":"42","TTL":"x"}`, `[]`} {
		if got, err := parseLeaseTTL([]byte(body), 42); err == nil {
			t.Errorf("parseLeaseTTL(%s) = %d, want an error", body, got)
		}
	}
}

func FuzzParseRange(f *testing.F) {
	f.Add([]byte(`{"header":{"revision":"9"},"kvs":[{"key":"L3Bnc2hpZWxkL3BnMS9sZWFkZXI=","value":"bm9kZTE=","lease":"42"}],"count":"1"}`))
	f.Add([]byte(`{"header":{}}`))
	f.Add([]byte(`{"error":"etcdserver: request timed out","code":14}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := parseRange(b, "/pgshield/pg1/leader")
		if err != nil && (a.Found || a.Value != "" || a.Lease != 0) {
			t.Fatalf("an error with an answer: %+v", a)
		}
		if !a.Found && (a.Value != "" || a.Lease != 0) {
			t.Fatalf("a value without a key: %+v", a)
		}
	})
}

func FuzzParseLeaseTTL(f *testing.F) {
	f.Add([]byte(`{"header":{},"ID":"42","TTL":"7","grantedTTL":"10"}`))
	f.Add([]byte(`{"header":{},"ID":"42","TTL":"-1"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ttl, err := parseLeaseTTL(b, 42)
		if err == nil && ttl < -1 {
			t.Fatalf("TTL %d accepted", ttl)
		}
	})
}

// TestWatch: watchers hear of every change of MayWrite (a fence by a
// definitive answer, by the deadline, and a confirmation), read MayWrite
// as changed when they are called, and nothing after stop.
func TestWatch(t *testing.T) {
	p := newPKI(t)
	m := p.startEtcd(t)
	h := newHarness(t, []*fakeEtcd{m}, p, nil)
	calls := make(chan bool, 10)
	stop := h.f.Watch(func() { calls <- h.f.MayWrite() })
	heard := func(want bool) {
		t.Helper()
		select {
		case got := <-calls:
			if got != want {
				t.Fatalf("watcher read MayWrite = %v; want %v", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("watcher not called (want MayWrite %v)", want)
		}
	}
	// Confirmed from the start (New starts fenced).
	h.round()
	heard(true)
	m.set(func(e *fakeEtcd) { e.value = "node2" })
	h.next()
	h.fence()
	heard(false)
	m.set(func(e *fakeEtcd) { e.value = "node1" })
	h.next()
	heard(true)
	// The deadline passing with every member hanging.
	m.set(func(e *fakeEtcd) { e.hang = true })
	h.next()
	h.clk.Advance(7 * time.Second)
	h.fence()
	heard(false)
	stop()
	m.set(func(e *fakeEtcd) { e.hang = false })
	h.next()
	select {
	case v := <-calls:
		t.Fatalf("watcher called after stop (MayWrite %v)", v)
	case <-time.After(200 * time.Millisecond):
	}
}
