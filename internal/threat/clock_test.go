package threat

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// hasMonotonic reports whether t carries a monotonic clock reading (its
// String ends in "m=±..."): comparisons between two such times ignore the
// wall clock, so a jump of the system clock does not move them.
func hasMonotonic(t time.Time) bool { return strings.Contains(t.String(), " m=") }

// A ban saved to the file and loaded after the wall clock moved: going
// back never makes it longer than it was set for, going forward past its
// end ends it (the file's times are wall-clock deadlines: nothing else
// survives a restart).
func TestLoadedBanAfterClockJumps(t *testing.T) {
	path := filepath.Join(t.TempDir(), "threat", "state.json")
	cfg := DefaultConfig()
	g, clock := newGuard(t, cfg, WithFile(path))
	b := fail(g, attacker, "alice", 5)
	if b == nil || b.Until.Sub(b.At) != 10*time.Minute {
		t.Fatalf("ban = %+v; want 10 minutes", b)
	}
	if err := g.Save(); err != nil {
		t.Fatal(err)
	}
	saved := clock.Now()
	for _, tc := range []struct {
		name string
		jump time.Duration
		left time.Duration // 0: no ban in force
	}{
		{"back one hour", -time.Hour, 10 * time.Minute},
		{"back one day", -24 * time.Hour, 10 * time.Minute},
		{"forward three minutes", 3 * time.Minute, 7 * time.Minute},
		{"forward past the end", time.Hour, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &fakeClock{t: saved.Add(tc.jump)}
			g2 := New(cfg, WithClock(c.Now), WithFile(path))
			if err := g2.Load(); err != nil {
				t.Fatal(err)
			}
			bans := g2.Bans()
			if tc.left == 0 {
				if len(bans) != 0 || g2.Admit(attacker).Refusal != OK {
					t.Fatalf("bans = %+v; want none in force", bans)
				}
				return
			}
			if len(bans) != 1 || bans[0].Until.Sub(c.Now()) != tc.left || bans[0].Until.Sub(bans[0].At) != 10*time.Minute {
				t.Fatalf("bans = %+v at %v; want one ending in %v, 10 minutes long", bans, c.Now(), tc.left)
			}
			c.Advance(tc.left - time.Second)
			if a := g2.Admit(attacker); a.Refusal != Banned {
				t.Errorf("a second before the end: %v; want Banned", a.Refusal)
			}
			c.Advance(time.Second)
			if a := g2.Admit(attacker); a.Refusal != OK {
				t.Errorf("at the end: %v; want OK", a.Refusal)
			}
			// The history is kept: the next ban doubles.
			if b := fail(g2, attacker, "alice", 5); b == nil || b.Count != 2 {
				t.Errorf("next ban = %+v; want the second", b)
			}
		})
	}
}

// With the real clock (as the daemon runs), every time a ban or a
// known-good source is compared by carries the monotonic reading, those
// loaded from the file included: a wall-clock jump during a run neither
// lifts a ban nor stretches it.
func TestBansUseMonotonicClock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "threat", "state.json")
	cfg := DefaultConfig()
	g := New(cfg, WithFile(path))
	if b := fail(g, attacker, "alice", 5); b == nil {
		t.Fatal("no ban after 5 failures")
	}
	g.LoginSucceeded(usual, "pgadmin")
	check := func(g *Guard, when string) {
		t.Helper()
		g.mu.Lock()
		defer g.mu.Unlock()
		b, ok := g.mu.bans.Peek(SourceKey(attacker))
		if !ok || !hasMonotonic(b.at) || !hasMonotonic(b.until) {
			t.Errorf("%s: ban %+v; want both times on the monotonic clock", when, b)
		}
		if at, ok := g.mu.known.Peek(SourceKey(usual)); !ok || !hasMonotonic(at) {
			t.Errorf("%s: known source at %v; want it on the monotonic clock", when, at)
		}
	}
	check(g, "made")
	if err := g.Save(); err != nil {
		t.Fatal(err)
	}
	g2 := New(cfg, WithFile(path))
	if err := g2.Load(); err != nil {
		t.Fatal(err)
	}
	check(g2, "loaded")
}
