package netpolicy

import (
	"strings"
	"testing"
	"time"
)

type probe struct {
	name      string
	src       string
	port      uint16
	at        time.Time // zero means t0
	wantAllow bool
	wantRule  string
}

func runProbes(t *testing.T, p *Policy, probes []probe, decide func(*Policy, probe, time.Time) Decision, fn string) {
	t.Helper()
	for _, tt := range probes {
		t.Run(tt.name, func(t *testing.T) {
			at := tt.at
			if at.IsZero() {
				at = t0
			}
			d := decide(p, tt, at)
			if d.Allowed != tt.wantAllow || d.Rule != tt.wantRule {
				t.Fatalf("%s(%v, %d) = %+v; want Allowed=%v Rule=%q", fn, tt.src, tt.port, d, tt.wantAllow, tt.wantRule)
			}
			if d.Reason == "" {
				t.Errorf("%s(%v, %d).Reason is empty", fn, tt.src, tt.port)
			}
		})
	}
}

func inbound(p *Policy, tt probe, at time.Time) Decision {
	return p.DecideInbound(a(tt.src), tt.port, at)
}

func outbound(p *Policy, tt probe, at time.Time) Decision {
	return p.DecideOutbound(a(tt.src), tt.port, at)
}

func TestDecideInboundPublic(t *testing.T) {
	p := &Policy{Mode: ModePublic, FirewallRules: []FirewallRule{
		fw("office", "203.0.113.10", "203.0.113.20"),
		fw("v6", "2001:db8::10", "2001:db8::1:0"),
		fw("bOverlap", "203.0.113.15", "203.0.113.30"),
		fw("AOverlap", "203.0.113.18", "203.0.113.18"),
		fw("mappedBounds", "::ffff:198.51.100.7", "::ffff:198.51.100.7"),
		{Name: "temp", StartIP: a("192.0.2.1"), EndIP: a("192.0.2.1"), ExpiresAt: t0.Add(time.Hour)},
	}, NetworkRules: []NetworkRule{rule("ignoredInPublic", 100, "Allow", "*", "*")}}
	runProbes(t, p, []probe{
		{name: "start", src: "203.0.113.10", wantAllow: true, wantRule: "office"},
		{name: "end", src: "203.0.113.20", wantAllow: true, wantRule: "bOverlap"},
		{name: "inside", src: "203.0.113.12", port: 1, wantAllow: true, wantRule: "office"},
		{name: "one below start", src: "203.0.113.9"},
		{name: "one above end", src: "203.0.113.31"},
		{name: "overlap first by name", src: "203.0.113.18", wantAllow: true, wantRule: "AOverlap"},
		{name: "overlap between two", src: "203.0.113.16", wantAllow: true, wantRule: "bOverlap"},
		{name: "mapped source", src: "::ffff:203.0.113.10", wantAllow: true, wantRule: "office"},
		{name: "mapped bound", src: "198.51.100.7", wantAllow: true, wantRule: "mappedBounds"},
		{name: "mapped bound mapped source", src: "::ffff:198.51.100.7", wantAllow: true, wantRule: "mappedBounds"},
		{name: "v6 start", src: "2001:db8::10", wantAllow: true, wantRule: "v6"},
		{name: "v6 end", src: "2001:db8::1:0", wantAllow: true, wantRule: "v6"},
		{name: "v6 below", src: "2001:db8::f"},
		{name: "v6 above", src: "2001:db8::1:1"},
		{name: "v6 with zone", src: "2001:db8::10%eth0", wantAllow: true, wantRule: "v6"},
		{name: "v4 value inside v6 range is not v4", src: "::203.0.113.12"},
		{name: "default deny", src: "8.8.8.8"},
		{name: "before expiry", src: "192.0.2.1", at: t0.Add(time.Hour - 1), wantAllow: true, wantRule: "temp"},
		{name: "at expiry", src: "192.0.2.1", at: t0.Add(time.Hour)},
	}, inbound, "DecideInbound")
}

func TestDecideInboundPublicNoRules(t *testing.T) {
	p := &Policy{}
	if d := p.DecideInbound(a("127.0.0.1"), 5432, t0); d.Allowed || d.Rule != "" {
		t.Fatalf("DecideInbound(127.0.0.1) = %+v; want default deny", d)
	}
	var zero Policy
	if d := zero.DecideInbound(netipZero, 5432, t0); d.Allowed {
		t.Fatalf("DecideInbound(invalid address) = %+v; want deny", d)
	}
}

func TestDecideInboundPrivatePriority(t *testing.T) {
	deny := rule("denyVnet", 100, "Deny", "10.0.0.0/8", "*")
	allow := rule("allowHost", 200, "Allow", "10.77.0.5/32", "*")
	p := &Policy{Mode: ModePrivate, NetworkRules: []NetworkRule{allow, deny},
		FirewallRules: []FirewallRule{fw("ignoredInPrivate", "10.0.0.0", "10.255.255.255")}}
	runProbes(t, p, []probe{
		{name: "deny at 100 beats allow at 200", src: "10.77.0.5", port: 5432, wantRule: "denyVnet"},
		{name: "other host in deny", src: "10.1.2.3", port: 5432, wantRule: "denyVnet"},
		{name: "outside every rule", src: "192.168.1.1", port: 5432},
	}, inbound, "DecideInbound")

	deny.Priority, allow.Priority = 200, 100
	flipped := &Policy{Mode: ModePrivate, NetworkRules: []NetworkRule{deny, allow}}
	runProbes(t, flipped, []probe{
		{name: "allow at 100 beats deny at 200", src: "10.77.0.5", port: 5432, wantAllow: true, wantRule: "allowHost"},
		{name: "neighbour still denied", src: "10.77.0.6", port: 5432, wantRule: "denyVnet"},
		{name: "mapped source", src: "::ffff:10.77.0.5", port: 5432, wantAllow: true, wantRule: "allowHost"},
	}, inbound, "DecideInbound")
}

func TestDecideInboundPrivatePorts(t *testing.T) {
	p := &Policy{Mode: ModePrivate, NetworkRules: []NetworkRule{
		rule("pg", 100, "Allow", "10.0.0.0/8", "5432"),
		rule("range", 110, "Allow", "10.0.0.0/8", "6000-6010,7000"),
		rule("denyRest", 120, "Deny", "10.0.0.0/8", "*"),
		rule("v6", 130, "Allow", "fd00::/8", "5432"),
		rule("any", 4096, "Allow", "*", "9999"),
		{Name: "expired", Priority: 105, Access: "Allow", SourcePrefix: "10.9.0.0/16", DestinationPorts: "*",
			ExpiresAt: t0},
	}}
	runProbes(t, p, []probe{
		{name: "exact port", src: "10.1.1.1", port: 5432, wantAllow: true, wantRule: "pg"},
		{name: "port below", src: "10.1.1.1", port: 5431, wantRule: "denyRest"},
		{name: "range start", src: "10.1.1.1", port: 6000, wantAllow: true, wantRule: "range"},
		{name: "range end", src: "10.1.1.1", port: 6010, wantAllow: true, wantRule: "range"},
		{name: "range one above", src: "10.1.1.1", port: 6011, wantRule: "denyRest"},
		{name: "list item", src: "10.1.1.1", port: 7000, wantAllow: true, wantRule: "range"},
		{name: "star rule other port", src: "192.0.2.1", port: 9999, wantAllow: true, wantRule: "any"},
		{name: "star rule wrong port", src: "192.0.2.1", port: 5432},
		{name: "v6", src: "fd12::1", port: 5432, wantAllow: true, wantRule: "v6"},
		{name: "v6 outside", src: "fe80::1", port: 5432},
		{name: "port zero matches nothing", src: "10.1.1.1", port: 0},
		{name: "expired rule skipped", src: "10.9.1.1", port: 1234, wantRule: "denyRest"},
		{name: "expired rule before expiry", src: "10.9.1.1", port: 1234, at: t0.Add(-1), wantAllow: true, wantRule: "expired"},
	}, inbound, "DecideInbound")
}

func TestDecideOutbound(t *testing.T) {
	p := &Policy{Mode: ModePublic, NetworkRules: []NetworkRule{
		{Name: "dns", Priority: 100, Access: "Allow", Direction: "Outbound", DestinationPrefix: "10.0.0.53", DestinationPorts: "53"},
		{Name: "noMeta", Priority: 110, Access: "Deny", Direction: "Outbound", DestinationPrefix: "169.254.169.254"},
		{Name: "web", Priority: 120, Access: "Allow", Direction: "Outbound", DestinationPrefix: "*", DestinationPorts: "443"},
		rule("inboundIgnored", 100, "Allow", "*", "*"),
	}}
	runProbes(t, p, []probe{
		{name: "allowed destination", src: "10.0.0.53", port: 53, wantAllow: true, wantRule: "dns"},
		{name: "wrong port", src: "10.0.0.53", port: 54},
		{name: "deny beats later allow", src: "169.254.169.254", port: 443, wantRule: "noMeta"},
		{name: "any destination", src: "2001:db8::1", port: 443, wantAllow: true, wantRule: "web"},
		{name: "default deny", src: "192.0.2.1", port: 80},
	}, outbound, "DecideOutbound")
}

func TestDecideInvalidPolicyDenies(t *testing.T) {
	p := &Policy{Mode: ModePublic, FirewallRules: []FirewallRule{fw("all", "0.0.0.0", "255.255.255.255"),
		fw("all", "1.1.1.1", "1.1.1.1")}}
	d := p.DecideInbound(a("1.1.1.1"), 5432, t0)
	if d.Allowed || !strings.Contains(d.Reason, "invalid") {
		t.Fatalf("DecideInbound on an invalid policy = %+v; want deny saying the policy is invalid", d)
	}
	if d := p.DecideOutbound(a("1.1.1.1"), 5432, t0); d.Allowed {
		t.Fatalf("DecideOutbound on an invalid policy = %+v; want deny", d)
	}
	if p.FirewallRules[0].Name != "all" || len(p.FirewallRules) != 2 {
		t.Fatalf("DecideInbound changed the policy: %+v", p)
	}
}
