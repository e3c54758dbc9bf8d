package network

import (
	"net/netip"
	"sort"
	"time"

	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/netpolicy"
	"github.com/pgshield/pgshield/internal/nft"
)

// kernelTable is this server's nftables table.
func (n *Controller) kernelTable() string { return "pgshield_" + n.serverID }

// applyKernelFirewall mirrors the firewall rules (and trusted proxies, which
// the kernel sees in place of their clients) into nftables, or removes the
// table when the feature is off. The gateway's own check stays in force
// either way: the kernel is defence in depth.
func (n *Controller) applyKernelFirewall(p *netpolicy.Policy, params config.Params) error {
	if !params.KernelFirewall {
		return nft.Remove(n.kernelTable())
	}
	r := nft.Rules{Port: ListenPort(n.Listen())}
	now := time.Now()
	add := func(rg nft.Range) {
		if rg.From.Is4() {
			r.AllowV4 = append(r.AllowV4, rg)
		} else {
			r.AllowV6 = append(r.AllowV6, rg)
		}
	}
	if p.Mode == netpolicy.ModePublic {
		for _, fr := range p.FirewallRules {
			if !fr.Expired(now) {
				add(nft.Range{From: fr.StartIP, To: fr.EndIP})
			}
		}
	} else {
		v4, v6, err := effectiveAllow(p.NetworkRules, r.Port, now)
		if err != nil {
			return err
		}
		r.AllowV4, r.AllowV6 = v4, v6
	}
	for _, pfx := range params.TrustedProxies.Prefixes() {
		add(nft.PrefixRange(pfx))
	}
	return nft.Apply(n.kernelTable(), r)
}

// effectiveAllow turns priority-ordered network security rules into the set
// of source addresses they allow on port, per family, for the kernel's
// allow-list. Processing from the last rule to the first, an Allow adds
// its prefix and a Deny removes it, so the first matching rule wins as in
// the gateway's own decision.
func effectiveAllow(rules []netpolicy.NetworkRule, port uint16, now time.Time) (v4, v6 []nft.Range, err error) {
	in := make([]netpolicy.NetworkRule, 0, len(rules))
	for _, r := range rules {
		if r.Direction != netpolicy.DirectionOutbound && !r.Expired(now) {
			in = append(in, r)
		}
	}
	sort.Slice(in, func(i, j int) bool { return in[i].Priority < in[j].Priority })
	all4 := nft.Range{From: netip.IPv4Unspecified(), To: netip.AddrFrom4([4]byte{255, 255, 255, 255})}
	all6 := nft.Range{From: netip.IPv6Unspecified(), To: netip.AddrFrom16([16]byte{
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})}
	for i := len(in) - 1; i >= 0; i-- {
		r := in[i]
		ports, perr := netpolicy.ParsePorts(r.DestinationPorts)
		if perr != nil {
			return nil, nil, perr
		}
		hit := len(ports) == 0
		for _, pr := range ports {
			hit = hit || pr.Contains(port)
		}
		if !hit {
			continue
		}
		var targets []nft.Range
		if r.SourcePrefix == "" || r.SourcePrefix == netpolicy.Any {
			targets = []nft.Range{all4, all6}
		} else {
			pfx, perr := netip.ParsePrefix(r.SourcePrefix)
			if perr != nil {
				a, aerr := netip.ParseAddr(r.SourcePrefix)
				if aerr != nil {
					return nil, nil, perr
				}
				pfx = netip.PrefixFrom(a, a.BitLen())
			}
			targets = []nft.Range{nft.PrefixRange(pfx)}
		}
		for _, t := range targets {
			set := &v6
			if t.From.Is4() {
				set = &v4
			}
			if r.Access == netpolicy.AccessAllow {
				*set = unionRange(*set, t)
			} else {
				*set = subtractRange(*set, t)
			}
		}
	}
	return v4, v6, nil
}

// unionRange adds t to a sorted, disjoint set of ranges.
func unionRange(set []nft.Range, t nft.Range) []nft.Range {
	out := append(append([]nft.Range(nil), set...), t)
	sort.Slice(out, func(i, j int) bool { return out[i].From.Less(out[j].From) })
	merged := out[:1]
	for _, r := range out[1:] {
		last := &merged[len(merged)-1]
		next := last.To.Next() // invalid past the family's last address
		if !next.IsValid() || !next.Less(r.From) {
			if last.To.Less(r.To) {
				last.To = r.To
			}
			continue
		}
		merged = append(merged, r)
	}
	return merged
}

// subtractRange removes t from a sorted, disjoint set of ranges.
func subtractRange(set []nft.Range, t nft.Range) []nft.Range {
	var out []nft.Range
	for _, s := range set {
		if s.To.Less(t.From) || t.To.Less(s.From) {
			out = append(out, s) // no overlap
			continue
		}
		if s.From.Less(t.From) {
			out = append(out, nft.Range{From: s.From, To: t.From.Prev()})
		}
		if t.To.Less(s.To) {
			out = append(out, nft.Range{From: t.To.Next(), To: s.To})
		}
	}
	return out
}
