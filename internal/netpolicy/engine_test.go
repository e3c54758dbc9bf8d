package netpolicy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: t0} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// recorder is a persist function that keeps what it was given.
type recorder struct {
	mu    sync.Mutex
	saved []*Policy
}

func (r *recorder) persist(p *Policy) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.saved = append(r.saved, p)
	return nil
}

func (r *recorder) last() *Policy {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.saved) == 0 {
		return nil
	}
	return r.saved[len(r.saved)-1]
}

func failingPersist(*Policy) error { return errors.New("disk full") }

// deniedCounter counts onDenied calls for one session.
type deniedCounter struct {
	n    atomic.Int32
	last atomic.Pointer[Decision]
}

func (c *deniedCounter) onDenied(d Decision) {
	c.n.Add(1)
	c.last.Store(&d)
}

func newTestEngine(t *testing.T, p *Policy, opts ...Option) *Engine {
	t.Helper()
	e, err := NewEngine(p, opts...)
	if err != nil {
		t.Fatalf("NewEngine(%+v) error = %v", p, err)
	}
	return e
}

func TestNewEngine(t *testing.T) {
	if e, err := NewEngine(nil); err == nil {
		t.Fatalf("NewEngine(nil) = %v; want an error", e)
	}
	bad := &Policy{FirewallRules: []FirewallRule{fw("r", "10.0.0.2", "10.0.0.1")}}
	if e, err := NewEngine(bad); !errors.Is(err, ErrInvalidPolicy) {
		t.Fatalf("NewEngine(invalid) = %v, %v; want an ErrInvalidPolicy error", e, err)
	}
	p := &Policy{Mode: "Public", FirewallRules: []FirewallRule{fw("r", "::ffff:10.0.0.1", "10.0.0.2")}}
	e := newTestEngine(t, p)
	if p.Mode != "Public" || p.FirewallRules[0].StartIP != a("::ffff:10.0.0.1") {
		t.Errorf("NewEngine changed its argument: %+v", p)
	}
	snap := e.Snapshot()
	if snap.Mode != ModePublic || snap.FirewallRules[0].StartIP != a("10.0.0.1") {
		t.Errorf("Snapshot() = %+v; want the normalised policy", snap)
	}
	snap.FirewallRules[0].Name = "changed"
	if e.Snapshot().FirewallRules[0].Name != "r" {
		t.Error("changing a Snapshot changed the engine's policy")
	}
}

func TestEngineCheckCountsHits(t *testing.T) {
	clk := newFakeClock()
	e := newTestEngine(t, &Policy{Mode: ModePrivate, NetworkRules: []NetworkRule{
		rule("deny", 100, "Deny", "10.0.0.0/8", "*"),
		rule("allow", 200, "Allow", "*", "5432"),
		{Name: "out", Priority: 100, Access: "Allow", Direction: "Outbound", DestinationPrefix: "*", DestinationPorts: "443"},
	}, FirewallRules: []FirewallRule{fw("fw", "1.1.1.1", "1.1.1.1")}}, WithClock(clk.Now))

	checks := []struct {
		src       string
		port      uint16
		wantAllow bool
	}{
		{"10.1.1.1", 5432, false},
		{"192.0.2.1", 5432, true},
		{"192.0.2.2", 5432, true},
		{"192.0.2.2", 5433, false}, // default deny: no rule counted
	}
	for _, c := range checks {
		if d := e.Check(a(c.src), c.port); d.Allowed != c.wantAllow {
			t.Fatalf("Check(%s, %d) = %+v; want Allowed=%v", c.src, c.port, d, c.wantAllow)
		}
		clk.Add(time.Second)
	}
	if d := e.CheckOutbound(a("192.0.2.9"), 443); !d.Allowed || d.Rule != "out" {
		t.Fatalf("CheckOutbound(192.0.2.9, 443) = %+v; want allowed by out", d)
	}
	want := []RuleStats{
		{Name: "fw", Kind: KindFirewall},
		{Name: "deny", Kind: KindNetwork, Hits: 1, LastUsed: t0},
		{Name: "allow", Kind: KindNetwork, Hits: 2, LastUsed: t0.Add(2 * time.Second)},
		{Name: "out", Kind: KindNetwork, Hits: 1, LastUsed: t0.Add(4 * time.Second)},
	}
	if got := e.Stats(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Stats() = %+v; want %+v", got, want)
	}

	// Counters survive an update that keeps the name (in another case),
	// and go with the rule.
	err := e.Update(func(p *Policy) error {
		p.NetworkRules[1].Name = "ALLOW"
		p.NetworkRules[1].Priority = 300
		p.DeleteNetworkRule("deny")
		return nil
	})
	if err != nil {
		t.Fatalf("Update() error = %v", err)
	}
	want = []RuleStats{
		{Name: "fw", Kind: KindFirewall},
		{Name: "ALLOW", Kind: KindNetwork, Hits: 2, LastUsed: t0.Add(2 * time.Second)},
		{Name: "out", Kind: KindNetwork, Hits: 1, LastUsed: t0.Add(4 * time.Second)},
	}
	if got := e.Stats(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Stats() after update = %+v; want %+v", got, want)
	}
}

func TestEngineUpdate(t *testing.T) {
	clk := newFakeClock()
	rec := &recorder{}
	e := newTestEngine(t, &Policy{}, WithClock(clk.Now), WithPersist(rec.persist))
	if d := e.Check(a("203.0.113.5"), 5432); d.Allowed {
		t.Fatalf("Check() on an empty policy = %+v; want deny", d)
	}
	err := e.Update(func(p *Policy) error {
		p.SetFirewallRule(fw("office", "203.0.113.0", "203.0.113.255"))
		return nil
	})
	if err != nil {
		t.Fatalf("Update(add office) error = %v", err)
	}
	if d := e.Check(a("203.0.113.5"), 5432); !d.Allowed || d.Rule != "office" {
		t.Fatalf("Check() after Update = %+v; want allowed by office", d)
	}
	saved := rec.last()
	if saved == nil || len(saved.FirewallRules) != 1 || !saved.FirewallRules[0].CreatedAt.Equal(t0) {
		t.Fatalf("persisted %+v; want office with CreatedAt %v", saved, t0)
	}
	// The persisted copy is the persister's own.
	saved.FirewallRules[0].Name = "mine"
	if e.Snapshot().FirewallRules[0].Name != "office" {
		t.Fatal("changing the persisted policy changed the engine's")
	}

	// Replacing a rule keeps its CreatedAt; a new rule gets now.
	clk.Add(time.Hour)
	err = e.Update(func(p *Policy) error {
		p.SetFirewallRule(fw("office", "203.0.113.0", "203.0.113.127"))
		p.SetFirewallRule(fw("home", "198.51.100.1", "198.51.100.1"))
		return nil
	})
	if err != nil {
		t.Fatalf("Update(replace office) error = %v", err)
	}
	got := e.Snapshot().FirewallRules
	if !got[0].CreatedAt.Equal(t0) || !got[1].CreatedAt.Equal(t0.Add(time.Hour)) {
		t.Fatalf("CreatedAt after replace = %v, %v; want %v, %v", got[0].CreatedAt, got[1].CreatedAt, t0, t0.Add(time.Hour))
	}
}

func TestEngineUpdateFailureKeepsPolicy(t *testing.T) {
	start := &Policy{FirewallRules: []FirewallRule{fw("office", "203.0.113.0", "203.0.113.255")}}
	errFn := errors.New("no such rule")
	tests := []struct {
		name    string
		persist func(*Policy) error
		fn      func(*Policy) error
		wantIs  error
		wantMsg string
	}{
		{name: "persist fails", persist: failingPersist, fn: func(p *Policy) error {
			p.FirewallRules = nil
			return nil
		}, wantMsg: "persisting network policy: disk full"},
		{name: "validation fails", fn: func(p *Policy) error {
			p.FirewallRules[0].StartIP = a("203.0.114.0") // after end
			return nil
		}, wantIs: ErrInvalidPolicy, wantMsg: `firewall rule "office": start_ip`},
		{name: "fn fails after editing", fn: func(p *Policy) error {
			p.FirewallRules = nil
			return errFn
		}, wantIs: errFn, wantMsg: "no such rule"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			persist := tt.persist
			if persist == nil {
				persist = rec.persist
			}
			e := newTestEngine(t, start, WithPersist(persist), WithClock(newFakeClock().Now))
			var denied deniedCounter
			defer e.Register(a("203.0.113.7"), 5432, denied.onDenied)()
			before := e.Snapshot()

			err := e.Update(tt.fn)
			if err == nil || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("Update() error = %v; want one containing %q", err, tt.wantMsg)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("errors.Is(%v, %v) = false; want true", err, tt.wantIs)
			}
			if got := e.Snapshot(); !reflect.DeepEqual(got, before) {
				t.Errorf("Snapshot() after failed Update = %+v; want %+v", got, before)
			}
			if d := e.Check(a("203.0.113.7"), 5432); !d.Allowed {
				t.Errorf("Check() after failed Update = %+v; want still allowed", d)
			}
			if n := denied.n.Load(); n != 0 {
				t.Errorf("onDenied called %d times after failed Update; want 0", n)
			}
			if rec.last() != nil {
				t.Errorf("persisted %+v after failed Update; want nothing", rec.last())
			}
		})
	}
}

func TestEngineLiveRecheck(t *testing.T) {
	e := newTestEngine(t, &Policy{FirewallRules: []FirewallRule{fw("lan", "10.0.0.0", "10.0.0.255")}},
		WithClock(newFakeClock().Now))
	var inside, removed, unregistered deniedCounter
	defer e.Register(a("10.0.0.5"), 5432, inside.onDenied)()
	defer e.Register(a("::ffff:10.0.0.200"), 5432, removed.onDenied)()
	e.Register(a("10.0.0.201"), 5432, unregistered.onDenied)()
	if n := e.Sessions(); n != 2 {
		t.Fatalf("Sessions() = %d; want 2", n)
	}

	narrow := func(p *Policy) error {
		p.FirewallRules[0].EndIP = a("10.0.0.100")
		return nil
	}
	if err := e.Update(narrow); err != nil {
		t.Fatalf("Update(narrow) error = %v", err)
	}
	if n := removed.n.Load(); n != 1 {
		t.Fatalf("onDenied for 10.0.0.200 called %d times; want 1", n)
	}
	if d := removed.last.Load(); d.Allowed || d.Rule != "" {
		t.Errorf("onDenied(%+v); want a default-deny decision", *d)
	}
	if n := inside.n.Load(); n != 0 {
		t.Fatalf("onDenied for 10.0.0.5 (still inside) called %d times; want 0", n)
	}
	if n := unregistered.n.Load(); n != 0 {
		t.Fatalf("onDenied for an unregistered session called %d times; want 0", n)
	}
	if n := e.Sessions(); n != 1 {
		t.Fatalf("Sessions() after the denial = %d; want 1", n)
	}
	// Another change leaves the ended session alone.
	if err := e.Update(func(p *Policy) error { p.FirewallRules[0].Name = "lan2"; return nil }); err != nil {
		t.Fatal(err)
	}
	if n := removed.n.Load(); n != 1 {
		t.Fatalf("onDenied for 10.0.0.200 called %d times after a second update; want 1", n)
	}
	// Switching to private mode with no network rules ends everything.
	if err := e.Update(func(p *Policy) error { p.Mode = ModePrivate; return nil }); err != nil {
		t.Fatal(err)
	}
	if n := inside.n.Load(); n != 1 {
		t.Fatalf("onDenied for 10.0.0.5 after switching to private called %d times; want 1", n)
	}
}

func TestEngineRegisterDenied(t *testing.T) {
	e := newTestEngine(t, &Policy{})
	var c deniedCounter
	unregister := e.Register(a("192.0.2.1"), 5432, c.onDenied)
	if n := c.n.Load(); n != 1 {
		t.Fatalf("Register of a denied source called onDenied %d times before returning; want 1", n)
	}
	if n := e.Sessions(); n != 0 {
		t.Fatalf("Sessions() after a denied Register = %d; want 0", n)
	}
	if err := e.Update(func(p *Policy) error { p.Mode = ModePrivate; return nil }); err != nil {
		t.Fatal(err)
	}
	if n := c.n.Load(); n != 1 {
		t.Fatalf("onDenied called %d times after a later Update; want exactly 1", n)
	}
	unregister()
	unregister()
	if n := e.Sessions(); n != 0 {
		t.Fatalf("Sessions() = %d; want 0", n)
	}
	e.Register(a("192.0.2.1"), 5432, nil)() // nil callback is allowed
}

// TestEngineCallbackMayReenter checks onDenied runs with no lock held: it
// may call back into the engine, even Update.
func TestEngineCallbackMayReenter(t *testing.T) {
	e := newTestEngine(t, &Policy{FirewallRules: []FirewallRule{fw("a", "10.0.0.1", "10.0.0.1")}})
	done := make(chan struct{})
	e.Register(a("10.0.0.1"), 5432, func(Decision) {
		defer close(done)
		_ = e.Sessions()
		_ = e.Stats()
		e.Register(a("10.0.0.2"), 5432, nil)()
		if err := e.Update(func(p *Policy) error { p.Mode = ModePublic; return nil }); err != nil {
			t.Errorf("Update from onDenied error = %v", err)
		}
	})
	go func() {
		_ = e.Update(func(p *Policy) error { p.FirewallRules = nil; return nil })
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("onDenied did not finish: deadlock?")
	}
}

func TestEngineExpiry(t *testing.T) {
	clk := newFakeClock()
	rec := &recorder{}
	e := newTestEngine(t, &Policy{FirewallRules: []FirewallRule{
		{Name: "temp", StartIP: a("192.0.2.1"), EndIP: a("192.0.2.1"), ExpiresAt: t0.Add(time.Minute)},
		{Name: "later", StartIP: a("192.0.2.2"), EndIP: a("192.0.2.2"), ExpiresAt: t0.Add(time.Hour)},
		fw("keep", "192.0.2.3", "192.0.2.3"),
	}}, WithClock(clk.Now), WithPersist(rec.persist))
	var temp, keep deniedCounter
	defer e.Register(a("192.0.2.1"), 5432, temp.onDenied)()
	defer e.Register(a("192.0.2.3"), 5432, keep.onDenied)()

	if err := e.Tick(); err != nil || rec.last() != nil {
		t.Fatalf("Tick() before any expiry = %v, persisted %+v; want nil and nothing", err, rec.last())
	}
	clk.Add(time.Minute - time.Nanosecond)
	if d := e.Check(a("192.0.2.1"), 5432); !d.Allowed {
		t.Fatalf("Check() just before expiry = %+v; want allowed", d)
	}
	clk.Add(time.Nanosecond)
	// Decisions ignore the expired rule even before Tick removes it.
	if d := e.Check(a("192.0.2.1"), 5432); d.Allowed {
		t.Fatalf("Check() at expiry = %+v; want denied", d)
	}
	if err := e.Tick(); err != nil {
		t.Fatalf("Tick() error = %v", err)
	}
	if n := temp.n.Load(); n != 1 {
		t.Fatalf("onDenied for the expired rule's session called %d times; want 1", n)
	}
	if n := keep.n.Load(); n != 0 {
		t.Fatalf("onDenied for a session of a lasting rule called %d times; want 0", n)
	}
	saved := rec.last()
	if saved == nil || len(saved.FirewallRules) != 2 || saved.FirewallRules[0].Name != "later" {
		t.Fatalf("persisted after expiry %+v; want later and keep", saved)
	}
	if got := len(e.Snapshot().FirewallRules); got != 2 {
		t.Fatalf("Snapshot() has %d firewall rules after expiry; want 2", got)
	}
	if err := e.Tick(); err != nil {
		t.Fatal(err)
	}
	if n := temp.n.Load(); n != 1 {
		t.Fatalf("onDenied called %d times after a second Tick; want exactly 1", n)
	}
}

func TestEngineExpiryPersistFails(t *testing.T) {
	clk := newFakeClock()
	e := newTestEngine(t, &Policy{Mode: ModePrivate, NetworkRules: []NetworkRule{
		{Name: "temp", Priority: 100, Access: "Allow", SourcePrefix: "10.0.0.0/8", ExpiresAt: t0.Add(time.Second)},
	}}, WithClock(clk.Now), WithPersist(failingPersist))
	var c deniedCounter
	defer e.Register(a("10.1.1.1"), 5432, c.onDenied)()
	clk.Add(time.Second)
	if err := e.Tick(); err == nil {
		t.Fatal("Tick() with a failing persist = nil; want the error")
	}
	if n := c.n.Load(); n != 1 {
		t.Fatalf("onDenied called %d times; want 1 even though removal was not persisted", n)
	}
	if got := len(e.Snapshot().NetworkRules); got != 1 {
		t.Fatalf("Snapshot() has %d network rules; want the unpersisted removal abandoned (1)", got)
	}
}

func TestEngineRun(t *testing.T) {
	clk := newFakeClock()
	rec := &recorder{}
	e := newTestEngine(t, &Policy{FirewallRules: []FirewallRule{
		{Name: "temp", StartIP: a("192.0.2.1"), EndIP: a("192.0.2.1"), ExpiresAt: t0.Add(time.Minute)},
	}}, WithClock(clk.Now), WithPersist(rec.persist))
	denied := make(chan Decision, 1)
	defer e.Register(a("192.0.2.1"), 5432, func(d Decision) { denied <- d })()

	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		e.Run(ctx)
	}()
	clk.Add(time.Minute)
	select {
	case d := <-denied:
		if d.Allowed {
			t.Errorf("onDenied(%+v); want a denial", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not remove the expired rule within 5s")
	}
	if saved := rec.last(); saved == nil || len(saved.FirewallRules) != 0 {
		t.Errorf("persisted %+v; want no firewall rules", saved)
	}
	cancel()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

func TestEngineConcurrent(t *testing.T) {
	e := newTestEngine(t, &Policy{Mode: ModePrivate, NetworkRules: []NetworkRule{
		rule("lan", 100, "Allow", "10.0.0.0/8", "5432"),
	}}, WithLogger(slog.New(slog.DiscardHandler)))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var wg sync.WaitGroup
	var deniedCalls, registered atomic.Int64
	for i := range 8 {
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				src := netip.AddrFrom4([4]byte{10, byte(i), byte(n >> 8), byte(n)})
				_ = e.Check(src, 5432)
				if n%16 == 0 {
					registered.Add(1)
					var once atomic.Int32
					unregister := e.Register(src, 5432, func(Decision) {
						if once.Add(1) != 1 {
							t.Errorf("onDenied for %v called twice", src)
						}
						deniedCalls.Add(1)
					})
					if n%32 == 0 {
						unregister()
					}
				}
				_ = e.Stats()
			}
		})
	}
	for i := range 2 {
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				err := e.Update(func(p *Policy) error {
					name := fmt.Sprintf("r%d", i)
					if n%2 == 0 {
						p.SetNetworkRule(rule(name, 200+i, "Deny", fmt.Sprintf("10.%d.0.0/16", n%8), "*"))
					} else {
						p.DeleteNetworkRule(name)
					}
					return nil
				})
				if err != nil {
					t.Errorf("Update() error = %v", err)
				}
				_ = e.Snapshot()
			}
		})
	}
	wg.Wait()
	if registered.Load() == 0 {
		t.Fatal("no sessions registered")
	}
	t.Logf("%d sessions registered, %d denied", registered.Load(), deniedCalls.Load())
}

// accessPolicy is the gateway's AccessPolicy interface, copied to check
// PortPolicy fits it without importing the gateway.
type accessPolicy interface {
	Allow(src netip.Addr) (ok bool, rule string)
	Watch(src netip.Addr, onDenied func()) (stop func())
}

var _ accessPolicy = PortPolicy{}

func TestForPort(t *testing.T) {
	e := newTestEngine(t, &Policy{Mode: ModePrivate, NetworkRules: []NetworkRule{rule("pg", 100, "Allow", "*", "5432")}})
	pg, other := e.ForPort(5432), e.ForPort(6432)
	if ok, r := pg.Allow(a("10.0.0.1")); !ok || r != "pg" {
		t.Fatalf("ForPort(5432).Allow() = %v, %q; want true, pg", ok, r)
	}
	if ok, r := other.Allow(a("10.0.0.1")); ok || r != "" {
		t.Fatalf("ForPort(6432).Allow() = %v, %q; want false, \"\"", ok, r)
	}
	var n atomic.Int32
	defer pg.Watch(a("10.0.0.1"), func() { n.Add(1) })()
	if err := e.Update(func(p *Policy) error { p.NetworkRules[0].DestinationPorts = "6432"; return nil }); err != nil {
		t.Fatal(err)
	}
	if n.Load() != 1 {
		t.Fatalf("Watch callback called %d times; want 1", n.Load())
	}
}

func BenchmarkCheck(b *testing.B) {
	p := &Policy{Mode: ModePrivate}
	for i := range 50 {
		p.NetworkRules = append(p.NetworkRules, rule(fmt.Sprintf("r%d", i), 100+i, "Allow", fmt.Sprintf("10.%d.0.0/16", i), "5432"))
	}
	e, err := NewEngine(p)
	if err != nil {
		b.Fatal(err)
	}
	src := a("10.49.1.1")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if !e.Check(src, 5432).Allowed {
				b.Fatal("denied")
			}
		}
	})
}
