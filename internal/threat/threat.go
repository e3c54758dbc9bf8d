// Package threat decides, for the gateway, who may try to log in and how
// often: bans after repeated failed logins (as fail2ban, per source, IPv6
// per /64), a per-role slow-down of password guessing (capped exponential,
// as cockroach's sqlproxyccl throttler), budgets for connections still
// authenticating, and per-source and per-role session limits with slots
// reserved for the administrator.
//
// It is pure logic over an injected clock. Its only I/O is its own state
// file (bans and known-good sources), written atomically and read strictly.
// Every table is bounded: keys an attacker can mint (sources, role names)
// live in LRU maps, each in its own so that a flood of one kind cannot
// evict another (a spray of invented role names never lifts a ban).
//
// Only addresses are ever banned, and only the address the gateway saw (or a
// trusted proxy's): a name from the wire is a key for slowing guesses, never
// a reason to refuse someone else's address.
package threat

import (
	"net/netip"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/pgshield/pgshield/internal/lru"
)

// Config is the policy; the gateway's parameters resolve into it (see
// internal/config, pgshield.bruteforce_* and friends). Zero values turn a
// check off.
type Config struct {
	// MaxPreAuth caps connections still authenticating, from all sources.
	MaxPreAuth int
	// PreAuthReservedKnown of MaxPreAuth are kept for known-good sources.
	PreAuthReservedKnown int
	// MaxPreAuthPerSource caps connections still authenticating per source.
	MaxPreAuthPerSource int
	// KnownTTL is how long a successful login keeps its source (and the
	// source with that role) known-good.
	KnownTTL time.Duration

	// MaxFailures failed logins from one source within Window ban it for
	// BanTime, doubled on each repeat up to MaxBanTime.
	MaxFailures int
	Window      time.Duration
	BanTime     time.Duration
	MaxBanTime  time.Duration
	// RoleMaxFailures failed logins for one role within Window (from all
	// sources) slow further attempts at it from sources not known-good for
	// it, by a delay that doubles per failure up to RoleMaxDelay.
	RoleMaxFailures int
	RoleMaxDelay    time.Duration

	// MaxSessionsPerSource and MaxSessionsPerRole cap established sessions.
	MaxSessionsPerSource int
	MaxSessionsPerRole   int
	// MaxSessions caps established sessions in all; the last
	// ReservedAdmin of them are for AdminRole only. AutoMaxSessions
	// follows PostgreSQL's limits (SetServerLimits).
	MaxSessions   int
	ReservedAdmin int
	AdminRole     string

	// Ignore lists sources threat protection leaves alone (as fail2ban's
	// ignoreself/ignoreip): never banned, never slowed, not held to the
	// per-source caps. By default the host's own loopback, which is what
	// every client of a local reverse proxy without PROXY protocol looks
	// like: banning it would let one guesser lock everyone out. Their
	// failures still count against the role they guess.
	Ignore []netip.Prefix
}

// ignored reports whether src is on the ignore list.
func (c *Config) ignored(src netip.Addr) bool {
	src = src.Unmap()
	for _, p := range c.Ignore {
		if p.Contains(src) {
			return true
		}
	}
	return false
}

// DefaultConfig is the policy with pgshield's defaults (those of the
// pgshield.* parameters).
func DefaultConfig() Config {
	return Config{
		MaxPreAuth: 256, PreAuthReservedKnown: 64, MaxPreAuthPerSource: 32, KnownTTL: 7 * 24 * time.Hour,
		MaxFailures: 5, Window: 10 * time.Minute, BanTime: 10 * time.Minute, MaxBanTime: 24 * time.Hour,
		RoleMaxFailures: 20, RoleMaxDelay: 10 * time.Second,
		ReservedAdmin: 3,
		Ignore:        []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("::1/128")},
	}
}

const (
	// DefaultMaxEntries bounds the state: about a million entries in all,
	// split between the tables.
	DefaultMaxEntries = 1 << 20
	// roleBaseDelay is the first step of a role's slow-down.
	roleBaseDelay = 100 * time.Millisecond
	// banForget is how long after a ban ends its count is kept for the
	// doubling, as fail2ban's ban database keeps history.
	banForget = 24 * time.Hour
	// maxRoleKey is the most of a role name used as a key: PostgreSQL
	// truncates names to NAMEDATALEN-1 bytes, and a key may not be the
	// 10,000 bytes a startup packet allows.
	maxRoleKey = 63
	// reportEvery spaces the "refused, banned" reports for one ban.
	reportEvery = time.Minute
)

// Refusal says why a connection or session is refused.
type Refusal int

const (
	// OK: not refused.
	OK Refusal = iota
	// Banned: the source is banned (at accept, closed without a word).
	Banned
	// PreAuthSource: the source has too many connections authenticating.
	PreAuthSource
	// PreAuthFull: too many connections are authenticating in all (the
	// rest are reserved for known-good sources).
	PreAuthFull
	// RoleThrottled: the role is under attack and the queue of slowed
	// attempts at it is full.
	RoleThrottled
	// SessionsSource: the source has its most sessions.
	SessionsSource
	// SessionsRole: the role has its most sessions.
	SessionsRole
	// SessionsReserved: the remaining sessions are the administrator's.
	SessionsReserved
	// SessionsFull: no sessions are left, the administrator's included.
	SessionsFull
)

func (r Refusal) String() string {
	switch r {
	case OK:
		return "ok"
	case Banned:
		return "source is banned after repeated failed logins"
	case PreAuthSource:
		return "too many connections authenticating from this source"
	case PreAuthFull:
		return "too many connections authenticating"
	case RoleThrottled:
		return "too many failed logins for this role; attempts are slowed"
	case SessionsSource:
		return "too many sessions from this source"
	case SessionsRole:
		return "too many sessions for this role"
	case SessionsReserved:
		return "remaining sessions are reserved for the administrator"
	case SessionsFull:
		return "too many sessions"
	}
	return "unknown"
}

// Admission is Admit's decision.
type Admission struct {
	Refusal Refusal
	// BanUntil is when a ban ends (Refusal Banned).
	BanUntil time.Time
	// Report is true for the first refusal of a ban within a minute: an
	// attacker decides how often it is refused, so the caller audits only
	// these.
	Report bool
	// Known says the source had a successful login within KnownTTL.
	Known bool
	// Release ends the connection's pre-authentication slot; call it when
	// the login succeeds or the connection ends (more calls do nothing).
	// Nil when refused.
	Release func()
}

// Ban is a ban as Bans lists it, or as LoginFailed reports a new one.
type Ban struct {
	// Source is the banned prefix: an IPv4 /32 or an IPv6 /64.
	Source netip.Prefix `json:"source"`
	// At is when the ban began, Until when it ends.
	At    time.Time `json:"banned_at"`
	Until time.Time `json:"until"`
	// Count is the number of bans of this source in a row (1 for the
	// first); each doubles the time.
	Count int `json:"count"`
}

// SourceKey is what a source is counted and banned by: IPv4 addresses one
// by one, IPv6 per /64 (what one host or subscriber usually holds), as the
// per-source rate limit does.
func SourceKey(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.WithZone("").Prefix(64)
		return p
	}
	p, _ := a.Prefix(a.BitLen())
	return p
}

// RoleKey is what a role name from the wire is counted by: at most the 63
// bytes PostgreSQL itself keeps of a name, cut at a character boundary as
// PostgreSQL's pg_mbcliplen does.
func RoleKey(role string) string {
	if len(role) <= maxRoleKey {
		return role
	}
	n := maxRoleKey
	for n > 0 && !utf8.RuneStart(role[n]) {
		n--
	}
	return role[:n]
}

type pairKey struct {
	src  netip.Prefix
	role string
}

// ban is a source's ban record, kept after the ban ends (for banForget)
// so that the next one doubles.
type ban struct {
	at, until time.Time
	count     int
	reported  time.Time
}

// failures keeps the times of the last few failures (at most the
// threshold), which is all an exact sliding window needs.
type failures struct{ ts []time.Time }

// add records a failure at now and returns the failures within window.
func (f *failures) add(now time.Time, window time.Duration, keep int) int {
	f.prune(now, window)
	f.ts = append(f.ts, now)
	if over := len(f.ts) - keep; over > 0 {
		f.ts = append(f.ts[:0], f.ts[over:]...)
	}
	return len(f.ts)
}

func (f *failures) prune(now time.Time, window time.Duration) {
	i := 0
	for i < len(f.ts) && !f.ts[i].After(now.Add(-window)) {
		i++
	}
	f.ts = f.ts[i:]
}

func (f *failures) count(now time.Time, window time.Duration) int {
	f.prune(now, window)
	return len(f.ts)
}

// roleState counts a role's failures over a sliding window approximated by
// two fixed buckets (a role under attack sees thousands; exact times would
// cost memory an attacker chooses), and holds the time its next slowed
// attempt may go.
type roleState struct {
	start     time.Time // of the current bucket
	prev, cur int
	next      time.Time
}

func (r *roleState) roll(now time.Time, window time.Duration) {
	switch el := now.Sub(r.start); {
	case el < window:
	case el < 2*window:
		r.prev, r.cur, r.start = r.cur, 0, r.start.Add(window)
	default:
		r.prev, r.cur, r.start = 0, 0, now
	}
}

func (r *roleState) count(now time.Time, window time.Duration) int {
	r.roll(now, window)
	w := float64(window-now.Sub(r.start)) / float64(window)
	return r.cur + int(float64(r.prev)*w)
}

// Guard holds the threat state. Its methods are safe for concurrent use.
type Guard struct {
	now  func() time.Time
	path string
	max  int // per table

	mu struct {
		sync.Mutex
		cfg Config
		// bans, known and knownPair change only on a ban or a successful
		// login and are what the state file keeps; the failure tables
		// start empty after a restart.
		bans      *lru.Map[netip.Prefix, *ban]
		known     *lru.Map[netip.Prefix, time.Time]
		knownPair *lru.Map[pairKey, time.Time]
		srcFail   *lru.Map[netip.Prefix, *failures]
		pairFail  *lru.Map[pairKey, *failures]
		roleFail  *lru.Map[string, *roleState]
		// Live counts; entries exist only while non-zero, so they are
		// bounded by the open connections.
		preauth      map[netip.Prefix]int
		preauthTotal int
		sessSrc      map[netip.Prefix]int
		sessRole     map[string]int
		sessTotal    int
		dirty        bool
		// serverMax is DeriveMaxSessions of PostgreSQL's limits, 0 until
		// SetServerLimits is told them.
		serverMax int
	}
}

// Option configures a Guard.
type Option func(*Guard)

// WithClock sets the clock (tests).
func WithClock(now func() time.Time) Option { return func(g *Guard) { g.now = now } }

// WithMaxEntries bounds the whole state to about n entries.
func WithMaxEntries(n int) Option { return func(g *Guard) { g.max = max(n/6, 16) } }

// WithFile keeps bans and known-good sources in path across restarts
// (see Load and Save).
func WithFile(path string) Option { return func(g *Guard) { g.path = path } }

// New makes a Guard with cfg.
func New(cfg Config, opts ...Option) *Guard {
	g := &Guard{now: time.Now, max: DefaultMaxEntries / 6}
	for _, o := range opts {
		o(g)
	}
	g.mu.cfg = cfg
	g.mu.bans = lru.New[netip.Prefix, *ban](g.max)
	g.mu.known = lru.New[netip.Prefix, time.Time](g.max)
	g.mu.knownPair = lru.New[pairKey, time.Time](g.max)
	g.mu.srcFail = lru.New[netip.Prefix, *failures](g.max)
	g.mu.pairFail = lru.New[pairKey, *failures](g.max)
	g.mu.roleFail = lru.New[string, *roleState](g.max)
	g.mu.preauth = map[netip.Prefix]int{}
	g.mu.sessSrc = map[netip.Prefix]int{}
	g.mu.sessRole = map[string]int{}
	return g
}

// SetConfig changes the policy; counts, bans and open slots carry over.
func (g *Guard) SetConfig(cfg Config) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.mu.cfg = cfg
}

// Admit decides for a new connection from src, before a byte of it is
// read: refused if src is banned or over its pre-authentication budget.
func (g *Guard) Admit(src netip.Addr) Admission {
	now := g.now()
	k := SourceKey(src)
	g.mu.Lock()
	defer g.mu.Unlock()
	cfg := g.mu.cfg
	ignored := cfg.ignored(src)
	if b, ok := g.mu.bans.Peek(k); ok && now.Before(b.until) && !ignored {
		report := now.Sub(b.reported) >= reportEvery
		if report {
			b.reported = now
		}
		return Admission{Refusal: Banned, BanUntil: b.until, Report: report}
	}
	known := g.knownLocked(k, now)
	if cfg.MaxPreAuthPerSource > 0 && g.mu.preauth[k] >= cfg.MaxPreAuthPerSource && !ignored {
		return Admission{Refusal: PreAuthSource, Known: known}
	}
	if cfg.MaxPreAuth > 0 {
		limit := cfg.MaxPreAuth
		if !known {
			limit -= min(cfg.PreAuthReservedKnown, cfg.MaxPreAuth)
		}
		if g.mu.preauthTotal >= limit {
			return Admission{Refusal: PreAuthFull, Known: known}
		}
	}
	g.mu.preauth[k]++
	g.mu.preauthTotal++
	var once sync.Once
	return Admission{Known: known, Release: func() {
		once.Do(func() {
			g.mu.Lock()
			defer g.mu.Unlock()
			if g.mu.preauth[k]--; g.mu.preauth[k] <= 0 {
				delete(g.mu.preauth, k)
			}
			g.mu.preauthTotal--
		})
	}}
}

func (g *Guard) knownLocked(k netip.Prefix, now time.Time) bool {
	at, ok := g.mu.known.Peek(k)
	return ok && now.Sub(at) < g.mu.cfg.KnownTTL
}

// Throttle is asked before a login as role from src: how long to wait
// before the exchange may start. Attempts at a role under attack (at least
// RoleMaxFailures failures within Window) go one at a time, spaced by a
// delay that doubles with each failure beyond the threshold up to
// RoleMaxDelay, so the guesses answered per minute stay few however many
// sources guess in parallel. A source known-good for the role (a
// successful login as it within KnownTTL, and fewer than MaxFailures
// failures as it since) is never slowed: attacks from elsewhere do not
// lock it out. ok is false when the queue is longer than twice
// RoleMaxDelay: the attempt is refused rather than held.
//
// The wait comes before the verdict, whatever it will be: slowing only
// failures would let a client read a fast answer as success.
func (g *Guard) Throttle(src netip.Addr, role string) (wait time.Duration, ok bool) {
	now := g.now()
	g.mu.Lock()
	defer g.mu.Unlock()
	cfg := g.mu.cfg
	if cfg.RoleMaxFailures <= 0 || cfg.ignored(src) {
		return 0, true
	}
	pk := pairKey{SourceKey(src), RoleKey(role)}
	if g.knownPairLocked(pk, now) {
		return 0, true
	}
	rs, found := g.mu.roleFail.Peek(pk.role)
	if !found {
		return 0, true
	}
	f := rs.count(now, cfg.Window)
	if f < cfg.RoleMaxFailures {
		return 0, true
	}
	step := roleBaseDelay << min(f-cfg.RoleMaxFailures, 30)
	if step > cfg.RoleMaxDelay || step <= 0 {
		step = cfg.RoleMaxDelay
	}
	start := now
	if rs.next.After(now) {
		start = rs.next
	}
	wait = start.Sub(now)
	if wait > 2*cfg.RoleMaxDelay {
		return 0, false
	}
	rs.next = start.Add(step)
	return wait, true
}

func (g *Guard) knownPairLocked(pk pairKey, now time.Time) bool {
	at, ok := g.mu.knownPair.Peek(pk)
	if !ok || now.Sub(at) >= g.mu.cfg.KnownTTL {
		return false
	}
	if f, ok := g.mu.pairFail.Peek(pk); ok && g.mu.cfg.MaxFailures > 0 && f.count(now, g.mu.cfg.Window) >= g.mu.cfg.MaxFailures {
		return false // a known host that turned to guessing is slowed like any other
	}
	return true
}

// LoginFailed counts a failed login as role from src. When src reaches
// MaxFailures within Window it is banned, and the new ban is returned.
func (g *Guard) LoginFailed(src netip.Addr, role string) *Ban {
	now := g.now()
	g.mu.Lock()
	defer g.mu.Unlock()
	cfg := g.mu.cfg
	pk := pairKey{SourceKey(src), RoleKey(role)}
	keep := max(cfg.MaxFailures, 1)
	pf, ok := g.mu.pairFail.Get(pk)
	if !ok {
		pf = &failures{}
		g.mu.pairFail.Put(pk, pf)
	}
	pf.add(now, cfg.Window, keep)
	if cfg.RoleMaxFailures > 0 && cfg.Window > 0 {
		rs, ok := g.mu.roleFail.Get(pk.role)
		if !ok {
			rs = &roleState{start: now}
			g.mu.roleFail.Put(pk.role, rs)
		}
		rs.roll(now, cfg.Window)
		rs.cur++
	}
	if cfg.MaxFailures <= 0 || cfg.Window <= 0 || cfg.BanTime <= 0 || cfg.ignored(src) {
		return nil
	}
	sf, ok := g.mu.srcFail.Get(pk.src)
	if !ok {
		sf = &failures{}
		g.mu.srcFail.Put(pk.src, sf)
	}
	if sf.add(now, cfg.Window, keep) < cfg.MaxFailures {
		return nil
	}
	sf.ts = sf.ts[:0]
	return g.banLocked(pk.src, now)
}

// banLocked bans k from now, doubling the last ban's time unless it ended
// more than banForget ago.
func (g *Guard) banLocked(k netip.Prefix, now time.Time) *Ban {
	cfg := g.mu.cfg
	b, ok := g.mu.bans.Get(k)
	if !ok || now.Sub(b.until) > banForget {
		b = &ban{}
	}
	if now.Before(b.until) {
		// Failures counted during a ban (connections admitted before it):
		// the ban stands as it is.
		return nil
	}
	b.count = min(b.count+1, 64)
	d := cfg.BanTime
	for i := 1; i < b.count && d < cfg.MaxBanTime; i++ {
		d *= 2
	}
	if cfg.MaxBanTime > 0 && d > cfg.MaxBanTime {
		d = cfg.MaxBanTime
	}
	b.at, b.until, b.reported = now, now.Add(d), time.Time{}
	g.mu.bans.Put(k, b)
	g.mu.dirty = true
	return &Ban{Source: k, At: b.at, Until: b.until, Count: b.count}
}

// LoginSucceeded records a successful login as role from src: the source,
// and the source for this role, are known-good for KnownTTL.
func (g *Guard) LoginSucceeded(src netip.Addr, role string) {
	now := g.now()
	g.mu.Lock()
	defer g.mu.Unlock()
	pk := pairKey{SourceKey(src), RoleKey(role)}
	g.mu.known.Put(pk.src, now)
	g.mu.knownPair.Put(pk, now)
	// The pair's own failures were the user's typing, not an attack.
	g.mu.pairFail.Del(pk)
	g.mu.dirty = true
}

// SessionStart takes a session slot for an authenticated login as role
// from src, or says which limit refuses it. The administrator (AdminRole)
// is held to MaxSessions only: the per-source and per-role limits, and the
// reserve, never keep it out. release gives the slot back (more calls do
// nothing).
func (g *Guard) SessionStart(src netip.Addr, role string) (release func(), refusal Refusal) {
	return g.sessionStart(src, role, false)
}

// PooledSessionStart is SessionStart for a session that holds no backend
// of its own (transaction pooling: its transactions share the pool's,
// capped by pgshield.pool_size and pool_max_total). Under an automatic
// cap (AutoMaxSessions, PostgreSQL's max_connections), which counts
// backends, such a session neither takes nor needs a slot; the per-source
// and per-role limits still hold, and a cap set as a number still counts
// it (the operator's count of sessions).
func (g *Guard) PooledSessionStart(src netip.Addr, role string) (release func(), refusal Refusal) {
	return g.sessionStart(src, role, true)
}

func (g *Guard) sessionStart(src netip.Addr, role string, pooled bool) (release func(), refusal Refusal) {
	k, rk := SourceKey(src), RoleKey(role)
	g.mu.Lock()
	defer g.mu.Unlock()
	cfg := g.mu.cfg
	maxS, reserved := g.sessionCapLocked()
	uncounted := pooled && cfg.MaxSessions == AutoMaxSessions
	if uncounted {
		maxS, reserved = 0, 0
	}
	admin := cfg.AdminRole != "" && role == cfg.AdminRole
	switch {
	case maxS > 0 && g.mu.sessTotal >= maxS:
		return nil, SessionsFull
	case admin:
	case maxS > 0 && g.mu.sessTotal >= maxS-reserved:
		return nil, SessionsReserved
	case cfg.MaxSessionsPerSource > 0 && g.mu.sessSrc[k] >= cfg.MaxSessionsPerSource && !cfg.ignored(src):
		return nil, SessionsSource
	case cfg.MaxSessionsPerRole > 0 && g.mu.sessRole[rk] >= cfg.MaxSessionsPerRole:
		return nil, SessionsRole
	}
	if !uncounted {
		g.mu.sessTotal++
	}
	g.mu.sessSrc[k]++
	g.mu.sessRole[rk]++
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			defer g.mu.Unlock()
			if !uncounted {
				g.mu.sessTotal--
			}
			if g.mu.sessSrc[k]--; g.mu.sessSrc[k] <= 0 {
				delete(g.mu.sessSrc, k)
			}
			if g.mu.sessRole[rk]--; g.mu.sessRole[rk] <= 0 {
				delete(g.mu.sessRole, rk)
			}
		})
	}, OK
}

// Bans lists the bans in force, oldest first.
func (g *Guard) Bans() []Ban {
	now := g.now()
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []Ban
	g.mu.bans.Each(func(k netip.Prefix, b *ban) {
		if now.Before(b.until) {
			out = append(out, Ban{Source: k, At: b.at, Until: b.until, Count: b.count})
		}
	})
	return out
}

// Unban lifts the ban on the source that src names (an address, or the
// prefix Bans lists), forgets its history and failures, and reports
// whether a ban was in force.
func (g *Guard) Unban(src netip.Prefix) bool {
	now := g.now()
	k := SourceKey(src.Addr())
	g.mu.Lock()
	defer g.mu.Unlock()
	b, ok := g.mu.bans.Peek(k)
	active := ok && now.Before(b.until)
	g.mu.bans.Del(k)
	g.mu.srcFail.Del(k)
	if ok {
		g.mu.dirty = true
	}
	return active
}

// Stats are counts for status and tests.
type Stats struct {
	PreAuth, Sessions, Bans, Entries int
}

// Stats returns current counts.
func (g *Guard) Stats() Stats {
	g.mu.Lock()
	defer g.mu.Unlock()
	return Stats{PreAuth: g.mu.preauthTotal, Sessions: g.mu.sessTotal, Bans: g.mu.bans.Len(),
		Entries: g.mu.bans.Len() + g.mu.known.Len() + g.mu.knownPair.Len() + g.mu.srcFail.Len() +
			g.mu.pairFail.Len() + g.mu.roleFail.Len()}
}
