package netpolicy

import (
	"testing"
	"time"
)

// An expiry is a wall-clock time (--expires-at by definition, --expires-in
// turned into one when the rule is made, and persisted as such): the rule
// applies until the system clock reaches it, whatever jumps the clock
// made meanwhile. A jump back keeps it; a jump forward past it removes it
// at once and re-checks the sessions it admitted.
func TestEngineExpiryClockJumps(t *testing.T) {
	clk := newFakeClock()
	rec := &recorder{}
	e := newTestEngine(t, &Policy{FirewallRules: []FirewallRule{
		{Name: "temp", StartIP: a("192.0.2.1"), EndIP: a("192.0.2.1"), ExpiresAt: t0.Add(10 * time.Minute)},
		fw("keep", "192.0.2.3", "192.0.2.3"),
	}}, WithClock(clk.Now), WithPersist(rec.persist))
	var temp deniedCounter
	defer e.Register(a("192.0.2.1"), 5432, temp.onDenied)()

	clk.Add(-time.Hour) // back
	if err := e.Tick(); err != nil || rec.last() != nil {
		t.Fatalf("Tick() after a jump back = %v, persisted %+v; want nothing removed", err, rec.last())
	}
	if d := e.Check(a("192.0.2.1"), 5432); !d.Allowed || temp.n.Load() != 0 {
		t.Fatalf("Check() after a jump back = %+v (denials %d); want allowed", d, temp.n.Load())
	}
	clk.Add(time.Hour + 10*time.Minute - time.Second) // a second before the expiry by the wall clock
	if err := e.Tick(); err != nil || rec.last() != nil {
		t.Fatalf("Tick() a second before the expiry = %v, persisted %+v; want nothing removed", err, rec.last())
	}
	clk.Add(2 * time.Hour) // forward, past the expiry
	if d := e.Check(a("192.0.2.1"), 5432); d.Allowed {
		t.Fatalf("Check() after a jump past the expiry = %+v; want denied", d)
	}
	if err := e.Tick(); err != nil {
		t.Fatal(err)
	}
	if n := temp.n.Load(); n != 1 {
		t.Fatalf("onDenied called %d times after the jump; want 1", n)
	}
	if saved := rec.last(); saved == nil || len(saved.FirewallRules) != 1 || saved.FirewallRules[0].Name != "keep" {
		t.Fatalf("persisted %+v; want only keep", saved)
	}
}
