package netpolicy

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// FuzzDecodePolicy checks that DecodePolicy never panics, returns a policy
// only without an error, and that what it accepts is already canonical
// (Validate changes nothing) and survives Encode and DecodePolicy with the
// same bytes, the same value and the same decisions. Seeds are in
// testdata/fuzz/FuzzDecodePolicy.
func FuzzDecodePolicy(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := DecodePolicy(b)
		if err != nil {
			if p != nil {
				t.Fatalf("DecodePolicy(%q) = %+v with error %v", b, p, err)
			}
			return
		}
		again := p.Clone()
		if err := again.Validate(); err != nil || !reflect.DeepEqual(again, p) {
			t.Fatalf("Validate() of decoded %+v = %v, %+v; want nil and no change", p, err, again)
		}
		out, err := p.Encode()
		if err != nil {
			t.Fatalf("Encode(%+v) error = %v", p, err)
		}
		p2, err := DecodePolicy(out)
		if err != nil {
			t.Fatalf("DecodePolicy(Encode() = %q) error = %v; want the encoding to decode", out, err)
		}
		if !reflect.DeepEqual(p, p2) {
			t.Fatalf("DecodePolicy(Encode()) = %+v; want %+v", p2, p)
		}
		if out2, _ := p2.Encode(); !bytes.Equal(out, out2) {
			t.Fatalf("Encode() not stable:\n%s\nthen\n%s", out, out2)
		}
		srcs, ports, times := probes(p)
		for _, at := range times {
			for _, src := range srcs {
				for _, port := range ports {
					d1, d2 := p.DecideInbound(src, port, at), p2.DecideInbound(src, port, at)
					if d1 != d2 {
						t.Fatalf("DecideInbound(%v, %d, %v) = %+v; after a round trip %+v", src, port, at, d1, d2)
					}
					o1, o2 := p.DecideOutbound(src, port, at), p2.DecideOutbound(src, port, at)
					if o1 != o2 {
						t.Fatalf("DecideOutbound(%v, %d, %v) = %+v; after a round trip %+v", src, port, at, o1, o2)
					}
				}
			}
		}
	})
}

// probes returns addresses, ports and times at the edges of p's rules.
func probes(p *Policy) ([]netip.Addr, []uint16, []time.Time) {
	srcs := []netip.Addr{a("127.0.0.1"), a("::1"), a("10.0.0.1"), a("2001:db8::1"), a("::ffff:10.0.0.1")}
	ports := []uint16{0, 1, 5432, 65535}
	times := []time.Time{t0}
	edges := func(x netip.Addr) {
		srcs = append(srcs, x, x.Prev(), x.Next())
	}
	addTime := func(at time.Time) {
		if !at.IsZero() {
			times = append(times, at, at.Add(-1))
		}
	}
	for _, r := range p.FirewallRules {
		edges(r.StartIP)
		edges(r.EndIP)
		addTime(r.ExpiresAt)
	}
	for _, r := range p.NetworkRules {
		for _, s := range []string{r.SourcePrefix, r.DestinationPrefix} {
			if pfx, all, _, err := parsePrefix(s); err == nil && !all {
				edges(pfx.Addr())
				edges(lastAddr(pfx))
			}
		}
		if rs, err := ParsePorts(r.DestinationPorts); err == nil {
			for _, pr := range rs {
				ports = append(ports, pr.First-1, pr.First, pr.Last, pr.Last+1)
			}
		}
		addTime(r.ExpiresAt)
	}
	const maxProbes = 64 // keep each fuzz input fast
	return srcs[:min(len(srcs), maxProbes)], ports[:min(len(ports), maxProbes)], times[:min(len(times), 8)]
}

// lastAddr returns the highest address in pfx.
func lastAddr(pfx netip.Prefix) netip.Addr {
	b := pfx.Addr().AsSlice()
	for i := pfx.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	x, _ := netip.AddrFromSlice(b)
	return x
}

// FuzzDecideInbound checks DecideInbound against a plain reference
// implementation, against Engine.Check and across an encoding round trip.
// Seeds are in testdata/fuzz/FuzzDecideInbound.
func FuzzDecideInbound(f *testing.F) {
	f.Fuzz(func(t *testing.T, policy, addr []byte, port uint16, unixNano int64) {
		p, err := DecodePolicy(policy)
		if err != nil {
			return
		}
		src, _ := netip.AddrFromSlice(addr) // invalid for other lengths
		now := time.Unix(0, unixNano).UTC()

		d := p.DecideInbound(src, port, now)
		if d.Allowed && d.Rule == "" {
			t.Fatalf("DecideInbound(%v, %d) = %+v; want an allow to name its rule", src, port, d)
		}
		if d.Reason == "" {
			t.Fatalf("DecideInbound(%v, %d) = %+v; want a reason", src, port, d)
		}
		if allowed, rule := referenceInbound(p, src, port, now); d.Allowed != allowed || d.Rule != rule {
			t.Fatalf("DecideInbound(%v, %d, %v) = %+v; want Allowed=%v Rule=%q (reference) for %+v",
				src, port, now, d, allowed, rule, p)
		}

		e, err := NewEngine(p, WithClock(func() time.Time { return now }))
		if err != nil {
			t.Fatalf("NewEngine(decoded policy) error = %v", err)
		}
		if got := e.Check(src, port); got != d {
			t.Fatalf("Engine.Check(%v, %d) = %+v; want DecideInbound's %+v", src, port, got, d)
		}

		out, err := p.Encode()
		if err != nil {
			t.Fatalf("Encode() error = %v", err)
		}
		p2, err := DecodePolicy(out)
		if err != nil {
			t.Fatalf("DecodePolicy(Encode()) error = %v", err)
		}
		if got := p2.DecideInbound(src, port, now); got != d {
			t.Fatalf("DecideInbound(%v, %d) after a round trip = %+v; want %+v", src, port, got, d)
		}
	})
}

// referenceInbound decides the slow, obvious way.
func referenceInbound(p *Policy, src netip.Addr, port uint16, now time.Time) (bool, string) {
	if !src.IsValid() {
		return false, ""
	}
	src = src.Unmap().WithZone("")
	live := func(exp time.Time) bool { return exp.IsZero() || now.Before(exp) }
	if p.Mode != ModePrivate {
		best := ""
		for _, r := range p.FirewallRules {
			lo, hi := r.StartIP.Unmap(), r.EndIP.Unmap()
			if !live(r.ExpiresAt) || lo.Is4() != src.Is4() || src.Less(lo) || hi.Less(src) {
				continue
			}
			if best == "" || strings.ToLower(r.Name) < strings.ToLower(best) {
				best = r.Name
			}
		}
		return best != "", best
	}
	var best *NetworkRule
	for i := range p.NetworkRules {
		r := &p.NetworkRules[i]
		if r.Direction != DirectionInbound || !live(r.ExpiresAt) || (best != nil && best.Priority < r.Priority) {
			continue
		}
		if r.SourcePrefix != "*" {
			pfx, err := netip.ParsePrefix(r.SourcePrefix)
			if err != nil {
				x := netip.MustParseAddr(r.SourcePrefix)
				pfx = netip.PrefixFrom(x, x.BitLen())
			}
			if !pfx.Contains(src) {
				continue
			}
		}
		inPorts := r.DestinationPorts == "*" && port != 0
		for _, item := range strings.Split(r.DestinationPorts, ",") {
			first, last, isRange := strings.Cut(item, "-")
			if !isRange {
				last = first
			}
			lo, err1 := strconv.Atoi(first)
			hi, err2 := strconv.Atoi(last)
			if err1 == nil && err2 == nil && lo <= int(port) && int(port) <= hi {
				inPorts = true
			}
		}
		if inPorts {
			best = r
		}
	}
	if best == nil {
		return false, ""
	}
	return best.Access == AccessAllow, best.Name
}

// TestFuzzSeedsDecode keeps the valid seeds valid, so the fuzzers start from
// policies that reach the decision code.
func TestFuzzSeedsDecode(t *testing.T) {
	for _, name := range []string{"seed-public", "seed-private", "seed-mapped", "seed-upper-case-keys", "seed-empty-object"} {
		path := filepath.Join("testdata", "fuzz", "FuzzDecodePolicy", name)
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		line := strings.TrimSpace(strings.SplitN(string(raw), "\n", 2)[1])
		s, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(line, "[]byte("), ")"))
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if _, err := DecodePolicy([]byte(s)); err != nil {
			t.Errorf("DecodePolicy(%s) error = %v; want the seed to be valid", path, err)
		}
	}
}
