package daemon

import (
	"errors"
	"time"

	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/netpolicy"
	"github.com/pgshield/pgshield/internal/nft"
)

// kernelTable is this server's nftables table.
func (d *Daemon) kernelTable() string { return "pgshield_" + d.serverID }

// applyKernelFirewall mirrors the firewall rules (and trusted proxies, which
// the kernel sees in place of their clients) into nftables, or removes the
// table when the feature is off. The gateway's own check stays in force
// either way: the kernel is defence in depth.
func (d *Daemon) applyKernelFirewall(p *netpolicy.Policy, params config.Params) error {
	if !params.KernelFirewall {
		return nft.Remove(d.kernelTable())
	}
	if p.Mode != netpolicy.ModePublic {
		return errors.New("pgshield.kernel_firewall supports public access (firewall rules) only")
	}
	r := nft.Rules{Port: listenPort(d.listen)}
	now := time.Now()
	add := func(rg nft.Range) {
		if rg.From.Is4() {
			r.AllowV4 = append(r.AllowV4, rg)
		} else {
			r.AllowV6 = append(r.AllowV6, rg)
		}
	}
	for _, fr := range p.FirewallRules {
		if !fr.Expired(now) {
			add(nft.Range{From: fr.StartIP, To: fr.EndIP})
		}
	}
	for _, pfx := range params.TrustedProxies.Prefixes() {
		add(nft.PrefixRange(pfx))
	}
	return nft.Apply(d.kernelTable(), r)
}

// currentParams resolves the gateway parameters in force.
func (d *Daemon) currentParams() config.Params {
	p, _ := config.ResolveParams(d.config().Parameters)
	return p
}
