package threat

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

var (
	attacker = netip.MustParseAddr("203.0.113.7")
	usual    = netip.MustParseAddr("198.51.100.10")
)

func newGuard(t *testing.T, cfg Config, opts ...Option) (*Guard, *fakeClock) {
	t.Helper()
	c := newClock()
	return New(cfg, append([]Option{WithClock(c.Now)}, opts...)...), c
}

func fail(g *Guard, src netip.Addr, role string, n int) *Ban {
	var last *Ban
	for i := 0; i < n; i++ {
		if b := g.LoginFailed(src, role); b != nil {
			last = b
		}
	}
	return last
}

func TestSourceKey(t *testing.T) {
	tests := []struct{ in, want string }{
		{"192.0.2.1", "192.0.2.1/32"},
		{"::ffff:192.0.2.1", "192.0.2.1/32"},
		{"2001:db8:1:2::1", "2001:db8:1:2::/64"},
		{"2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"},
		{"fe80::1%eth0", "fe80::/64"},
	}
	for _, tt := range tests {
		if got := SourceKey(netip.MustParseAddr(tt.in)).String(); got != tt.want {
			t.Errorf("SourceKey(%s) = %s; want %s", tt.in, got, tt.want)
		}
	}
}

func TestRoleKey(t *testing.T) {
	long := strings.Repeat("a", 62) + "é" // 64 bytes: é would be cut in half at 63
	if got := RoleKey(long); got != strings.Repeat("a", 62) {
		t.Errorf("RoleKey(62 a + é) = %q; want the 62 a (cut at a character boundary)", got)
	}
	if got := RoleKey(strings.Repeat("x", 10000)); len(got) != 63 {
		t.Errorf("len(RoleKey(10000 bytes)) = %d; want 63", len(got))
	}
}

func TestBanAfterFailuresInWindow(t *testing.T) {
	g, clock := newGuard(t, DefaultConfig())
	for i := 0; i < 4; i++ {
		if b := g.LoginFailed(attacker, "alice"); b != nil {
			t.Fatalf("failure %d banned: %+v; want a ban only at the 5th", i+1, b)
		}
		clock.Advance(2 * time.Minute)
	}
	// The first failure is now 8 minutes old: still inside the window.
	b := g.LoginFailed(attacker, "alice")
	if b == nil || b.Until.Sub(b.At) != 10*time.Minute || b.Count != 1 || b.Source.String() != "203.0.113.7/32" {
		t.Fatalf("5th failure in 10 minutes = %+v; want a first ban of 10 minutes on 203.0.113.7/32", b)
	}
	if a := g.Admit(attacker); a.Refusal != Banned || !a.Report || a.Release != nil {
		t.Errorf("Admit(banned) = %+v; want Banned, reported", a)
	}
	if a := g.Admit(attacker); a.Refusal != Banned || a.Report {
		t.Errorf("Admit(banned) again = %+v; want Banned, not reported twice in a minute", a)
	}
	if a := g.Admit(usual); a.Refusal != OK {
		t.Errorf("Admit(other source) = %+v; want OK", a)
	}
	clock.Advance(10 * time.Minute)
	if a := g.Admit(attacker); a.Refusal != OK {
		t.Errorf("Admit after the ban = %+v; want OK", a)
	}
}

func TestSlidingWindowForgets(t *testing.T) {
	g, clock := newGuard(t, DefaultConfig())
	// 4 failures, then one every 3 minutes: never 5 within 10 minutes.
	fail(g, attacker, "alice", 1)
	for i := 0; i < 10; i++ {
		clock.Advance(3*time.Minute + time.Second)
		if b := g.LoginFailed(attacker, "alice"); b != nil {
			t.Fatalf("a failure every 3 minutes banned at %d: %+v", i, b)
		}
	}
}

func TestBanDoubles(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxBanTime = 35 * time.Minute
	g, clock := newGuard(t, cfg)
	for i, want := range []time.Duration{10 * time.Minute, 20 * time.Minute, 35 * time.Minute, 35 * time.Minute} {
		b := fail(g, attacker, "alice", 5)
		if b == nil || b.Until.Sub(b.At) != want || b.Count != i+1 {
			t.Fatalf("ban %d = %+v; want %v (doubling, capped at 35m)", i+1, b, want)
		}
		clock.Advance(want)
	}
	// A day after the last ban ended its history is forgotten.
	clock.Advance(banForget + time.Minute)
	if b := fail(g, attacker, "alice", 5); b == nil || b.Until.Sub(b.At) != 10*time.Minute {
		t.Fatalf("ban after a quiet day = %+v; want 10 minutes again", b)
	}
}

func TestIPv6BannedPer64(t *testing.T) {
	g, _ := newGuard(t, DefaultConfig())
	// Five different addresses of one /64: one source.
	for i := 1; i <= 5; i++ {
		g.LoginFailed(netip.MustParseAddr(fmt.Sprintf("2001:db8:1:2::%x", i)), "alice")
	}
	if a := g.Admit(netip.MustParseAddr("2001:db8:1:2:dead:beef::1")); a.Refusal != Banned {
		t.Errorf("Admit(same /64) = %v; want Banned", a.Refusal)
	}
	if a := g.Admit(netip.MustParseAddr("2001:db8:1:3::1")); a.Refusal != OK {
		t.Errorf("Admit(neighbouring /64) = %v; want OK", a.Refusal)
	}
}

func TestFailuresDuringBanDoNotExtendIt(t *testing.T) {
	g, _ := newGuard(t, DefaultConfig())
	first := fail(g, attacker, "alice", 5)
	// Connections admitted before the ban still fail afterwards.
	if b := fail(g, attacker, "alice", 5); b != nil {
		t.Errorf("failures during a ban made another: %+v", b)
	}
	if bans := g.Bans(); len(bans) != 1 || !bans[0].Until.Equal(first.Until) {
		t.Errorf("Bans() = %+v; want the first ban unchanged", bans)
	}
}

func TestOnlyAddressesAreBanned(t *testing.T) {
	g, _ := newGuard(t, DefaultConfig())
	// A user name that names another address is just a name.
	fail(g, attacker, "x\n\"192.0.2.99\"", 5)
	if a := g.Admit(netip.MustParseAddr("192.0.2.99")); a.Refusal != OK {
		t.Errorf("Admit(address named in the user name) = %v; want OK", a.Refusal)
	}
	if bans := g.Bans(); len(bans) != 1 || bans[0].Source != SourceKey(attacker) {
		t.Errorf("Bans() = %+v; want only the real peer", bans)
	}
}

func TestUnban(t *testing.T) {
	g, _ := newGuard(t, DefaultConfig())
	fail(g, attacker, "alice", 5)
	if !g.Unban(netip.PrefixFrom(attacker, 32)) {
		t.Fatal("Unban(banned) = false; want true")
	}
	if a := g.Admit(attacker); a.Refusal != OK {
		t.Errorf("Admit after Unban = %v; want OK", a.Refusal)
	}
	if g.Unban(netip.PrefixFrom(attacker, 32)) {
		t.Error("Unban(not banned) = true; want false")
	}
	// The history went too: the next ban is a first one.
	if b := fail(g, attacker, "alice", 5); b == nil || b.Count != 1 {
		t.Errorf("ban after Unban = %+v; want count 1", b)
	}
}

func TestRoleThrottle(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxFailures = 0 // this test is about the role alone
	g, clock := newGuard(t, cfg)
	g.LoginSucceeded(usual, "alice")
	// 50 sources, 3 guesses each, nobody banned.
	for s := 0; s < 50; s++ {
		fail(g, netip.AddrFrom4([4]byte{10, 0, 0, byte(s + 1)}), "alice", 3)
	}
	if w, ok := g.Throttle(usual, "alice"); !ok || w != 0 {
		t.Errorf("Throttle(known-good source) = %v, %v; want no wait", w, ok)
	}
	if w, ok := g.Throttle(usual, "bob"); !ok || w != 0 {
		t.Errorf("Throttle(another role) = %v, %v; want no wait", w, ok)
	}
	// Attempts from new sources go one at a time, at most RoleMaxDelay
	// apart, and the queue is bounded.
	stranger := netip.MustParseAddr("192.0.2.50")
	var waits []time.Duration
	for i := 0; i < 10; i++ {
		w, ok := g.Throttle(stranger, "alice")
		if !ok {
			break
		}
		waits = append(waits, w)
	}
	if len(waits) != 3 || waits[0] != 0 || waits[1] != cfg.RoleMaxDelay || waits[2] != 2*cfg.RoleMaxDelay {
		t.Errorf("queued waits = %v; want [0 10s 20s], then refusals", waits)
	}
	// After the window the role is no longer under attack.
	clock.Advance(2 * cfg.Window)
	if w, ok := g.Throttle(stranger, "alice"); !ok || w != 0 {
		t.Errorf("Throttle after the window = %v, %v; want no wait", w, ok)
	}
}

func TestRoleThrottleGrows(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxFailures = 0
	g, clock := newGuard(t, cfg)
	src := netip.MustParseAddr("192.0.2.1")
	fail(g, src, "alice", cfg.RoleMaxFailures)
	var steps []time.Duration
	for i := 0; i < 9; i++ {
		w, _ := g.Throttle(src, "alice") // sets next = now + step
		_ = w
		w2, _ := g.Throttle(src, "alice")
		steps = append(steps, w2)
		clock.Advance(time.Minute) // both reserved slots have passed
		g.LoginFailed(src, "alice")
	}
	want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond,
		800 * time.Millisecond, 1600 * time.Millisecond, 3200 * time.Millisecond, 6400 * time.Millisecond,
		10 * time.Second, 10 * time.Second}
	if fmt.Sprint(steps) != fmt.Sprint(want) {
		t.Errorf("steps = %v; want %v (doubling, capped)", steps, want)
	}
}

func TestKnownPairLosesExemptionWhenItGuesses(t *testing.T) {
	cfg := DefaultConfig()
	cfg.BanTime = 0 // count only
	g, _ := newGuard(t, cfg)
	g.LoginSucceeded(usual, "alice")
	fail(g, attacker, "alice", cfg.RoleMaxFailures)
	fail(g, usual, "alice", cfg.MaxFailures)
	g.Throttle(usual, "alice") // the first slowed attempt goes at once; the next waits
	if w, ok := g.Throttle(usual, "alice"); ok && w == 0 {
		t.Errorf("Throttle(known source that failed %d times) = no wait; want slowed", cfg.MaxFailures)
	}
}

func TestPreAuthBudget(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxPreAuth, cfg.PreAuthReservedKnown, cfg.MaxPreAuthPerSource = 10, 4, 3
	g, _ := newGuard(t, cfg)
	g.LoginSucceeded(usual, "pgadmin")
	var releases []func()
	admit := func(src netip.Addr) Refusal {
		a := g.Admit(src)
		if a.Release != nil {
			releases = append(releases, a.Release)
		}
		return a.Refusal
	}
	for i := 0; i < 3; i++ {
		if r := admit(attacker); r != OK {
			t.Fatalf("Admit %d = %v; want OK under the per-source cap", i, r)
		}
	}
	if r := admit(attacker); r != PreAuthSource {
		t.Errorf("4th Admit from one source = %v; want PreAuthSource", r)
	}
	// Other unknown sources fill the rest of the general part (6 of 10).
	for i := 0; i < 3; i++ {
		admit(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}))
	}
	if r := admit(netip.MustParseAddr("10.0.1.1")); r != PreAuthFull {
		t.Errorf("Admit(unknown) with the general part full = %v; want PreAuthFull", r)
	}
	if a := g.Admit(usual); a.Refusal != OK || !a.Known {
		t.Errorf("Admit(known-good) with the general part full = %+v; want OK from the reserve", a)
	} else {
		releases = append(releases, a.Release)
	}
	for _, r := range releases {
		r()
		r() // twice: no effect
	}
	if s := g.Stats(); s.PreAuth != 0 {
		t.Errorf("Stats().PreAuth after every release = %d; want 0", s.PreAuth)
	}
	if len(g.mu.preauth) != 0 {
		t.Errorf("preauth map holds %d entries after every release; want 0", len(g.mu.preauth))
	}
}

func TestKnownExpires(t *testing.T) {
	cfg := DefaultConfig()
	g, clock := newGuard(t, cfg)
	g.LoginSucceeded(usual, "pgadmin")
	if a := g.Admit(usual); !a.Known {
		t.Error("Admit right after a login: not known; want known")
	}
	clock.Advance(cfg.KnownTTL)
	if a := g.Admit(usual); a.Known {
		t.Error("Admit after KnownTTL: known; want unknown")
	}
}

func TestSessionLimits(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxSessions, cfg.ReservedAdmin, cfg.MaxSessionsPerSource, cfg.MaxSessionsPerRole = 6, 2, 3, 2
	cfg.AdminRole = "pgadmin"
	g, _ := newGuard(t, cfg)
	var rel []func()
	take := func(src netip.Addr, role string) Refusal {
		r, why := g.SessionStart(src, role)
		if r != nil {
			rel = append(rel, r)
		}
		return why
	}
	a, b, c := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3")
	steps := []struct {
		src  netip.Addr
		role string
		want Refusal
	}{
		{a, "app", OK}, {a, "app", OK}, {a, "app", SessionsRole}, {a, "etl", OK}, {a, "etl2", SessionsSource},
		{b, "etl", OK}, {c, "x", SessionsReserved}, {c, "pgadmin", OK}, {c, "pgadmin", OK}, {c, "pgadmin", SessionsFull},
	}
	for i, st := range steps {
		if got := take(st.src, st.role); got != st.want {
			t.Fatalf("step %d: SessionStart(%s, %s) = %v; want %v", i, st.src, st.role, got, st.want)
		}
	}
	for _, r := range rel {
		r()
		r()
	}
	if s := g.Stats(); s.Sessions != 0 || len(g.mu.sessSrc) != 0 || len(g.mu.sessRole) != 0 {
		t.Errorf("after releases: %+v, %d sources, %d roles; want all zero", s, len(g.mu.sessSrc), len(g.mu.sessRole))
	}
}

func TestStateBounded(t *testing.T) {
	g, _ := newGuard(t, DefaultConfig(), WithMaxEntries(600))
	// An attacker with many sources and invented names.
	for i := 0; i < 5000; i++ {
		src := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		g.LoginFailed(src, fmt.Sprintf("user%d", i))
	}
	if n := g.Stats().Entries; n > 600 {
		t.Errorf("Stats().Entries = %d after 5000 sources and names; want at most 600", n)
	}
	// A spray of role names never evicts a ban: the tables are apart.
	g2, _ := newGuard(t, DefaultConfig(), WithMaxEntries(600))
	fail(g2, attacker, "alice", 5)
	for i := 0; i < 5000; i++ {
		g2.LoginFailed(usual, fmt.Sprintf("user%d", i))
		g2.Unban(netip.PrefixFrom(usual, 32)) // keep this one unbanned so it keeps counting
	}
	if a := g2.Admit(attacker); a.Refusal != Banned {
		t.Errorf("Admit(banned) after 5000 invented names = %v; want still Banned", a.Refusal)
	}
}

func TestPersistenceRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "threat")
	path := filepath.Join(dir, "state.json")
	cfg := DefaultConfig()
	g, clock := newGuard(t, cfg, WithFile(path))
	fail(g, attacker, "alice", 5)
	g.LoginSucceeded(usual, "pgadmin")
	if err := g.Save(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file: %v, %v; want mode 0600", fi, err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("state dir: %v, %v; want mode 0700", fi, err)
	}
	g2 := New(cfg, WithClock(clock.Now), WithFile(path))
	if err := g2.Load(); err != nil {
		t.Fatal(err)
	}
	if a := g2.Admit(attacker); a.Refusal != Banned {
		t.Errorf("after reload Admit(banned) = %v; want Banned", a.Refusal)
	}
	if a := g2.Admit(usual); !a.Known {
		t.Error("after reload the usual source is not known-good")
	}
	fail(g2, attacker, "alice", 5) // during the ban: nothing
	if w, ok := g2.Throttle(usual, "pgadmin"); !ok || w != 0 {
		t.Errorf("after reload Throttle(known pair) = %v, %v; want no wait", w, ok)
	}
	// The history survives too: the next ban doubles.
	clock.Advance(10 * time.Minute)
	if b := fail(g2, attacker, "alice", 5); b == nil || b.Count != 2 || b.Until.Sub(b.At) != 20*time.Minute {
		t.Errorf("ban after reload = %+v; want the second, 20 minutes", b)
	}
	// Nothing changed: Save writes nothing.
	g3 := New(cfg, WithClock(clock.Now), WithFile(filepath.Join(t.TempDir(), "x", "s.json")))
	if err := g3.Save(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(g3.path))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Save with nothing to keep wrote %s", g3.path)
	}
}

func TestLoadCorrupt(t *testing.T) {
	good := `{"version":1,"bans":[{"source":"203.0.113.7/32","banned_at":"2026-11-25T12:00:00Z","until":"2026-11-25T12:10:00Z","count":1}],"known_sources":[],"known_roles":[]}`
	tests := []struct{ name, data string }{
		{"not JSON", "garbage"},
		{"truncated", good[:len(good)-10]},
		{"unknown field", strings.Replace(good, `"version":1`, `"version":1,"extra":true`, 1)},
		{"trailing data", good + "{}"},
		{"other version", strings.Replace(good, `"version":1`, `"version":2`, 1)},
		{"not a source key", strings.Replace(good, "203.0.113.7/32", "203.0.113.0/24", 1)},
		{"address without mask", strings.Replace(good, "203.0.113.7/32", "203.0.113.7", 1)},
		{"IPv6 not /64", strings.Replace(good, "203.0.113.7/32", "2001:db8::1/128", 1)},
		{"count 0", strings.Replace(good, `"count":1`, `"count":0`, 1)},
		{"count huge", strings.Replace(good, `"count":1`, `"count":1000000`, 1)},
		{"ban forever", strings.Replace(good, "2026-11-25T12:10:00Z", "9999-01-01T00:00:00Z", 1)},
		{"ends before it starts", strings.Replace(good, "2026-11-25T12:10:00Z", "2026-11-25T11:00:00Z", 1)},
		{"known role without role", strings.Replace(good, `"known_roles":[]`, `"known_roles":[{"source":"10.0.0.1/32","at":"2026-11-25T12:00:00Z"}]`, 1)},
		{"known source with role", strings.Replace(good, `"known_sources":[]`, `"known_sources":[{"source":"10.0.0.1/32","role":"x","at":"2026-11-25T12:00:00Z"}]`, 1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.json")
			if err := os.WriteFile(path, []byte(tt.data), 0o600); err != nil {
				t.Fatal(err)
			}
			g, _ := newGuard(t, DefaultConfig(), WithFile(path))
			err := g.Load()
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Load(%s) error = %v; want ErrCorrupt", tt.name, err)
			}
			// Reported and ignored: the guard works, empty.
			if a := g.Admit(attacker); a.Refusal != OK {
				t.Errorf("Admit after a corrupt file = %v; want OK (empty state)", a.Refusal)
			}
		})
	}
	t.Run("good", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "state.json")
		if err := os.WriteFile(path, []byte(good), 0o600); err != nil {
			t.Fatal(err)
		}
		g, _ := newGuard(t, DefaultConfig(), WithFile(path))
		if err := g.Load(); err != nil {
			t.Fatalf("Load(good) = %v", err)
		}
		if a := g.Admit(attacker); a.Refusal != Banned {
			t.Errorf("Admit after loading a ban = %v; want Banned", a.Refusal)
		}
	})
	t.Run("missing", func(t *testing.T) {
		g, _ := newGuard(t, DefaultConfig(), WithFile(filepath.Join(t.TempDir(), "none.json")))
		if err := g.Load(); err != nil {
			t.Errorf("Load(missing file) = %v; want nil", err)
		}
	})
}

func TestConcurrent(t *testing.T) {
	g, _ := newGuard(t, DefaultConfig())
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			src := netip.AddrFrom4([4]byte{10, 0, 0, byte(w)})
			for i := 0; i < 200; i++ {
				a := g.Admit(src)
				if a.Release != nil {
					g.Throttle(src, "alice")
					g.LoginFailed(src, "alice")
					if r, _ := g.SessionStart(src, "alice"); r != nil {
						r()
					}
					a.Release()
				}
				g.Bans()
			}
		}()
	}
	wg.Wait()
	if s := g.Stats(); s.PreAuth != 0 || s.Sessions != 0 {
		t.Errorf("Stats() = %+v; want no live slots", s)
	}
}

// The host's own loopback is left alone by default (fail2ban's
// ignoreself): a guesser behind a local proxy must not lock out every
// client of that proxy. Its failures still count against the role, and
// 127.0.0.2 (not the host's address a proxy uses) is protected as usual.
func TestIgnoredSources(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxPreAuthPerSource = 2
	cfg.MaxSessionsPerSource = 1
	cfg.RoleMaxFailures = 6
	g, _ := newGuard(t, cfg)
	for _, lo := range []string{"127.0.0.1", "::1", "::ffff:127.0.0.1"} {
		src := netip.MustParseAddr(lo)
		if b := fail(g, src, "alice", 10); b != nil {
			t.Fatalf("10 failures from %s banned it: %+v; want ignored", lo, b)
		}
		if a := g.Admit(src); a.Refusal != OK {
			t.Errorf("Admit(%s) after 10 failures = %v; want OK", lo, a.Refusal)
		}
		for i := 0; i < 3; i++ {
			if a := g.Admit(src); a.Refusal != OK {
				t.Errorf("Admit(%s) #%d = %v; want no per-source pre-authentication cap", lo, i+2, a.Refusal)
			}
		}
		if wait, ok := g.Throttle(src, "alice"); wait != 0 || !ok {
			t.Errorf("Throttle(%s, alice) = %v, %v; want not slowed", lo, wait, ok)
		}
		for i := 0; i < 2; i++ {
			if _, why := g.SessionStart(src, "bob"); why != OK {
				t.Errorf("SessionStart(%s) #%d = %v; want no per-source session cap", lo, i+1, why)
			}
		}
	}
	// The role was guessed at 30 times: others are slowed.
	if _, ok := g.Throttle(attacker, "alice"); !ok {
		t.Fatal("Throttle(attacker) refused outright; want a place in the queue")
	}
	if wait, _ := g.Throttle(attacker, "alice"); wait == 0 {
		t.Error("second Throttle(attacker, alice) = 0; want slowed: ignored sources' failures count against the role")
	}
	if b := fail(g, netip.MustParseAddr("127.0.0.2"), "carol", 5); b == nil {
		t.Error("5 failures from 127.0.0.2 banned nothing; want a ban (only the listed loopback is ignored)")
	}
	cfg.Ignore = nil
	g.SetConfig(cfg)
	if b := fail(g, netip.MustParseAddr("127.0.0.1"), "dave", 5); b == nil {
		t.Error("with an empty ignore list, 5 failures from 127.0.0.1 banned nothing; want a ban")
	}
}
