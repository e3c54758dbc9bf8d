package netpolicy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// maxWake bounds how long Run sleeps, so that a rule added with an earlier
// expiry, or a clock that jumps, is noticed within a second.
const maxWake = time.Second

// Option configures an Engine.
type Option func(*Engine)

// WithClock sets the engine's clock (time.Now by default). Tests drive
// expiry with it and Tick.
func WithClock(now func() time.Time) Option { return func(e *Engine) { e.now = now } }

// WithPersist sets the function that saves a new policy before it takes
// effect. If it fails, the change is abandoned and the old policy stays in
// force. It gets a copy it may keep, and runs with the update lock held, so
// it must not call back into the Engine.
func WithPersist(persist func(*Policy) error) Option {
	return func(e *Engine) { e.persist = persist }
}

// WithLogger sets the logger (discarded by default).
func WithLogger(l *slog.Logger) Option { return func(e *Engine) { e.log = l } }

// Engine is the network policy in force. It is safe for concurrent use:
// Check reads the current policy without locking, Update replaces it
// copy-on-write. Registered sessions are re-checked after every change and
// every expiry.
//
// Lock order: updateMu, then sessions. Callbacks (onDenied) run with neither
// held.
type Engine struct {
	now     func() time.Time
	persist func(*Policy) error
	log     *slog.Logger

	// state is the policy in force. It is never modified after it is
	// stored, apart from its atomic counters.
	state atomic.Pointer[compiled]

	// updateMu serialises changes, including persisting them.
	updateMu sync.Mutex

	sessions struct {
		sync.Mutex
		next uint64
		m    map[uint64]*session
	}
}

// session is a live connection to re-check.
type session struct {
	src      netip.Addr
	port     uint16
	onDenied func(Decision)
}

// NewEngine validates a copy of p and returns an Engine enforcing it.
// Nothing is persisted until the first Update.
func NewEngine(p *Policy, opts ...Option) (*Engine, error) {
	if p == nil {
		return nil, errors.New("netpolicy: NewEngine needs a policy")
	}
	e := &Engine{now: time.Now}
	for _, o := range opts {
		o(e)
	}
	if e.now == nil {
		e.now = time.Now
	}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	c, err := p.Clone().compile()
	if err != nil {
		return nil, err
	}
	c.attachCounters(nil)
	e.state.Store(c)
	e.sessions.m = map[uint64]*session{}
	return e, nil
}

// Check decides whether a new connection from src to dstPort may proceed,
// and counts a hit on the deciding rule. It takes no lock.
func (e *Engine) Check(src netip.Addr, dstPort uint16) Decision {
	now := e.now()
	d, ctr := e.state.Load().inboundDecision(src, dstPort, now)
	ctr.hit(now)
	return d
}

// CheckOutbound decides whether the database server may reach dst on
// dstPort, and counts a hit on the deciding rule. It takes no lock.
func (e *Engine) CheckOutbound(dst netip.Addr, dstPort uint16) Decision {
	now := e.now()
	d, ctr := e.state.Load().outboundDecision(dst, dstPort, now)
	ctr.hit(now)
	return d
}

// Snapshot returns a copy of the policy in force.
func (e *Engine) Snapshot() *Policy { return e.state.Load().policy.Clone() }

// errUnchanged tells update that fn changed nothing worth persisting.
var errUnchanged = errors.New("unchanged")

// Update changes the policy: fn edits a deep copy of the policy in force,
// then the copy is validated, persisted and swapped in, and registered
// sessions are re-checked. If fn, validation or persisting fails, Update
// returns that error (fn's unwrapped; validation errors match
// ErrInvalidPolicy) and the old policy stays in force. fn must not keep p.
// A rule with a zero CreatedAt gets its predecessor's (same name) or, if it
// is new, now.
func (e *Engine) Update(fn func(p *Policy) error) error {
	if err := e.update(fn); err != nil {
		if errors.Is(err, errUnchanged) {
			return nil
		}
		return err
	}
	e.recheck()
	return nil
}

func (e *Engine) update(fn func(p *Policy) error) error {
	e.updateMu.Lock()
	defer e.updateMu.Unlock()
	cur := e.state.Load()
	p := cur.policy.Clone()
	if err := fn(p); err != nil {
		return err
	}
	now := canonNow(e.now())
	stampCreated(p, cur.policy, now)
	next, err := p.compile()
	if err != nil {
		return err
	}
	if e.persist != nil {
		if err := e.persist(p.Clone()); err != nil {
			e.log.Error("Failed to persist the network policy; the old one stays in force.", "error", err)
			return fmt.Errorf("persisting network policy: %w", err)
		}
	}
	next.attachCounters(cur)
	e.state.Store(next)
	e.log.Info("Network policy updated.", "mode", p.Mode,
		"firewall_rules", len(p.FirewallRules), "network_rules", len(p.NetworkRules))
	return nil
}

func canonNow(t time.Time) time.Time { return t.Round(0).UTC() }

// stampCreated fills in a zero CreatedAt with now for rules that are new
// (no rule of the same name and kind in old); a rule that replaces one keeps
// its predecessor's.
func stampCreated(p, old *Policy, now time.Time) {
	fw := map[string]time.Time{}
	for _, r := range old.FirewallRules {
		fw[strings.ToLower(r.Name)] = r.CreatedAt
	}
	for i := range p.FirewallRules {
		r := &p.FirewallRules[i]
		if r.CreatedAt.IsZero() {
			r.CreatedAt = createdAt(fw, r.Name, now)
		}
	}
	nw := map[string]time.Time{}
	for _, r := range old.NetworkRules {
		nw[strings.ToLower(r.Name)] = r.CreatedAt
	}
	for i := range p.NetworkRules {
		r := &p.NetworkRules[i]
		if r.CreatedAt.IsZero() {
			r.CreatedAt = createdAt(nw, r.Name, now)
		}
	}
}

func createdAt(old map[string]time.Time, name string, now time.Time) time.Time {
	if t, ok := old[strings.ToLower(name)]; ok {
		return t
	}
	return now
}

// Tick removes the rules that have expired by the engine clock, through
// the same path as Update (so the removal is persisted), and re-checks
// registered sessions. Run calls it; tests call it after moving the clock.
// If persisting fails, the expired rules stay in the policy but are still
// ignored by every decision, and sessions are re-checked regardless.
func (e *Engine) Tick() error {
	now := e.now()
	next := e.state.Load().nextExpiry()
	if next.IsZero() || now.Before(next) {
		return nil
	}
	var removed []string
	err := e.update(func(p *Policy) error {
		removed = removeExpired(p, now)
		if len(removed) == 0 {
			return errUnchanged
		}
		return nil
	})
	switch {
	case err == nil:
		e.log.Info("Expired network rules removed.", "rules", removed)
	case errors.Is(err, errUnchanged):
		err = nil
	}
	e.recheck()
	return err
}

// removeExpired deletes the rules expired at now and names them.
func removeExpired(p *Policy, now time.Time) (removed []string) {
	fw := p.FirewallRules[:0]
	for _, r := range p.FirewallRules {
		if r.Expired(now) {
			removed = append(removed, KindFirewall+"/"+r.Name)
			continue
		}
		fw = append(fw, r)
	}
	p.FirewallRules = fw
	nw := p.NetworkRules[:0]
	for _, r := range p.NetworkRules {
		if r.Expired(now) {
			removed = append(removed, KindNetwork+"/"+r.Name)
			continue
		}
		nw = append(nw, r)
	}
	p.NetworkRules = nw
	return removed
}

// Run removes rules as they expire until ctx ends. It sleeps until the next
// expiry, but never longer than a second.
func (e *Engine) Run(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		wait := maxWake
		if err := e.Tick(); err != nil {
			e.log.Error("Failed to remove expired network rules; retrying.", "error", err)
		} else if next := e.state.Load().nextExpiry(); !next.IsZero() {
			wait = min(max(next.Sub(e.now()), time.Millisecond), maxWake)
		}
		t.Reset(wait)
	}
}

// Register watches a live session from src to dstPort. When a later change
// or expiry stops allowing it, onDenied is called exactly once, with the
// decision, and the session is unregistered. If the policy in force already
// denies it, onDenied is called before Register returns. onDenied runs on
// the goroutine that made the change, never with an engine lock held; it
// should not block (close the connection or cancel a context). The returned
// function unregisters; calling it more than once is harmless.
func (e *Engine) Register(src netip.Addr, dstPort uint16, onDenied func(Decision)) (unregister func()) {
	if onDenied == nil {
		onDenied = func(Decision) {}
	}
	s := &session{src: normalizeAddr(src), port: dstPort, onDenied: onDenied}
	e.sessions.Lock()
	id := e.sessions.next
	e.sessions.next++
	e.sessions.m[id] = s
	// Checked after the insertion: a change swapped in before this point is
	// seen here, one after it re-checks the session itself.
	d, _ := e.state.Load().inboundDecision(s.src, s.port, e.now())
	if !d.Allowed {
		delete(e.sessions.m, id)
	}
	e.sessions.Unlock()
	if !d.Allowed {
		e.deny(s, d)
	}
	return func() {
		e.sessions.Lock()
		delete(e.sessions.m, id)
		e.sessions.Unlock()
	}
}

// recheck ends the sessions the policy in force no longer allows.
func (e *Engine) recheck() {
	type denial struct {
		s *session
		d Decision
	}
	var denied []denial
	e.sessions.Lock()
	// Loading under the lock makes the newest policy win when re-checks
	// overlap.
	c, now := e.state.Load(), e.now()
	for id, s := range e.sessions.m {
		if d, _ := c.inboundDecision(s.src, s.port, now); !d.Allowed {
			delete(e.sessions.m, id) // whoever deletes it calls onDenied
			denied = append(denied, denial{s, d})
		}
	}
	e.sessions.Unlock()
	for _, x := range denied {
		e.deny(x.s, x.d)
	}
}

func (e *Engine) deny(s *session, d Decision) {
	e.log.Info("Ending session denied by network policy.", "source", s.src, "port", s.port, "rule", d.Rule, "reason", d.Reason)
	s.onDenied(d)
}

// Sessions returns how many sessions are registered.
func (e *Engine) Sessions() int {
	e.sessions.Lock()
	defer e.sessions.Unlock()
	return len(e.sessions.m)
}

// RuleStats is a rule's usage since the engine started. Counts survive
// updates that keep the rule's name.
type RuleStats struct {
	Name string `json:"name"`
	// Kind is KindFirewall or KindNetwork.
	Kind string `json:"kind"`
	// Hits counts the Check and CheckOutbound calls this rule decided.
	Hits uint64 `json:"hits"`
	// LastUsed is the time of the latest hit; zero if none.
	LastUsed time.Time `json:"last_used,omitzero"`
}

// Stats returns the usage of every rule in force: firewall rules by name,
// then inbound and outbound network rules by priority.
func (e *Engine) Stats() []RuleStats {
	c := e.state.Load()
	out := make([]RuleStats, 0, len(c.firewall)+len(c.inbound)+len(c.outbound))
	add := func(kind, name string, ctr *counter) {
		st := RuleStats{Name: name, Kind: kind, Hits: ctr.hits.Load()}
		if n := ctr.lastUsed.Load(); n != 0 {
			st.LastUsed = time.Unix(0, n).UTC()
		}
		out = append(out, st)
	}
	for _, r := range c.firewall {
		add(KindFirewall, r.name, r.ctr)
	}
	for _, list := range [][]netMatch{c.inbound, c.outbound} {
		for _, r := range list {
			add(KindNetwork, r.name, r.ctr)
		}
	}
	return out
}

// PortPolicy is an Engine seen from one listening port: the shape the
// gateway's AccessPolicy interface asks for.
type PortPolicy struct {
	e    *Engine
	port uint16
}

// ForPort returns the engine's decisions for connections to port.
func (e *Engine) ForPort(port uint16) PortPolicy { return PortPolicy{e: e, port: port} }

// Allow decides for a new connection from src and names the deciding rule
// ("" for the default deny).
func (pp PortPolicy) Allow(src netip.Addr) (ok bool, rule string) {
	d := pp.e.Check(src, pp.port)
	return d.Allowed, d.Rule
}

// Watch calls onDenied once if src stops being allowed; stop ends the watch.
func (pp PortPolicy) Watch(src netip.Addr, onDenied func()) (stop func()) {
	return pp.e.Register(src, pp.port, func(Decision) { onDenied() })
}
