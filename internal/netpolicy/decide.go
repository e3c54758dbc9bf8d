package netpolicy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"
)

// Decision is the outcome of checking traffic against a policy.
type Decision struct {
	// Allowed reports whether the traffic may pass.
	Allowed bool
	// Rule names the deciding rule, or is "" when nothing matched and the
	// default deny applies.
	Rule string
	// Reason is a sentence for logs and the management API. It names rules
	// (not the address, which the caller has), so it is not meant for the
	// client. It is built when the policy is, so deciding allocates nothing.
	Reason string
}

// DecideInbound decides whether a client at src may connect to dstPort at
// now. In public mode the firewall rules decide and dstPort is ignored; in
// private mode the inbound network rules do. Expired rules are skipped.
//
// It validates a copy of p on every call (p itself is not changed) and
// denies everything when p is invalid; Engine.Check is the fast path.
func (p *Policy) DecideInbound(src netip.Addr, dstPort uint16, now time.Time) Decision {
	c, err := p.Clone().compile()
	if err != nil {
		return Decision{Reason: fmt.Sprintf("the network policy is invalid, so every client is denied: %v", err)}
	}
	d, _ := c.inboundDecision(src, dstPort, now)
	return d
}

// DecideOutbound decides whether the database server may reach dst on
// dstPort at now. Outbound network rules apply in either mode; nothing
// matching means deny. Like DecideInbound it works on a validated copy.
func (p *Policy) DecideOutbound(dst netip.Addr, dstPort uint16, now time.Time) Decision {
	c, err := p.Clone().compile()
	if err != nil {
		return Decision{Reason: fmt.Sprintf("the network policy is invalid, so every destination is denied: %v", err)}
	}
	d, _ := c.outboundDecision(dst, dstPort, now)
	return d
}

// counter is a rule's hit count and last use, shared by the compiled forms
// of a rule across updates so that statistics survive them.
type counter struct {
	hits     atomic.Uint64
	lastUsed atomic.Int64 // UnixNano; 0 means never
}

func (c *counter) hit(now time.Time) {
	if c == nil {
		return
	}
	c.hits.Add(1)
	c.lastUsed.Store(now.UnixNano())
}

// fwMatch is a firewall rule ready for matching.
type fwMatch struct {
	name       string
	reason     string
	start, end netip.Addr
	expires    time.Time
	ctr        *counter
}

// compiled is a validated policy with its rules sorted for matching. It is
// immutable once built, apart from the counters.
type compiled struct {
	policy   *Policy
	mode     Mode
	firewall []fwMatch  // by lower-case name
	inbound  []netMatch // by priority
	outbound []netMatch // by priority
}

func (c *compiled) sort() {
	slices.SortFunc(c.firewall, func(a, b fwMatch) int {
		return strings.Compare(strings.ToLower(a.name), strings.ToLower(b.name))
	})
	byPriority := func(a, b netMatch) int { return cmp.Compare(a.priority, b.priority) }
	slices.SortFunc(c.inbound, byPriority)
	slices.SortFunc(c.outbound, byPriority)
}

// counterKey identifies a rule's statistics across updates.
func counterKey(kind, name string) string { return kind + "/" + strings.ToLower(name) }

// attachCounters gives every rule a counter, taking over prev's for rules
// that keep their name.
func (c *compiled) attachCounters(prev *compiled) {
	old := map[string]*counter{}
	if prev != nil {
		for _, r := range prev.firewall {
			old[counterKey(KindFirewall, r.name)] = r.ctr
		}
		for _, list := range [][]netMatch{prev.inbound, prev.outbound} {
			for _, r := range list {
				old[counterKey(KindNetwork, r.name)] = r.ctr
			}
		}
	}
	get := func(kind, name string) *counter {
		if ctr := old[counterKey(kind, name)]; ctr != nil {
			return ctr
		}
		return new(counter)
	}
	for i := range c.firewall {
		c.firewall[i].ctr = get(KindFirewall, c.firewall[i].name)
	}
	for _, list := range [][]netMatch{c.inbound, c.outbound} {
		for i := range list {
			list[i].ctr = get(KindNetwork, list[i].name)
		}
	}
}

// normalizeAddr unmaps IPv4-mapped IPv6 and drops any zone.
func normalizeAddr(a netip.Addr) netip.Addr { return a.Unmap().WithZone("") }

// inboundDecision decides and returns the deciding rule's counter, or nil.
func (c *compiled) inboundDecision(src netip.Addr, port uint16, now time.Time) (Decision, *counter) {
	if !src.IsValid() {
		return Decision{Reason: "the source address is unknown"}, nil
	}
	src = normalizeAddr(src)
	if c.mode == ModePrivate {
		return decideNetwork(c.inbound, "no inbound network rule matches the source address and port; denied by default", src, port, now)
	}
	for i := range c.firewall {
		r := &c.firewall[i]
		if expired(r.expires, now) || r.start.Is4() != src.Is4() ||
			src.Compare(r.start) < 0 || src.Compare(r.end) > 0 {
			continue
		}
		return Decision{Allowed: true, Rule: r.name, Reason: r.reason}, r.ctr
	}
	return Decision{Reason: "no firewall rule allows the source address"}, nil
}

func (c *compiled) outboundDecision(dst netip.Addr, port uint16, now time.Time) (Decision, *counter) {
	if !dst.IsValid() {
		return Decision{Reason: "the destination address is unknown"}, nil
	}
	return decideNetwork(c.outbound, "no outbound network rule matches the destination address and port; denied by default", normalizeAddr(dst), port, now)
}

func decideNetwork(rules []netMatch, noMatch string, a netip.Addr, port uint16, now time.Time) (Decision, *counter) {
	for i := range rules {
		r := &rules[i]
		if expired(r.expires, now) || !r.matches(a, port) {
			continue
		}
		return Decision{Allowed: r.allow, Rule: r.name, Reason: r.reason}, r.ctr
	}
	return Decision{Reason: noMatch}, nil
}

// nextExpiry returns the earliest expiry of any rule, or zero.
func (c *compiled) nextExpiry() time.Time {
	var next time.Time
	consider := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	for _, r := range c.firewall {
		consider(r.expires)
	}
	for _, list := range [][]netMatch{c.inbound, c.outbound} {
		for _, r := range list {
			consider(r.expires)
		}
	}
	return next
}
