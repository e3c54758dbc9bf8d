package network

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/pgshield/pgshield/internal/netpolicy"
	"github.com/pgshield/pgshield/internal/nft"
)

func TestEffectiveAllowMatchesDecisions(t *testing.T) {
	rule := func(name string, prio int, access, src, ports string) netpolicy.NetworkRule {
		return netpolicy.NetworkRule{Name: name, Priority: prio, Access: access, SourcePrefix: src, DestinationPorts: ports}
	}
	cases := []struct {
		name  string
		rules []netpolicy.NetworkRule
	}{
		{"deny beats allow", []netpolicy.NetworkRule{rule("d", 100, "Deny", "10.0.0.0/8", ""), rule("a", 200, "Allow", "10.77.0.5/32", "")}},
		{"allow beats deny", []netpolicy.NetworkRule{rule("a", 100, "Allow", "10.77.0.5/32", ""), rule("d", 200, "Deny", "10.0.0.0/8", "")}},
		{"hole in an allow", []netpolicy.NetworkRule{rule("d", 100, "Deny", "10.77.0.0/24", ""), rule("a", 200, "Allow", "*", "")}},
		{"other port ignored", []netpolicy.NetworkRule{rule("a", 100, "Allow", "10.77.0.0/24", "1-1000"), rule("b", 200, "Allow", "192.168.0.0/16", "5432")}},
		{"ipv6", []netpolicy.NetworkRule{rule("d", 100, "Deny", "fd77::2/128", ""), rule("a", 200, "Allow", "fd77::/64", "")}},
	}
	probes := []string{"10.0.0.1", "10.77.0.4", "10.77.0.5", "10.77.0.6", "10.77.1.1", "192.168.3.4", "8.8.8.8", "fd77::1", "fd77::2", "fd77::3", "2001:db8::1", "0.0.0.0", "255.255.255.255"}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := &netpolicy.Policy{Mode: netpolicy.ModePrivate, NetworkRules: tc.rules}
			if err := p.Validate(); err != nil {
				t.Fatal(err)
			}
			v4, v6, err := effectiveAllow(p.NetworkRules, 5432, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range probes {
				a := netip.MustParseAddr(s)
				want := p.DecideInbound(a, 5432, time.Now()).Allowed
				if got := inRanges(a, v4, v6); got != want {
					t.Errorf("kernel set allows %s = %v; gateway decides %v (v4 %v, v6 %v)", s, got, want, fmt.Sprint(v4), fmt.Sprint(v6))
				}
			}
		})
	}
}

func inRanges(a netip.Addr, v4, v6 []nft.Range) bool {
	set := v6
	if a.Is4() {
		set = v4
	}
	for _, r := range set {
		if !a.Less(r.From) && !r.To.Less(a) {
			return true
		}
	}
	return false
}
