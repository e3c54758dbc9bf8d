package threat

import (
	"net/netip"
	"testing"

	"github.com/pgshield/pgshield/internal/config"
)

func TestDeriveMaxSessions(t *testing.T) {
	if config.AutoMaxConnections != AutoMaxSessions {
		t.Fatalf("pgshield.max_connections = auto reads as %d; the guard's auto is %d", config.AutoMaxConnections, AutoMaxSessions)
	}
	for _, c := range []struct{ max, reserved, want int }{
		{100, 3, 89},  // PostgreSQL's defaults: 97 for non-superusers, 4 lookups, 4 superuser connections beyond the 3 reserved
		{100, 10, 86}, // the reserve holds all of pgshield's superuser connections
		{500, 3, 489},
		{10, 3, 1}, // too small for pgshield: still one session
		{0, 0, 1},
		{1000, 0, 989}, // no reserve: every superuser connection takes a slot
	} {
		if got := DeriveMaxSessions(c.max, c.reserved); got != c.want {
			t.Errorf("DeriveMaxSessions(%d, %d) = %d; want %d", c.max, c.reserved, got, c.want)
		}
	}
}

// fill opens sessions as role until one is refused; it returns how many
// were let in and the refusal.
func fill(g *Guard, role string, n int) (int, Refusal) {
	src := netip.MustParseAddr("192.0.2.1")
	for i := 0; i < n; i++ {
		if _, r := g.SessionStart(src, role); r != OK {
			return i, r
		}
	}
	return n, OK
}

func TestAutoMaxSessionsFollowsPostgres(t *testing.T) {
	g := New(Config{MaxSessions: AutoMaxSessions, ReservedAdmin: 3, AdminRole: "admin"})
	if got := g.MaxSessions(); got != FallbackMaxSessions {
		t.Errorf("cap before PostgreSQL's limits are known = %d; want %d", got, FallbackMaxSessions)
	}
	// max_connections = 20: 20 - 3 - 4 - 4 = 9 sessions, 3 for the admin.
	if n, changed := g.SetServerLimits(20, 3); n != 9 || !changed {
		t.Fatalf("SetServerLimits(20, 3) = %d, %v", n, changed)
	}
	if n, r := fill(g, "app", 100); n != 6 || r != SessionsReserved {
		t.Errorf("app sessions %d (%v); want 6, then the administrator's reserve", n, r)
	}
	if n, r := fill(g, "admin", 100); n != 3 || r != SessionsFull {
		t.Errorf("admin sessions %d (%v); want 3 more, then full", n, r)
	}
	// PostgreSQL restarted with max_connections = 30: 10 more.
	if n, changed := g.SetServerLimits(30, 3); n != 19 || !changed {
		t.Fatalf("SetServerLimits(30, 3) = %d, %v", n, changed)
	}
	if _, changed := g.SetServerLimits(30, 3); changed {
		t.Errorf("the same limits again reported a change")
	}
	if n, r := fill(g, "app", 100); n != 7 || r != SessionsReserved {
		t.Errorf("after the restart: app sessions %d more (%v); want 7", n, r)
	}
	// A fixed value is not moved by PostgreSQL's.
	g.SetConfig(Config{MaxSessions: 5, ReservedAdmin: 3})
	if got := g.MaxSessions(); got != 5 {
		t.Errorf("fixed cap = %d; want 5", got)
	}
	g.SetConfig(Config{MaxSessions: 0})
	if got := g.MaxSessions(); got != 0 {
		t.Errorf("no cap = %d", got)
	}
	// A reserve as large as the cap leaves one slot for others.
	g2 := New(Config{MaxSessions: AutoMaxSessions, ReservedAdmin: 50, AdminRole: "admin"})
	g2.SetServerLimits(20, 3)
	if n, r := fill(g2, "app", 100); n != 1 || r != SessionsReserved {
		t.Errorf("reserve over the cap: app sessions %d (%v); want 1", n, r)
	}
}

// TestPooledSessionsUnderAuto: transaction-mode sessions hold no backend,
// so the automatic cap (which counts backends) neither counts nor stops
// them; per-role limits and a cap set as a number still do.
func TestPooledSessionsUnderAuto(t *testing.T) {
	src := netip.MustParseAddr("192.0.2.1")
	g := New(Config{MaxSessions: AutoMaxSessions, ReservedAdmin: 3, AdminRole: "admin", MaxSessionsPerRole: 500})
	g.SetServerLimits(20, 3) // a cap of 9
	var releases []func()
	for i := 0; i < 400; i++ {
		r, why := g.PooledSessionStart(src, "app")
		if why != OK {
			t.Fatalf("pooled session %d refused (%v) under the automatic cap", i+1, why)
		}
		releases = append(releases, r)
	}
	// They took no slot: 6 backend-holding sessions still fit, then the reserve.
	if n, r := fill(g, "other", 100); n != 6 || r != SessionsReserved {
		t.Errorf("session-mode sessions beside 400 pooled ones: %d (%v); want 6, then the reserve", n, r)
	}
	for i := 0; i < 100; i++ {
		r, why := g.PooledSessionStart(src, "app")
		if why != OK {
			t.Fatalf("pooled session %d refused (%v)", 401+i, why)
		}
		releases = append(releases, r)
	}
	if _, why := g.PooledSessionStart(src, "app"); why != SessionsRole {
		t.Errorf("pooled session 501 = %v; want the per-role limit (500)", why)
	}
	for _, r := range releases {
		r()
	}

	// A number is the operator's count of sessions, pooled or not.
	g = New(Config{MaxSessions: 5})
	for i := 0; i < 5; i++ {
		if _, why := g.PooledSessionStart(src, "app"); why != OK {
			t.Fatalf("pooled session %d under a cap of 5 = %v", i+1, why)
		}
	}
	if _, why := g.PooledSessionStart(src, "app"); why != SessionsFull {
		t.Errorf("pooled session 6 under a cap of 5 = %v; want full", why)
	}
}
