package netpolicy

import (
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// FuzzParsePorts checks that ParsePorts never panics, that every range it
// returns is within 1..65535 and ordered, that the canonical form parses
// back to the same ranges, and that each accepted decimal it read is
// contained in the result.
func FuzzParsePorts(f *testing.F) {
	for _, s := range []string{"*", "5432", " 5000-6000 ", "5432, 6000-6010", "0", "65536", "6000-5000", "1,,2",
		"*,5432", "-", "1-", "007", "+5", "5432-5432", strings.Repeat("1,", 300) + "1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		rs, err := ParsePorts(s)
		if err != nil {
			if rs != nil {
				t.Fatalf("ParsePorts(%q) = %v with error %v", s, rs, err)
			}
			return
		}
		if len(rs) == 0 || len(rs) > maxPortItems {
			t.Fatalf("ParsePorts(%q) = %d ranges", s, len(rs))
		}
		for _, r := range rs {
			if r.First < 1 || r.First > r.Last {
				t.Fatalf("ParsePorts(%q) has range %v", s, r)
			}
		}
		again, err := ParsePorts(formatPorts(rs))
		if err != nil || !reflect.DeepEqual(again, rs) {
			t.Fatalf("ParsePorts(%q) = %v, formatted %q, parses as %v, %v", s, rs, formatPorts(rs), again, err)
		}
		for _, item := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == '-' || r == ' ' || r == '\t' }) {
			n, err := strconv.Atoi(strings.TrimSpace(item))
			if err != nil {
				continue
			}
			in := false
			for _, r := range rs {
				in = in || r.Contains(uint16(n))
			}
			if !in {
				t.Fatalf("ParsePorts(%q) = %v does not contain port %d it was given", s, rs, n)
			}
		}
	})
}

// FuzzRulePayload builds a policy from the fields of a firewall rule and a
// network rule as a management request carries them, and checks that the
// validator's verdict and the decisions agree: a valid firewall rule admits
// both ends of its range and nothing just outside it (it is the only one), a
// valid inbound network rule decides by its access for an address of its
// source on one of its ports and leaves other ports to the default deny,
// and an invalid policy is refused by Encode's counterpart, DecodePolicy.
func FuzzRulePayload(f *testing.F) {
	f.Add("AllowLocalhost", "127.0.0.1", "127.0.0.1", "r1", 100, "Allow", "Inbound", "10.0.0.0/8", "", "5432", false)
	f.Add("v6", "::ffff:10.0.0.1", "10.0.0.9", "deny", 4096, "deny", "inbound", "*", "*", "*", true)
	f.Add("bad name!", "10.0.0.9", "10.0.0.1", "out", 99, "Allow", "Outbound", "", "192.0.2.0/24", "443,80-81", true)
	f.Add("x", "fe80::1%eth0", "fe80::2", "y", 4097, "Maybe", "Sideways", "10.1.0.0/8", "", "0", false)
	f.Fuzz(func(t *testing.T, fwName, start, end, nrName string, prio int, access, dir, src, dst, ports string, private bool) {
		p := &Policy{Mode: ModePublic}
		if private {
			p.Mode = ModePrivate
		}
		sa, errS := netip.ParseAddr(start)
		ea, errE := netip.ParseAddr(end)
		if errS == nil && errE == nil {
			p.FirewallRules = []FirewallRule{{Name: fwName, StartIP: sa, EndIP: ea}}
		}
		p.NetworkRules = []NetworkRule{{Name: nrName, Priority: prio, Access: access, Direction: dir,
			SourcePrefix: src, DestinationPrefix: dst, DestinationPorts: ports}}
		v := p.Clone()
		err := v.Validate()
		enc, encErr := p.Encode()
		if encErr == nil {
			// Encode does not validate; DecodePolicy must agree with
			// Validate about the same payload.
			if _, decErr := DecodePolicy(enc); (decErr == nil) != (err == nil) {
				t.Fatalf("Validate(%+v) = %v but DecodePolicy of its encoding = %v", p, err, decErr)
			}
		}
		now := time.Unix(1e9, 0)
		if err != nil {
			if d := p.DecideInbound(netip.MustParseAddr("127.0.0.1"), 5432, now); d.Allowed {
				t.Fatalf("invalid policy %+v (%v) allowed a client: %+v", p, err, d)
			}
			return
		}
		if len(v.FirewallRules) == 1 && v.Mode == ModePublic {
			fw := v.FirewallRules[0]
			for _, a := range []netip.Addr{fw.StartIP, fw.EndIP} {
				if d := v.DecideInbound(a, 5432, now); !d.Allowed || !strings.EqualFold(d.Rule, fw.Name) {
					t.Fatalf("firewall rule %+v: DecideInbound(%v) = %+v; want allowed by it", fw, a, d)
				}
			}
			for _, a := range []netip.Addr{fw.StartIP.Prev(), fw.EndIP.Next()} {
				if a.IsValid() && (a.Less(fw.StartIP) || fw.EndIP.Less(a)) {
					if d := v.DecideInbound(a, 5432, now); d.Allowed {
						t.Fatalf("firewall rule %+v: DecideInbound(%v) = %+v; want denied", fw, a, d)
					}
				}
			}
		}
		nr := v.NetworkRules[0]
		if v.Mode != ModePrivate || nr.Direction == DirectionOutbound {
			return
		}
		var probe netip.Addr
		if nr.SourcePrefix == Any || nr.SourcePrefix == "" {
			probe = netip.MustParseAddr("10.1.2.3")
		} else if pfx, perr := netip.ParsePrefix(nr.SourcePrefix); perr == nil {
			probe = pfx.Addr()
		} else if a, aerr := netip.ParseAddr(nr.SourcePrefix); aerr == nil {
			probe = a
		} else {
			t.Fatalf("validated source prefix %q parses as neither prefix nor address", nr.SourcePrefix)
		}
		rs, perr := ParsePorts(nr.DestinationPorts)
		if nr.DestinationPorts == "" {
			rs, perr = ParsePorts(Any)
		}
		if perr != nil {
			t.Fatalf("validated ports %q do not parse: %v", nr.DestinationPorts, perr)
		}
		d := v.DecideInbound(probe, rs[0].First, now)
		if d.Allowed != (nr.Access == AccessAllow) || !strings.EqualFold(d.Rule, nr.Name) {
			t.Fatalf("network rule %+v: DecideInbound(%v, %d) = %+v; want decided by it", nr, probe, rs[0].First, d)
		}
		if rs[0].First > 1 {
			in := false
			for _, r := range rs {
				in = in || r.Contains(rs[0].First-1)
			}
			if d := v.DecideInbound(probe, rs[0].First-1, now); !in && (d.Allowed || d.Rule != "") {
				t.Fatalf("network rule %+v: DecideInbound(%v, %d) = %+v; want the default deny", nr, probe, rs[0].First-1, d)
			}
		}
	})
}
