package netpolicy

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

var (
	a  = netip.MustParseAddr
	t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	fw = func(name, start, end string) FirewallRule {
		return FirewallRule{Name: name, StartIP: a(start), EndIP: a(end)}
	}
	rule = func(name string, prio int, access, src, ports string) NetworkRule {
		return NetworkRule{Name: name, Priority: prio, Access: access, SourcePrefix: src, DestinationPorts: ports}
	}
)

func TestValidateErrors(t *testing.T) {
	long := strings.Repeat("a", MaxRuleNameLen)
	tests := []struct {
		name    string
		p       Policy
		wantErr string // substring; "" means valid
	}{
		{name: "empty policy", p: Policy{}},
		{name: "bad mode", p: Policy{Mode: "hybrid"}, wantErr: `network policy: mode: "hybrid" is not "public" or "private"`},
		{name: "longest name", p: Policy{FirewallRules: []FirewallRule{fw(long, "1.2.3.4", "1.2.3.4")}}},
		{name: "name too long", p: Policy{FirewallRules: []FirewallRule{fw(long+"a", "1.2.3.4", "1.2.3.4")}},
			wantErr: "name: is 129 characters long; the limit is 128"},
		{name: "empty name", p: Policy{FirewallRules: []FirewallRule{fw("", "1.2.3.4", "1.2.3.4")}},
			wantErr: "firewall rule #1: name: is required"},
		{name: "name with space", p: Policy{FirewallRules: []FirewallRule{fw("my office", "1.2.3.4", "1.2.3.4")}},
			wantErr: `firewall rule "my office": name: may contain only letters, digits, '-' and '_'`},
		{name: "name with dot", p: Policy{NetworkRules: []NetworkRule{rule("a.b", 100, "Allow", "*", "*")}},
			wantErr: `network rule "a.b": name: may contain only`},
		{name: "non-ASCII name", p: Policy{FirewallRules: []FirewallRule{fw("bür0", "1.2.3.4", "1.2.3.4")}},
			wantErr: "may contain only"},
		{name: "duplicate names differ in case", p: Policy{FirewallRules: []FirewallRule{
			fw("Office", "1.2.3.4", "1.2.3.4"), fw("office", "1.2.3.5", "1.2.3.5")}},
			wantErr: `firewall rule "office": name: is already used by firewall rule #1`},
		{name: "same name in both kinds", p: Policy{FirewallRules: []FirewallRule{fw("x", "1.2.3.4", "1.2.3.4")},
			NetworkRules: []NetworkRule{rule("x", 100, "Allow", "*", "*")}}},
		{name: "start after end", p: Policy{FirewallRules: []FirewallRule{fw("r", "10.0.0.9", "10.0.0.1")}},
			wantErr: `firewall rule "r": start_ip: 10.0.0.9 is after end_ip 10.0.0.1`},
		{name: "start equals end", p: Policy{FirewallRules: []FirewallRule{fw("r", "10.0.0.9", "10.0.0.9")}}},
		{name: "mixed families", p: Policy{FirewallRules: []FirewallRule{fw("r", "10.0.0.1", "2001:db8::1")}},
			wantErr: `firewall rule "r": end_ip: 2001:db8::1 and start_ip 10.0.0.1 are of different address families`},
		{name: "mapped start with IPv4 end", p: Policy{FirewallRules: []FirewallRule{fw("r", "::ffff:10.0.0.1", "10.0.0.2")}}},
		{name: "missing start", p: Policy{FirewallRules: []FirewallRule{{Name: "r", EndIP: a("10.0.0.1")}}},
			wantErr: `firewall rule "r": start_ip: is required`},
		{name: "zone", p: Policy{FirewallRules: []FirewallRule{fw("r", "fe80::1%eth0", "fe80::2")}},
			wantErr: "start_ip: fe80::1%eth0 has a zone"},
		{name: "time outside JSON range", p: Policy{FirewallRules: []FirewallRule{{Name: "r", StartIP: a("1.1.1.1"),
			EndIP: a("1.1.1.1"), ExpiresAt: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}}},
			wantErr: "expires_at: year 10000 is outside 1..9999"},
		{name: "priority too low", p: Policy{NetworkRules: []NetworkRule{rule("r", 99, "Allow", "*", "*")}},
			wantErr: `network rule "r": priority: 99 is outside 100..4096`},
		{name: "priority too high", p: Policy{NetworkRules: []NetworkRule{rule("r", 4097, "Allow", "*", "*")}},
			wantErr: "priority: 4097 is outside 100..4096"},
		{name: "priority bounds", p: Policy{NetworkRules: []NetworkRule{rule("lo", 100, "Allow", "*", "*"),
			rule("hi", 4096, "Deny", "*", "*")}}},
		{name: "duplicate priority", p: Policy{NetworkRules: []NetworkRule{rule("a", 200, "Allow", "*", "*"),
			rule("b", 200, "Deny", "10.0.0.0/8", "*")}},
			wantErr: `network rule "b": priority: 200 is already used by inbound network rule #1`},
		{name: "same priority other direction", p: Policy{NetworkRules: []NetworkRule{rule("a", 200, "Allow", "*", "*"),
			{Name: "b", Priority: 200, Access: "Allow", Direction: "Outbound", DestinationPrefix: "*"}}}},
		{name: "duplicate network name", p: Policy{NetworkRules: []NetworkRule{rule("a", 200, "Allow", "*", "*"),
			rule("A", 300, "Allow", "*", "*")}}, wantErr: `network rule "A": name: is already used`},
		{name: "bad access", p: Policy{NetworkRules: []NetworkRule{rule("r", 100, "Permit", "*", "*")}},
			wantErr: `network rule "r": access: "Permit" is not "Allow" or "Deny"`},
		{name: "missing access", p: Policy{NetworkRules: []NetworkRule{rule("r", 100, "", "*", "*")}},
			wantErr: "access: is required"},
		{name: "bad direction", p: Policy{NetworkRules: []NetworkRule{{Name: "r", Priority: 100, Access: "Allow",
			Direction: "Sideways", SourcePrefix: "*"}}}, wantErr: `direction: "Sideways" is not "Inbound" or "Outbound"`},
		{name: "bad CIDR", p: Policy{NetworkRules: []NetworkRule{rule("r", 100, "Allow", "10.0.0.0/33", "*")}},
			wantErr: `network rule "r": source_prefix: "10.0.0.0/33" is not "*" or a CIDR prefix`},
		{name: "service tag", p: Policy{NetworkRules: []NetworkRule{rule("r", 100, "Allow", "VirtualNetwork", "*")}},
			wantErr: `source_prefix: "VirtualNetwork" is not "*" or a CIDR prefix`},
		{name: "host bits set", p: Policy{NetworkRules: []NetworkRule{rule("r", 100, "Allow", "10.0.0.5/8", "*")}},
			wantErr: `source_prefix: "10.0.0.5/8" has host bits set; for this prefix length the address is 10.0.0.0/8`},
		{name: "missing source", p: Policy{NetworkRules: []NetworkRule{rule("r", 100, "Allow", "", "*")}},
			wantErr: "source_prefix: is required for Inbound rules"},
		{name: "inbound with destination", p: Policy{NetworkRules: []NetworkRule{{Name: "r", Priority: 100,
			Access: "Allow", SourcePrefix: "*", DestinationPrefix: "10.0.0.1"}}},
			wantErr: `destination_prefix: must be "*" or empty for Inbound rules`},
		{name: "outbound without destination", p: Policy{NetworkRules: []NetworkRule{{Name: "r", Priority: 100,
			Access: "Allow", Direction: "outbound"}}}, wantErr: "destination_prefix: is required for Outbound rules"},
		{name: "outbound with source", p: Policy{NetworkRules: []NetworkRule{{Name: "r", Priority: 100,
			Access: "Allow", Direction: "Outbound", SourcePrefix: "10.0.0.0/8", DestinationPrefix: "*"}}},
			wantErr: `source_prefix: must be "*" or empty for Outbound rules`},
		{name: "port zero", p: Policy{NetworkRules: []NetworkRule{rule("r", 100, "Allow", "*", "0")}},
			wantErr: `destination_ports: port "0" is not a number from 1 to 65535`},
		{name: "port too big", p: Policy{NetworkRules: []NetworkRule{rule("r", 100, "Allow", "*", "65536")}},
			wantErr: `port "65536" is not a number`},
		{name: "port with sign", p: Policy{NetworkRules: []NetworkRule{rule("r", 100, "Allow", "*", "+5432")}},
			wantErr: `port "+5432" is not a number`},
		{name: "reversed range", p: Policy{NetworkRules: []NetworkRule{rule("r", 100, "Allow", "*", "6000-5000")}},
			wantErr: `range "6000-5000" starts after it ends`},
		{name: "empty list item", p: Policy{NetworkRules: []NetworkRule{rule("r", 100, "Allow", "*", "5432,")}},
			wantErr: "has an empty item"},
		{name: "star in list", p: Policy{NetworkRules: []NetworkRule{rule("r", 100, "Allow", "*", "5432,*")}},
			wantErr: `lists "*" with other ports`},
		{name: "port word", p: Policy{NetworkRules: []NetworkRule{rule("r", 100, "Allow", "*", "postgres")}},
			wantErr: `port "postgres" is not a number`},
		{name: "triple range", p: Policy{NetworkRules: []NetworkRule{rule("r", 100, "Allow", "*", "1-2-3")}},
			wantErr: `port "2-3" is not a number`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.p.Clone()
			err := p.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate(%+v) error = %v; want nil", tt.p, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate(%+v) error = %v; want one containing %q", tt.p, err, tt.wantErr)
			}
			if !errors.Is(err, ErrInvalidPolicy) {
				t.Errorf("errors.Is(%v, ErrInvalidPolicy) = false; want true", err)
			}
			var re *RuleError
			if !errors.As(err, &re) {
				t.Errorf("errors.As(%v, *RuleError) = false; want true", err)
			}
		})
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	p := Policy{FirewallRules: []FirewallRule{fw("a b", "10.0.0.2", "10.0.0.1")},
		NetworkRules: []NetworkRule{rule("n", 1, "maybe", "x", "0")}}
	err := p.Validate()
	for _, want := range []string{"name: may contain", "start_ip: 10.0.0.2 is after", "priority: 1 is outside",
		`access: "maybe"`, `source_prefix: "x"`, `port "0"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() error = %v; want it to contain %q", err, want)
		}
	}
}

func TestValidateNormalises(t *testing.T) {
	plus1 := time.FixedZone("+01", 3600)
	in := Policy{
		Mode: "PRIVATE",
		FirewallRules: []FirewallRule{{Name: "m", StartIP: a("::ffff:192.0.2.1"), EndIP: a("::ffff:192.0.2.9"),
			ExpiresAt: time.Date(2026, 1, 1, 13, 0, 0, 0, plus1)}},
		NetworkRules: []NetworkRule{
			{Name: "in", Priority: 100, Access: "aLLow", Direction: "", SourcePrefix: "10.0.0.5/32",
				DestinationPrefix: "*", DestinationPorts: " 5432 , 6000-6010,7000-7000"},
			{Name: "mapped", Priority: 200, Access: "DENY", Direction: "inbound", SourcePrefix: "::ffff:10.0.0.0/104"},
			{Name: "out", Priority: 100, Access: "allow", Direction: "OUTBOUND", SourcePrefix: "*",
				DestinationPrefix: "2001:db8::/32", DestinationPorts: "*"},
		},
	}
	want := Policy{
		Mode: ModePrivate,
		FirewallRules: []FirewallRule{{Name: "m", StartIP: a("192.0.2.1"), EndIP: a("192.0.2.9"),
			ExpiresAt: time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)}},
		NetworkRules: []NetworkRule{
			{Name: "in", Priority: 100, Access: "Allow", Direction: "Inbound", SourcePrefix: "10.0.0.5",
				DestinationPorts: "5432,6000-6010,7000"},
			{Name: "mapped", Priority: 200, Access: "Deny", Direction: "Inbound", SourcePrefix: "10.0.0.0/8",
				DestinationPorts: "*"},
			{Name: "out", Priority: 100, Access: "Allow", Direction: "Outbound",
				DestinationPrefix: "2001:db8::/32", DestinationPorts: "*"},
		},
	}
	p := in.Clone()
	if err := p.Validate(); err != nil {
		t.Fatalf("Validate() error = %v", err)
	}
	if !reflect.DeepEqual(*p, want) {
		t.Fatalf("Validate() left %+v; want %+v", *p, want)
	}
	again := p.Clone()
	if err := again.Validate(); err != nil || !reflect.DeepEqual(again, p) {
		t.Fatalf("second Validate() = %v, %+v; want nil, unchanged %+v", err, again, p)
	}
}

func TestDecodePolicy(t *testing.T) {
	const good = `{
  "mode": "public",
  "firewall_rules": [
    {"name": "AllowLocalhost", "start_ip": "127.0.0.1", "end_ip": "127.0.0.1"},
    {"name": "office", "start_ip": "203.0.113.0", "end_ip": "203.0.113.255", "expires_at": "2027-01-01T00:00:00Z"}
  ],
  "network_rules": [
    {"name": "vnet", "priority": 100, "access": "Allow", "source_prefix": "10.0.0.0/8", "destination_ports": "5432"}
  ]
}
`
	tests := []struct {
		name    string
		in      string
		wantErr string
	}{
		{name: "good", in: good},
		{name: "empty object", in: `{}`},
		{name: "surrounding whitespace", in: "\n " + good + "\n\n"},
		{name: "unknown field", in: `{"mode": "public", "rules": []}`, wantErr: `unknown field "rules"`},
		{name: "unknown rule field", in: `{"firewall_rules": [{"name": "a", "start_ip": "1.1.1.1", "end_ip": "1.1.1.1", "x": 1}]}`,
			wantErr: `unknown field "x"`},
		{name: "trailing object", in: good + `{}`, wantErr: "trailing data"},
		{name: "trailing brace", in: `{}}`, wantErr: "trailing data"},
		{name: "trailing garbage", in: `{} x`, wantErr: "trailing data"},
		{name: "null", in: `null`, wantErr: "want a JSON object"},
		{name: "array", in: `[]`, wantErr: "want a JSON object"},
		{name: "empty", in: ``, wantErr: "want a JSON object"},
		{name: "truncated", in: good[:40], wantErr: "decoding network policy"},
		{name: "bad address", in: `{"firewall_rules": [{"name": "a", "start_ip": "1.1.1", "end_ip": "1.1.1.1"}]}`,
			wantErr: "decoding network policy"},
		{name: "invalid rule", in: `{"firewall_rules": [{"name": "a", "start_ip": "1.1.1.2", "end_ip": "1.1.1.1"}]}`,
			wantErr: `firewall rule "a": start_ip: 1.1.1.2 is after end_ip 1.1.1.1`},
		{name: "mode wrong type", in: `{"mode": 1}`, wantErr: "decoding network policy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := DecodePolicy([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || p != nil {
					t.Fatalf("DecodePolicy(%q) = %+v, %v; want nil and an error containing %q", tt.in, p, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("DecodePolicy(%q) error = %v; want nil", tt.in, err)
			}
			out, err := p.Encode()
			if err != nil {
				t.Fatalf("Encode() error = %v", err)
			}
			p2, err := DecodePolicy(out)
			if err != nil || !reflect.DeepEqual(p, p2) {
				t.Fatalf("DecodePolicy(Encode()) = %+v, %v; want %+v", p2, err, p)
			}
		})
	}
}

func TestEncodeShape(t *testing.T) {
	p := &Policy{Mode: ModePrivate, NetworkRules: []NetworkRule{rule("vnet", 100, "allow", "10.0.0.0/8", "")}}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	out, err := p.Encode()
	if err != nil {
		t.Fatal(err)
	}
	want := `{
  "mode": "private",
  "network_rules": [
    {
      "name": "vnet",
      "priority": 100,
      "access": "Allow",
      "direction": "Inbound",
      "source_prefix": "10.0.0.0/8",
      "destination_ports": "*"
    }
  ]
}
`
	if string(out) != want {
		t.Fatalf("Encode() = %s; want %s", out, want)
	}
}

func TestSetAndDeleteRules(t *testing.T) {
	var p Policy
	p.SetFirewallRule(fw("Office", "1.1.1.1", "1.1.1.1"))
	p.SetFirewallRule(fw("office", "2.2.2.2", "2.2.2.2"))
	if len(p.FirewallRules) != 1 || p.FirewallRules[0].StartIP != a("2.2.2.2") {
		t.Fatalf("SetFirewallRule twice = %+v; want one rule replaced", p.FirewallRules)
	}
	if !p.DeleteFirewallRule("OFFICE") || len(p.FirewallRules) != 0 {
		t.Fatalf("DeleteFirewallRule(OFFICE) left %+v", p.FirewallRules)
	}
	if p.DeleteFirewallRule("office") {
		t.Fatal("DeleteFirewallRule(absent) = true; want false")
	}
	p.SetNetworkRule(rule("n", 100, "Allow", "*", "*"))
	p.SetNetworkRule(rule("N", 200, "Allow", "*", "*"))
	if len(p.NetworkRules) != 1 || p.NetworkRules[0].Priority != 200 {
		t.Fatalf("SetNetworkRule twice = %+v; want one rule replaced", p.NetworkRules)
	}
	if !p.DeleteNetworkRule("n") || p.DeleteNetworkRule("n") {
		t.Fatal("DeleteNetworkRule(n) twice did not report true, false")
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]Mode{"public": ModePublic, "Private": ModePrivate, "PUBLIC": ModePublic} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "vnet", "public "} {
		if got, err := ParseMode(in); err == nil {
			t.Errorf("ParseMode(%q) = %q; want an error", in, got)
		}
	}
}

func TestParsePorts(t *testing.T) {
	tests := []struct {
		in   string
		want []PortRange
	}{
		{"*", []PortRange{{1, 65535}}},
		{" * ", []PortRange{{1, 65535}}},
		{"5432", []PortRange{{5432, 5432}}},
		{"1", []PortRange{{1, 1}}},
		{"65535", []PortRange{{65535, 65535}}},
		{"5000-6000", []PortRange{{5000, 6000}}},
		{"5432, 6000 - 6010,05433", []PortRange{{5432, 5432}, {6000, 6010}, {5433, 5433}}},
	}
	for _, tt := range tests {
		got, err := ParsePorts(tt.in)
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParsePorts(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	for _, in := range []string{"", " ", "-", "5432-", "-5432", "0-10", "1,,2", "123456", "0x10", "5432;5433",
		strings.Repeat("1,", maxPortItems) + "1"} {
		if got, err := ParsePorts(in); err == nil {
			t.Errorf("ParsePorts(%q) = %v; want an error", in, got)
		}
	}
}
