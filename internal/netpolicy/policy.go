package netpolicy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"
)

// Mode is the connectivity method of the server.
type Mode string

const (
	// ModePublic admits a client when a firewall rule allows its address.
	ModePublic Mode = "public"
	// ModePrivate admits a client when the inbound network security rules
	// allow it; the gateway listens only on private addresses.
	ModePrivate Mode = "private"
)

// ParseMode parses a mode name, case-insensitively.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(strings.ToLower(s)); m {
	case ModePublic, ModePrivate:
		return m, nil
	}
	return "", fmt.Errorf("network mode %q is not %q or %q", s, ModePublic, ModePrivate)
}

// Access values of a network rule. Input is matched case-insensitively;
// Validate rewrites it to these spellings.
const (
	// AccessAllow lets matching traffic through.
	AccessAllow = "Allow"
	// AccessDeny refuses matching traffic.
	AccessDeny = "Deny"
)

// Direction values of a network rule. Input is matched case-insensitively;
// Validate rewrites it to these spellings.
const (
	// DirectionInbound rules decide which clients may connect to the gateway.
	DirectionInbound = "Inbound"
	// DirectionOutbound rules decide which destinations the database server
	// may reach.
	DirectionOutbound = "Outbound"
)

// Rule kinds, as reported in RuleStats and RuleError.
const (
	// KindFirewall is a FirewallRule (public access).
	KindFirewall = "firewall"
	// KindNetwork is a NetworkRule (private access and outbound).
	KindNetwork = "network"
)

// Limits on rule fields, the same as Azure's where Azure has one.
const (
	// MaxRuleNameLen is the longest rule name.
	MaxRuleNameLen = 128
	// MinPriority is the lowest (strongest) network rule priority.
	MinPriority = 100
	// MaxPriority is the highest (weakest) network rule priority.
	MaxPriority = 4096
)

// Any is the prefix or port specification that matches everything.
const Any = "*"

// ErrInvalidPolicy is matched (errors.Is) by every error Validate returns,
// so callers can tell a bad request from a failure to persist.
var ErrInvalidPolicy = errors.New("invalid network policy")

// FirewallRule allows an inclusive range of source addresses in public access
// mode. Both bounds are of one family; an IPv4-mapped IPv6 bound is stored as
// IPv4.
type FirewallRule struct {
	// Name is unique among firewall rules, compared case-insensitively:
	// 1 to 128 letters, digits, '-' and '_'.
	Name    string     `json:"name"`
	StartIP netip.Addr `json:"start_ip"`
	EndIP   netip.Addr `json:"end_ip"`
	// ExpiresAt is when the rule stops applying and is removed; zero means
	// never.
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	// CreatedAt is set by Engine.Update when it is zero.
	CreatedAt time.Time `json:"created_at,omitzero"`
}

// Expired reports whether the rule no longer applies at now.
func (r *FirewallRule) Expired(now time.Time) bool { return expired(r.ExpiresAt, now) }

// NetworkRule is a network security rule. Inbound rules apply in private
// access mode; outbound rules apply in either mode.
type NetworkRule struct {
	// Name is unique among network rules of both directions, compared
	// case-insensitively: 1 to 128 letters, digits, '-' and '_'.
	Name string `json:"name"`
	// Priority orders the rules: 100 to 4096, unique within a direction,
	// lowest first; the first match decides.
	Priority int `json:"priority"`
	// Access is AccessAllow or AccessDeny.
	Access string `json:"access"`
	// Direction is DirectionInbound (the default) or DirectionOutbound.
	Direction string `json:"direction,omitempty"`
	// SourcePrefix is "*", a CIDR prefix or a single address. Inbound rules
	// require it; outbound rules have none ("" or "*", stored as "").
	SourcePrefix string `json:"source_prefix,omitempty"`
	// DestinationPrefix is "*", a CIDR prefix or a single address. Outbound
	// rules require it; inbound rules have none ("" or "*", stored as "").
	DestinationPrefix string `json:"destination_prefix,omitempty"`
	// DestinationPorts is "*", a port, a range "5000-6000" or a
	// comma-separated list of those; "" means "*". See ParsePorts.
	DestinationPorts string `json:"destination_ports"`
	// ExpiresAt is when the rule stops applying and is removed; zero means
	// never.
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	// CreatedAt is set by Engine.Update when it is zero.
	CreatedAt time.Time `json:"created_at,omitzero"`
}

// Expired reports whether the rule no longer applies at now.
func (r *NetworkRule) Expired(now time.Time) bool { return expired(r.ExpiresAt, now) }

func expired(at, now time.Time) bool { return !at.IsZero() && !now.Before(at) }

// Policy is the complete network configuration. Both rule lists are kept in
// either mode, so switching modes loses nothing; Mode selects which inbound
// rules apply.
type Policy struct {
	// Mode is ModePublic or ModePrivate; "" means ModePublic.
	Mode          Mode           `json:"mode"`
	FirewallRules []FirewallRule `json:"firewall_rules,omitempty"`
	NetworkRules  []NetworkRule  `json:"network_rules,omitempty"`
}

// Clone returns a deep copy of p.
func (p *Policy) Clone() *Policy {
	if p == nil {
		return nil
	}
	c := &Policy{Mode: p.Mode}
	if p.FirewallRules != nil {
		c.FirewallRules = append([]FirewallRule{}, p.FirewallRules...)
	}
	if p.NetworkRules != nil {
		c.NetworkRules = append([]NetworkRule{}, p.NetworkRules...)
	}
	return c
}

// SetFirewallRule replaces the firewall rule with r's name
// (case-insensitively) or appends r. It does not validate.
func (p *Policy) SetFirewallRule(r FirewallRule) {
	p.FirewallRules = setNamed(p.FirewallRules, r, func(r FirewallRule) string { return r.Name })
}

// DeleteFirewallRule removes the firewall rule named name
// (case-insensitively) and reports whether there was one.
func (p *Policy) DeleteFirewallRule(name string) (ok bool) {
	p.FirewallRules, ok = deleteNamed(p.FirewallRules, name, func(r FirewallRule) string { return r.Name })
	return ok
}

// SetNetworkRule replaces the network rule with r's name
// (case-insensitively) or appends r. It does not validate.
func (p *Policy) SetNetworkRule(r NetworkRule) {
	p.NetworkRules = setNamed(p.NetworkRules, r, func(r NetworkRule) string { return r.Name })
}

// DeleteNetworkRule removes the network rule named name (case-insensitively)
// and reports whether there was one.
func (p *Policy) DeleteNetworkRule(name string) (ok bool) {
	p.NetworkRules, ok = deleteNamed(p.NetworkRules, name, func(r NetworkRule) string { return r.Name })
	return ok
}

// setNamed replaces the rule named like r in rs (case-insensitively) or
// appends r.
func setNamed[T any](rs []T, r T, name func(T) string) []T {
	for i := range rs {
		if strings.EqualFold(name(rs[i]), name(r)) {
			rs[i] = r
			return rs
		}
	}
	return append(rs, r)
}

// deleteNamed removes the rule named n from rs (case-insensitively).
func deleteNamed[T any](rs []T, n string, name func(T) string) ([]T, bool) {
	for i := range rs {
		if strings.EqualFold(name(rs[i]), n) {
			return append(rs[:i], rs[i+1:]...), true
		}
	}
	return rs, false
}

// RuleError is one problem Validate found. It matches ErrInvalidPolicy.
type RuleError struct {
	// Kind is KindFirewall or KindNetwork, or "" for the policy itself.
	Kind string
	// Index is the rule's position in its list.
	Index int
	// Name is the rule's name as given.
	Name string
	// Field is the JSON name of the offending field.
	Field string
	// Msg says what is wrong.
	Msg string
}

func (e *RuleError) Error() string {
	var b strings.Builder
	switch {
	case e.Kind == "":
		b.WriteString("network policy")
	case e.Name != "":
		fmt.Fprintf(&b, "%s rule %q", e.Kind, e.Name)
	default:
		fmt.Fprintf(&b, "%s rule #%d", e.Kind, e.Index+1)
	}
	fmt.Fprintf(&b, ": %s: %s", e.Field, e.Msg)
	return b.String()
}

// Is makes every RuleError match ErrInvalidPolicy.
func (e *RuleError) Is(target error) bool { return target == ErrInvalidPolicy }

// Validate checks p and puts it in canonical form: Mode lower-case ("" becomes
// ModePublic), IPv4-mapped firewall bounds as IPv4, Access and Direction
// spelled as the constants, prefixes and ports in canonical text, times in
// UTC, empty lists nil. It reports every problem found, joined; each is a *RuleError naming
// the rule and the field. Validate is idempotent.
func (p *Policy) Validate() error {
	_, err := p.compile()
	return err
}

// validator collects problems.
type validator struct{ errs []error }

func (v *validator) add(kind string, i int, name, field, format string, args ...any) {
	v.errs = append(v.errs, &RuleError{Kind: kind, Index: i, Name: name, Field: field, Msg: fmt.Sprintf(format, args...)})
}

func (v *validator) name(kind string, i int, name string, seen map[string]int) {
	switch {
	case name == "":
		v.add(kind, i, name, "name", "is required")
		return
	case len(name) > MaxRuleNameLen:
		v.add(kind, i, name, "name", "is %d characters long; the limit is %d", len(name), MaxRuleNameLen)
		return
	}
	for _, c := range []byte(name) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			v.add(kind, i, name, "name", "may contain only letters, digits, '-' and '_'")
			return
		}
	}
	key := strings.ToLower(name)
	if j, dup := seen[key]; dup {
		v.add(kind, i, name, "name", "is already used by %s rule #%d (names are case-insensitive)", kind, j+1)
		return
	}
	seen[key] = i
}

func (v *validator) firewall(i int, r *FirewallRule, seen map[string]int) {
	v.name(KindFirewall, i, r.Name, seen)
	ok := true
	for _, b := range []struct {
		field string
		addr  *netip.Addr
	}{{"start_ip", &r.StartIP}, {"end_ip", &r.EndIP}} {
		switch {
		case !b.addr.IsValid():
			v.add(KindFirewall, i, r.Name, b.field, "is required (an IPv4 or IPv6 address)")
			ok = false
		case b.addr.Zone() != "":
			v.add(KindFirewall, i, r.Name, b.field, "%s has a zone; rules take plain addresses", *b.addr)
			ok = false
		default:
			*b.addr = b.addr.Unmap()
		}
	}
	if ok {
		switch {
		case r.StartIP.Is4() != r.EndIP.Is4():
			v.add(KindFirewall, i, r.Name, "end_ip", "%s and start_ip %s are of different address families", r.EndIP, r.StartIP)
		case r.StartIP.Compare(r.EndIP) > 0:
			v.add(KindFirewall, i, r.Name, "start_ip", "%s is after end_ip %s", r.StartIP, r.EndIP)
		}
	}
	v.time(KindFirewall, i, r.Name, "expires_at", &r.ExpiresAt)
	v.time(KindFirewall, i, r.Name, "created_at", &r.CreatedAt)
}

// time puts *t in UTC without a monotonic reading, so that it survives a
// JSON round trip unchanged, and checks that JSON can carry it.
func (v *validator) time(kind string, i int, name, field string, t *time.Time) {
	if t.IsZero() {
		*t = time.Time{}
		return
	}
	*t = t.Round(0).UTC()
	if y := t.Year(); y < 1 || y > 9999 {
		v.add(kind, i, name, field, "year %d is outside 1..9999", y)
	}
}

// netMatch is a network rule parsed for matching.
type netMatch struct {
	name     string
	reason   string
	priority int
	allow    bool
	all      bool         // "*"
	prefix   netip.Prefix // when !all
	ports    []PortRange
	expires  time.Time
	ctr      *counter
}

func (m *netMatch) matches(a netip.Addr, port uint16) bool {
	if !m.all && !m.prefix.Contains(a) {
		return false
	}
	for _, r := range m.ports {
		if r.Contains(port) {
			return true
		}
	}
	return false
}

func (v *validator) network(i int, r *NetworkRule, seen map[string]int, prios map[string]map[int]int) (netMatch, bool) {
	n := len(v.errs)
	v.name(KindNetwork, i, r.Name, seen)
	m := netMatch{name: r.Name, priority: r.Priority}

	switch {
	case strings.EqualFold(r.Access, AccessAllow):
		r.Access, m.allow = AccessAllow, true
	case strings.EqualFold(r.Access, AccessDeny):
		r.Access = AccessDeny
	case r.Access == "":
		v.add(KindNetwork, i, r.Name, "access", "is required (%q or %q)", AccessAllow, AccessDeny)
	default:
		v.add(KindNetwork, i, r.Name, "access", "%q is not %q or %q", r.Access, AccessAllow, AccessDeny)
	}

	dirOK := true
	switch {
	case r.Direction == "" || strings.EqualFold(r.Direction, DirectionInbound):
		r.Direction = DirectionInbound
	case strings.EqualFold(r.Direction, DirectionOutbound):
		r.Direction = DirectionOutbound
	default:
		v.add(KindNetwork, i, r.Name, "direction", "%q is not %q or %q", r.Direction, DirectionInbound, DirectionOutbound)
		dirOK = false
	}

	if r.Priority < MinPriority || r.Priority > MaxPriority {
		v.add(KindNetwork, i, r.Name, "priority", "%d is outside %d..%d", r.Priority, MinPriority, MaxPriority)
	} else if dirOK {
		if prios[r.Direction] == nil {
			prios[r.Direction] = map[int]int{}
		}
		if j, dup := prios[r.Direction][r.Priority]; dup {
			v.add(KindNetwork, i, r.Name, "priority", "%d is already used by %s network rule #%d", r.Priority, strings.ToLower(r.Direction), j+1)
		} else {
			prios[r.Direction][r.Priority] = i
		}
	}

	// The prefix that matters is the remote end: the source of inbound
	// traffic, the destination of outbound. The other end is the server
	// itself and may only be "*", stored as "".
	matched, matchedField, other, otherField := &r.SourcePrefix, "source_prefix", &r.DestinationPrefix, "destination_prefix"
	if r.Direction == DirectionOutbound {
		matched, matchedField, other, otherField = other, otherField, matched, matchedField
	}
	if dirOK {
		if *other == "" || *other == Any {
			*other = ""
		} else {
			v.add(KindNetwork, i, r.Name, otherField, "must be %q or empty for %s rules (that end is this server)", Any, r.Direction)
		}
		if *matched == "" {
			v.add(KindNetwork, i, r.Name, matchedField, "is required for %s rules (%q or a CIDR prefix such as 10.0.0.0/8)", r.Direction, Any)
		} else if pfx, all, canon, err := parsePrefix(*matched); err != nil {
			v.add(KindNetwork, i, r.Name, matchedField, "%v", err)
		} else {
			*matched, m.prefix, m.all = canon, pfx, all
		}
	}

	if r.DestinationPorts == "" {
		r.DestinationPorts = Any
	}
	if ports, err := ParsePorts(r.DestinationPorts); err != nil {
		v.add(KindNetwork, i, r.Name, "destination_ports", "%v", err)
	} else {
		m.ports = ports
		if strings.TrimSpace(r.DestinationPorts) == Any {
			r.DestinationPorts = Any
		} else {
			r.DestinationPorts = formatPorts(ports)
		}
	}

	v.time(KindNetwork, i, r.Name, "expires_at", &r.ExpiresAt)
	v.time(KindNetwork, i, r.Name, "created_at", &r.CreatedAt)
	m.expires = r.ExpiresAt
	verb, what := "denies", "source address"
	if m.allow {
		verb = "allows"
	}
	if r.Direction == DirectionOutbound {
		what = "destination address"
	}
	m.reason = fmt.Sprintf("%s network rule %q (priority %d) %s the %s and port",
		strings.ToLower(r.Direction), r.Name, r.Priority, verb, what)
	return m, len(v.errs) == n
}

// parsePrefix parses "*", a CIDR prefix or a single address. An IPv4-mapped
// IPv6 prefix of length 96 or more becomes the IPv4 prefix it covers. canon is
// the canonical text: "*", the address alone for a single-host prefix, or
// the prefix.
func parsePrefix(s string) (pfx netip.Prefix, all bool, canon string, err error) {
	if s == Any {
		return netip.Prefix{}, true, Any, nil
	}
	if strings.Contains(s, "%") {
		return netip.Prefix{}, false, "", fmt.Errorf("%q has a zone; rules take plain addresses", s)
	}
	if strings.Contains(s, "/") {
		pfx, err = netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, false, "", fmt.Errorf("%q is not %q or a CIDR prefix such as 10.0.0.0/8", s, Any)
		}
		if m := pfx.Masked(); m != pfx {
			return netip.Prefix{}, false, "", fmt.Errorf("%q has host bits set; for this prefix length the address is %s", s, m)
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, false, "", fmt.Errorf("%q is not %q or a CIDR prefix such as 10.0.0.0/8", s, Any)
		}
		pfx = netip.PrefixFrom(a, a.BitLen())
	}
	if a := pfx.Addr(); a.Is4In6() && pfx.Bits() >= 96 {
		pfx = netip.PrefixFrom(a.Unmap(), pfx.Bits()-96)
	}
	if pfx.IsSingleIP() {
		return pfx, false, pfx.Addr().String(), nil
	}
	return pfx, false, pfx.String(), nil
}

// compile validates and normalises p in place and returns its matcher.
func (p *Policy) compile() (*compiled, error) {
	var v validator
	c := &compiled{policy: p}
	switch m := Mode(strings.ToLower(string(p.Mode))); m {
	case "":
		p.Mode = ModePublic
	case ModePublic, ModePrivate:
		p.Mode = m
	default:
		v.add("", 0, "", "mode", "%q is not %q or %q", p.Mode, ModePublic, ModePrivate)
	}
	c.mode = p.Mode
	// Empty lists are not encoded, so they decode as nil.
	if len(p.FirewallRules) == 0 {
		p.FirewallRules = nil
	}
	if len(p.NetworkRules) == 0 {
		p.NetworkRules = nil
	}

	seen := map[string]int{}
	for i := range p.FirewallRules {
		r := &p.FirewallRules[i]
		v.firewall(i, r, seen)
		c.firewall = append(c.firewall, fwMatch{name: r.Name, start: r.StartIP, end: r.EndIP, expires: r.ExpiresAt,
			reason: fmt.Sprintf("firewall rule %q allows the source address", r.Name)})
	}
	seen = map[string]int{}
	prios := map[string]map[int]int{}
	for i := range p.NetworkRules {
		r := &p.NetworkRules[i]
		m, ok := v.network(i, r, seen, prios)
		if !ok {
			continue
		}
		if r.Direction == DirectionOutbound {
			c.outbound = append(c.outbound, m)
		} else {
			c.inbound = append(c.inbound, m)
		}
	}
	if len(v.errs) > 0 {
		return nil, errors.Join(v.errs...)
	}
	c.sort()
	return c, nil
}

// DecodePolicy strictly decodes and validates a policy: unknown fields,
// anything after the JSON object and invalid rules are errors.
func DecodePolicy(b []byte) (*Policy, error) {
	if t := bytes.TrimLeft(b, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		return nil, errors.New("decoding network policy: want a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var p Policy
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("decoding network policy: %w", err)
	}
	// dec.More() would miss a stray '}' or ']' after the object.
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("decoding network policy: trailing data")
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

// Encode returns p as indented JSON with a final newline, the form
// DecodePolicy reads.
func (p *Policy) Encode() ([]byte, error) {
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding network policy: %w", err)
	}
	return append(b, '\n'), nil
}
