package gateway

import (
	"context"
	"net/netip"
	"time"

	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/proxyproto"
	"github.com/pgshield/pgshield/internal/threat"
	"github.com/pgshield/pgshield/internal/wire"
)

// Threat is threat protection as the gateway consumes it: internal/threat's
// Guard, or a fake in tests. Every address it is given is the real peer's
// (or a trusted proxy's PROXY address); names from the wire are only ever
// keys for counting, never something to ban.
type Threat interface {
	// Admit decides at accept, before a byte is read: banned, or over the
	// pre-authentication budget, means a close without a word.
	Admit(src netip.Addr) threat.Admission
	// Throttle says how long an attempt at role from src waits before
	// the login starts; !ok refuses it.
	Throttle(src netip.Addr, role string) (wait time.Duration, ok bool)
	// LoginFailed counts a refused login; a new ban comes back.
	LoginFailed(src netip.Addr, role string) *threat.Ban
	// LoginSucceeded makes src known-good, for role too.
	LoginSucceeded(src netip.Addr, role string)
	// SessionStart takes a session slot after a successful login.
	SessionStart(src netip.Addr, role string) (release func(), refusal threat.Refusal)
	// PooledSessionStart is SessionStart for a transaction-mode session.
	PooledSessionStart(src netip.Addr, role string) (release func(), refusal threat.Refusal)
	// DerivedMaxSessions is what PostgreSQL's limits leave the gateway
	// (pgshield.pool_max_total = auto).
	DerivedMaxSessions() int
}

var _ Threat = (*threat.Guard)(nil)

// ThreatConfig is the threat policy the parameters p describe, with admin
// as the administrator whose sessions are reserved.
func ThreatConfig(p config.Params, admin string) threat.Config {
	t := p.Threat
	// The value was checked when it was set; a list that no longer parses
	// ignores nothing, the safe side.
	ignore, _ := proxyproto.ParseTrusted(t.IgnoreSources)
	return threat.Config{
		MaxPreAuth: t.MaxPreAuth, PreAuthReservedKnown: t.PreAuthReserved, MaxPreAuthPerSource: t.MaxPreAuthPerSource,
		KnownTTL:    t.KnownTTL,
		MaxFailures: t.MaxFailures, Window: t.Window, BanTime: t.BanTime, MaxBanTime: t.MaxBanTime,
		RoleMaxFailures: t.RoleMaxFailures, RoleMaxDelay: t.RoleMaxDelay,
		MaxSessions: t.MaxConnections, ReservedAdmin: t.ReservedAdmin, MaxSessionsPerSource: t.PerSource,
		MaxSessionsPerRole: t.PerRole, AdminRole: admin, Ignore: ignore.Prefixes(),
	}
}

// threatState is what the threat steps keep for one connection.
type threatState struct {
	// preauthDone ends the connection's pre-authentication slot.
	preauthDone func()
}

// admitThreat refuses a banned source, or one over the pre-authentication
// budget, before TLS and without a word: a refusal that costs nothing and
// tells nothing (a plaintext ErrorResponse to a client that will ask for
// TLS is what libpq ≥ 17.1 discards, the CVE-2024-10977 class).
func (c *clientConn) admitThreat() bool {
	if c.srv.cfg.Threat == nil {
		return true
	}
	a := c.srv.cfg.Threat.Admit(c.src)
	if a.Refusal == threat.OK {
		c.threat.preauthDone = a.Release
		return true
	}
	switch {
	case a.Refusal == threat.Banned && a.Report:
		c.srv.logClient(c.log, "Connection from a banned source refused.", "until", a.BanUntil.UTC().Format(time.RFC3339))
		c.srv.cfg.Audit(audit.Event{Type: "connection.banned", Outcome: audit.OutcomeFailure, Client: c.src.String(),
			Reason: a.Refusal.String(), Fields: map[string]any{"until": a.BanUntil.UTC().Format(time.RFC3339),
				"note": "further refusals of this ban are reported at most once a minute"}})
	case a.Refusal != threat.Banned:
		// A flood: the first few a second are audited, the rest counted
		// in the log budget's suppressed_before.
		if ok, _ := c.srv.floodAudits.allow(c.srv.cfg.Now()); ok {
			c.srv.cfg.Audit(audit.Event{Type: "connection.throttled", Outcome: audit.OutcomeFailure, Client: c.src.String(),
				Reason: a.Refusal.String()})
		}
		c.srv.rateLimitedLog(c.src)
	}
	return false
}

// threatDone ends what admitThreat started, whatever happened after.
func (c *clientConn) threatDone() {
	if c.threat.preauthDone != nil {
		c.threat.preauthDone()
	}
}

// preauthDeadline is when the first byte, the TLS handshake and the
// startup packet must all be in: an absolute time from accept, so a client
// that trickles a byte a second gains nothing.
func (c *clientConn) preauthDeadline() time.Time {
	d := c.srv.cfg.AuthTimeout
	if p := c.rt.params.PreAuthTimeout; p > 0 && p < d {
		d = p
	}
	return c.start.Add(d)
}

// afterAdmission runs once TLS is up and the startup packet read: the rest
// of the login gets the authentication timeout (still from accept), and a
// connection taken over capacity is refused now, inside TLS when the
// client asked for it, so the client shows why.
func (c *clientConn) afterAdmission() error {
	_ = c.raw.SetDeadline(c.start.Add(c.srv.cfg.AuthTimeout))
	if !c.srv.overCapacity(c.raw) {
		return nil
	}
	c.srv.cfg.Audit(audit.Event{Type: "connection.refused", Outcome: audit.OutcomeFailure, Client: c.src.String(),
		User: c.user, Database: c.db, Reason: "too many connections (gateway maximum)"})
	return clienterr.New(wire.CodeTooManyConnections, "sorry, too many clients already")
}

// throttle holds a login attempt at a role under attack until its turn
// (threat.Guard.Throttle), within the authentication timeout and ctx; an
// attempt whose turn is too far off is refused.
func (c *clientConn) throttle(ctx context.Context) error {
	if c.srv.cfg.Threat == nil {
		return nil
	}
	wait, ok := c.srv.cfg.Threat.Throttle(c.src, c.user)
	deadline := c.start.Add(c.srv.cfg.AuthTimeout)
	if ok && wait > 0 && c.srv.cfg.Now().Add(wait).After(deadline.Add(-time.Second)) {
		ok = false
	}
	if !ok {
		c.srv.logClient(c.log, "Login attempt refused: the role is under attack.")
		c.srv.cfg.Audit(audit.Event{Type: "auth.throttled", Outcome: audit.OutcomeFailure, Client: c.src.String(),
			User: c.user, Database: c.db, Reason: threat.RoleThrottled.String()})
		return clienterr.New(wire.CodeTooManyConnections, "too many failed login attempts; try again later")
	}
	if wait <= 0 {
		return nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// loginOutcome tells threat protection how the login went: a refused
// login (28P01, whatever the reason) counts against the source, the role
// and the pair, and may ban the source; a successful one makes them
// known-good. Either way the connection is no longer authenticating.
// Hangups and I/O errors are neither.
func (c *clientConn) loginOutcome(err error) {
	t := c.srv.cfg.Threat
	if t == nil {
		return
	}
	if err == nil {
		t.LoginSucceeded(c.src, c.user)
		c.threatDone()
		return
	}
	ce, ok := clienterr.As(err)
	if !ok || ce.Code != wire.CodeInvalidPassword {
		return
	}
	b := t.LoginFailed(c.src, c.user)
	if b == nil {
		return
	}
	c.srv.cfg.Log.Warn("Source banned after repeated failed logins.", "source", b.Source.String(),
		"until", b.Until.UTC().Format(time.RFC3339), "count", b.Count)
	c.srv.cfg.Audit(audit.Event{Type: "threat.ban", Outcome: audit.OutcomeSuccess, Client: c.src.String(),
		User: c.user, Database: c.db, Reason: "repeated failed logins",
		Fields: map[string]any{"source": b.Source.String(), "until": b.Until.UTC().Format(time.RFC3339),
			"duration_seconds": b.Until.Sub(b.At).Seconds(), "ban_count": b.Count}})
}

// sessionSlot takes a session slot for the logged-in role, or refuses with
// 53300 in PostgreSQL's words; release gives it back.
func (c *clientConn) sessionSlot() (release func(), err error) {
	if c.srv.cfg.Threat == nil {
		return func() {}, nil
	}
	start := c.srv.cfg.Threat.SessionStart
	if c.poolMode() == "transaction" {
		start = c.srv.cfg.Threat.PooledSessionStart
	}
	release, why := start(c.src, c.user)
	if why == threat.OK {
		return release, nil
	}
	c.srv.logClient(c.log, "Session refused by a connection limit.", "reason", why.String())
	c.srv.cfg.Audit(audit.Event{Type: "connection.refused", Outcome: audit.OutcomeFailure, Client: c.src.String(),
		User: c.user, Database: c.db, Reason: why.String()})
	var msg string
	switch why {
	case threat.SessionsRole:
		msg = "too many connections for role " + quoteIdent(c.user)
	case threat.SessionsSource:
		msg = "too many connections from this client address"
	case threat.SessionsReserved:
		msg = "remaining connection slots are reserved for the administrator"
	default:
		msg = "sorry, too many clients already"
	}
	return nil, clienterr.New(wire.CodeTooManyConnections, "%s", msg)
}

// quoteIdent quotes a name as PostgreSQL's messages do.
func quoteIdent(s string) string {
	out := []byte{'"'}
	for i := 0; i < len(s); i++ {
		if s[i] == '"' {
			out = append(out, '"')
		}
		out = append(out, s[i])
	}
	return string(append(out, '"'))
}
