package proxyproto

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Trusted is a list of networks whose connections may carry a PROXY header:
// the load balancers in front of the gateway. The zero Trusted trusts no one.
// It is immutable and safe for concurrent use.
type Trusted struct {
	prefixes []netip.Prefix
}

// ParseTrusted parses a comma-separated list of CIDR prefixes and bare
// addresses, such as "10.0.0.0/8, 192.168.1.5, fd00::/8". Spaces around
// entries are ignored; a blank string is the empty list. A prefix with host
// bits set (10.1.0.0/8) is refused as a likely typo, and IPv4-mapped IPv6
// prefixes are normalised to IPv4.
func ParseTrusted(s string) (Trusted, error) {
	if strings.TrimSpace(s) == "" {
		return Trusted{}, nil
	}
	var ps []netip.Prefix
	for i, e := range strings.Split(s, ",") {
		e = strings.TrimSpace(e)
		p, err := parseEntry(e)
		if err != nil {
			return Trusted{}, fmt.Errorf("trusted proxy entry %d %q: %w", i+1, e, err)
		}
		ps = append(ps, p)
	}
	return Trusted{prefixes: ps}, nil
}

func parseEntry(e string) (netip.Prefix, error) {
	if e == "" {
		return netip.Prefix{}, fmt.Errorf("empty entry")
	}
	if !strings.Contains(e, "/") {
		a, err := netip.ParseAddr(e)
		if err != nil {
			return netip.Prefix{}, err
		}
		if a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("address has a zone")
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(e)
	if err != nil {
		return netip.Prefix{}, err
	}
	if m := p.Masked(); m != p {
		return netip.Prefix{}, fmt.Errorf("host bits set; did you mean %s?", m)
	}
	return normalise(p), nil
}

// normalise turns an IPv4-mapped prefix of at least 96 bits into IPv4.
func normalise(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p
}

// NewTrusted returns a list of the given valid prefixes, masked and
// normalised like ParseTrusted's.
func NewTrusted(prefixes ...netip.Prefix) (Trusted, error) {
	ps := make([]netip.Prefix, 0, len(prefixes))
	for _, p := range prefixes {
		if !p.IsValid() {
			return Trusted{}, fmt.Errorf("trusted proxy prefix %v is invalid", p)
		}
		ps = append(ps, normalise(p.Masked()))
	}
	return Trusted{prefixes: ps}, nil
}

// Contains reports whether a is in one of the prefixes. An IPv4-mapped
// IPv6 address counts as IPv4 and a zone is ignored; an invalid address is
// never trusted.
func (t Trusted) Contains(a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	a = a.Unmap().WithZone("")
	for _, p := range t.prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Len is the number of prefixes.
func (t Trusted) Len() int { return len(t.prefixes) }

// Prefixes returns a copy of the prefixes in the order given.
func (t Trusted) Prefixes() []netip.Prefix { return slices.Clone(t.prefixes) }

// String lists the prefixes in ParseTrusted's format.
func (t Trusted) String() string {
	s := make([]string, len(t.prefixes))
	for i, p := range t.prefixes {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

// MarshalText implements encoding.TextMarshaler.
func (t Trusted) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with ParseTrusted.
func (t *Trusted) UnmarshalText(b []byte) error {
	v, err := ParseTrusted(string(b))
	if err != nil {
		return err
	}
	*t = v
	return nil
}
