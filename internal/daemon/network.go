package daemon

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/netpolicy"
)

// InitialPolicy is the policy `init` writes: default deny, except that a
// loopback listen address gets rules for the local host, as a portal's
// "add current client IP" does.
func InitialPolicy(mode netpolicy.Mode, listen string) (*netpolicy.Policy, error) {
	if err := netpolicy.CheckListen(mode, listen); err != nil {
		return nil, err
	}
	p := &netpolicy.Policy{Mode: mode}
	host, _, _ := net.SplitHostPort(listen)
	a, err := netip.ParseAddr(host)
	if host == "localhost" || (err == nil && a.IsLoopback()) {
		if mode == netpolicy.ModePublic {
			p.FirewallRules = []netpolicy.FirewallRule{
				{Name: "AllowLocalhost", StartIP: netip.MustParseAddr("127.0.0.1"), EndIP: netip.MustParseAddr("127.0.0.1")},
				{Name: "AllowLocalhostIPv6", StartIP: netip.IPv6Loopback(), EndIP: netip.IPv6Loopback()},
			}
		} else {
			p.NetworkRules = []netpolicy.NetworkRule{
				{Name: "AllowLocalhost", Priority: netpolicy.MaxPriority - 1, Access: netpolicy.AccessAllow, SourcePrefix: "127.0.0.0/8"},
				{Name: "AllowLocalhostIPv6", Priority: netpolicy.MaxPriority, Access: netpolicy.AccessAllow, SourcePrefix: "::1/128"},
			}
		}
	}
	now := time.Now().UTC()
	for i := range p.FirewallRules {
		p.FirewallRules[i].CreatedAt = now
	}
	for i := range p.NetworkRules {
		p.NetworkRules[i].CreatedAt = now
	}
	return p, p.Validate()
}

// SavePolicy writes the policy atomically (0600).
func SavePolicy(l config.Layout, p *netpolicy.Policy) error {
	b, err := p.Encode()
	if err != nil {
		return err
	}
	return config.WriteFileAtomic(l.NetworkFile(), b, 0o600)
}

// LoadPolicy reads the policy strictly; a missing file means default deny.
func LoadPolicy(l config.Layout) (*netpolicy.Policy, error) {
	b, err := os.ReadFile(l.NetworkFile())
	if errors.Is(err, os.ErrNotExist) {
		return &netpolicy.Policy{Mode: netpolicy.ModePublic}, nil
	}
	if err != nil {
		return nil, err
	}
	return netpolicy.DecodePolicy(b)
}

func listenPort(addr string) uint16 {
	_, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.ParseUint(p, 10, 16)
	return uint16(n)
}

func (d *Daemon) ruleStats() map[string]netpolicy.RuleStats {
	out := map[string]netpolicy.RuleStats{}
	for _, s := range d.policy.Stats() {
		out[s.Kind+"/"+strings.ToLower(s.Name)] = s
	}
	return out
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func toAPIFirewall(r netpolicy.FirewallRule, st netpolicy.RuleStats) apitype.FirewallRule {
	return apitype.FirewallRule{Name: r.Name, StartIPAddress: r.StartIP.String(), EndIPAddress: r.EndIP.String(),
		ExpiresAt: timePtr(r.ExpiresAt), CreatedAt: r.CreatedAt, Hits: st.Hits, LastUsed: timePtr(st.LastUsed)}
}

func toAPINetwork(r netpolicy.NetworkRule, st netpolicy.RuleStats) apitype.NetworkRule {
	src, dst, ports := r.SourcePrefix, r.DestinationPrefix, r.DestinationPorts
	if src == "" {
		src = netpolicy.Any
	}
	if ports == "" {
		ports = netpolicy.Any
	}
	return apitype.NetworkRule{Name: r.Name, Priority: r.Priority, Access: r.Access, Direction: r.Direction,
		SourceAddressPrefix: src, DestinationAddressPrefix: dst, DestinationPortRange: ports,
		ExpiresAt: timePtr(r.ExpiresAt), CreatedAt: r.CreatedAt, Hits: st.Hits, LastUsed: timePtr(st.LastUsed)}
}

// FirewallRules lists the public-access rules with their hits.
func (d *Daemon) FirewallRules() []apitype.FirewallRule {
	st := d.ruleStats()
	out := []apitype.FirewallRule{}
	for _, r := range d.policy.Snapshot().FirewallRules {
		out = append(out, toAPIFirewall(r, st[netpolicy.KindFirewall+"/"+strings.ToLower(r.Name)]))
	}
	return out
}

// FirewallRule returns the public-access rule name (any case).
func (d *Daemon) FirewallRule(name string) (apitype.FirewallRule, error) {
	for _, fr := range d.policy.Snapshot().FirewallRules {
		if strings.EqualFold(fr.Name, name) {
			return toAPIFirewall(fr, d.ruleStats()[netpolicy.KindFirewall+"/"+strings.ToLower(fr.Name)]), nil
		}
	}
	return apitype.FirewallRule{}, clienterr.New(apitype.CodeNotFound, "firewall rule %q does not exist", name)
}

// expiry turns the request's expiry fields into a time (zero: never).
func (d *Daemon) expiry(req apitype.RuleRequest) (time.Time, error) {
	if req.ExpiresIn != "" {
		dur, err := time.ParseDuration(req.ExpiresIn)
		if err != nil || dur <= 0 {
			return time.Time{}, clienterr.New(apitype.CodeInvalid, "invalid expires_in %q", req.ExpiresIn)
		}
		return time.Now().Add(dur).UTC(), nil
	}
	if req.ExpiresAt != nil {
		if !req.ExpiresAt.After(time.Now()) {
			return time.Time{}, clienterr.New(apitype.CodeInvalid, "expires_at %s is in the past", req.ExpiresAt.Format(time.RFC3339))
		}
		return req.ExpiresAt.UTC(), nil
	}
	return time.Time{}, nil
}

func parseIP(field, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil {
		return netip.Addr{}, clienterr.New(apitype.CodeInvalid, "invalid %s %q: not an IPv4 or IPv6 address", field, s)
	}
	return a, nil
}

// WriteFirewallRule creates (create) or updates the firewall rule
// req.Name. The engine validates the whole new policy and persists it
// before swapping it in, and ends sessions the new rules no longer allow.
func (d *Daemon) WriteFirewallRule(req apitype.RuleRequest, create bool) (apitype.FirewallRule, error) {
	exp, err := d.expiry(req)
	if err != nil {
		return apitype.FirewallRule{}, err
	}
	var start, end netip.Addr
	if req.StartIPAddress != "" {
		if start, err = parseIP("start_ip_address", req.StartIPAddress); err != nil {
			return apitype.FirewallRule{}, err
		}
	}
	if req.EndIPAddress != "" {
		if end, err = parseIP("end_ip_address", req.EndIPAddress); err != nil {
			return apitype.FirewallRule{}, err
		}
	}
	var result netpolicy.FirewallRule
	err = d.policy.Update(func(p *netpolicy.Policy) error {
		var cur *netpolicy.FirewallRule
		for i := range p.FirewallRules {
			if strings.EqualFold(p.FirewallRules[i].Name, req.Name) {
				cur = &p.FirewallRules[i]
			}
		}
		switch {
		case create && cur != nil:
			return clienterr.New(apitype.CodeInvalid, "firewall rule %q already exists (use update)", req.Name)
		case !create && cur == nil:
			return clienterr.New(apitype.CodeNotFound, "firewall rule %q does not exist", req.Name)
		case create && (!start.IsValid() || !end.IsValid()):
			return clienterr.New(apitype.CodeInvalid, "start_ip_address and end_ip_address are required")
		}
		rule := netpolicy.FirewallRule{Name: req.Name, StartIP: start, EndIP: end, ExpiresAt: exp}
		if cur != nil {
			rule = *cur
			if start.IsValid() {
				rule.StartIP = start
			}
			if end.IsValid() {
				rule.EndIP = end
			}
			if !exp.IsZero() {
				rule.ExpiresAt = exp
			}
		}
		p.SetFirewallRule(rule)
		result = rule
		return nil
	})
	if err != nil {
		return apitype.FirewallRule{}, policyError(err)
	}
	d.Log.Info("Firewall rule written.", "name", result.Name, "start", result.StartIP, "end", result.EndIP)
	d.audit(audit.Event{Type: "firewall_rule.write", Outcome: audit.OutcomeSuccess, Rule: result.Name, Fields: map[string]any{"start_ip": result.StartIP.String(), "end_ip": result.EndIP.String()}})
	return d.FirewallRule(result.Name)
}

// DeleteFirewallRule deletes a firewall rule; sessions it allowed end.
func (d *Daemon) DeleteFirewallRule(name string) error {
	err := d.policy.Update(func(p *netpolicy.Policy) error {
		if !p.DeleteFirewallRule(name) {
			return clienterr.New(apitype.CodeNotFound, "firewall rule %q does not exist", name)
		}
		return nil
	})
	if err != nil {
		return policyError(err)
	}
	d.Log.Info("Firewall rule deleted.", "name", name)
	d.audit(audit.Event{Type: "firewall_rule.delete", Outcome: audit.OutcomeSuccess, Rule: name})
	return nil
}

// NetworkRules lists the private-access rules with their hits.
func (d *Daemon) NetworkRules() []apitype.NetworkRule {
	st := d.ruleStats()
	out := []apitype.NetworkRule{}
	for _, r := range d.policy.Snapshot().NetworkRules {
		out = append(out, toAPINetwork(r, st[netpolicy.KindNetwork+"/"+strings.ToLower(r.Name)]))
	}
	return out
}

// NetworkRule returns the private-access rule name (any case).
func (d *Daemon) NetworkRule(name string) (apitype.NetworkRule, error) {
	for _, nr := range d.policy.Snapshot().NetworkRules {
		if strings.EqualFold(nr.Name, name) {
			return toAPINetwork(nr, d.ruleStats()[netpolicy.KindNetwork+"/"+strings.ToLower(nr.Name)]), nil
		}
	}
	return apitype.NetworkRule{}, clienterr.New(apitype.CodeNotFound, "network rule %q does not exist", name)
}

// CreateNetworkRule adds the network security rule req.Name.
func (d *Daemon) CreateNetworkRule(req apitype.RuleRequest) (apitype.NetworkRule, error) {
	exp, err := d.expiry(req)
	if err != nil {
		return apitype.NetworkRule{}, err
	}
	rule := netpolicy.NetworkRule{Name: req.Name, Priority: req.Priority, Access: req.Access, Direction: req.Direction,
		SourcePrefix: req.SourceAddressPrefix, DestinationPrefix: req.DestinationAddressPrefix,
		DestinationPorts: req.DestinationPortRange, ExpiresAt: exp}
	if rule.Direction == "" || strings.EqualFold(rule.Direction, netpolicy.DirectionInbound) {
		if rule.DestinationPrefix == netpolicy.Any {
			rule.DestinationPrefix = ""
		}
	} else if rule.SourcePrefix == netpolicy.Any {
		rule.SourcePrefix = ""
	}
	err = d.policy.Update(func(p *netpolicy.Policy) error {
		for _, cur := range p.NetworkRules {
			if strings.EqualFold(cur.Name, req.Name) {
				return clienterr.New(apitype.CodeInvalid, "network rule %q already exists", req.Name)
			}
		}
		p.SetNetworkRule(rule)
		return nil
	})
	if err != nil {
		return apitype.NetworkRule{}, policyError(err)
	}
	d.Log.Info("Network rule created.", "name", rule.Name, "priority", rule.Priority, "access", rule.Access)
	d.audit(audit.Event{Type: "network_rule.create", Outcome: audit.OutcomeSuccess, Rule: rule.Name, Fields: map[string]any{"priority": rule.Priority, "access": rule.Access, "direction": rule.Direction}})
	return d.NetworkRule(rule.Name)
}

// DeleteNetworkRule deletes a network security rule; sessions it allowed
// end.
func (d *Daemon) DeleteNetworkRule(name string) error {
	err := d.policy.Update(func(p *netpolicy.Policy) error {
		if !p.DeleteNetworkRule(name) {
			return clienterr.New(apitype.CodeNotFound, "network rule %q does not exist", name)
		}
		return nil
	})
	if err != nil {
		return policyError(err)
	}
	d.Log.Info("Network rule deleted.", "name", name)
	d.audit(audit.Event{Type: "network_rule.delete", Outcome: audit.OutcomeSuccess, Rule: name})
	return nil
}

// policyError maps validation failures to "invalid" for the CLI.
func policyError(err error) error {
	if ae, ok := clienterr.As(err); ok {
		return ae
	}
	if errors.Is(err, netpolicy.ErrInvalidPolicy) {
		return clienterr.New(apitype.CodeInvalid, "%v", err)
	}
	return fmt.Errorf("updating network policy: %w", err)
}

// postmasterPID is the running postmaster's pid, 0 if none.
func (d *Daemon) postmasterPID() int {
	if sup := d.supervisor(); sup != nil {
		return sup.Status().PID
	}
	return 0
}

// Network reports the network mode and the gateway's address.
func (d *Daemon) Network() apitype.NetworkInfo {
	return apitype.NetworkInfo{Mode: string(d.policy.Snapshot().Mode), Listen: d.listen}
}

// SetNetworkMode switches between public access (firewall rules) and
// private access (network security rules). Both rule sets are kept, so a
// switch loses nothing; the listen address must suit the new mode, and
// sessions the new mode does not allow are ended.
func (d *Daemon) SetNetworkMode(modeName string) (apitype.NetworkInfo, error) {
	mode, err := netpolicy.ParseMode(modeName)
	if err != nil {
		return apitype.NetworkInfo{}, clienterr.New(apitype.CodeInvalid, "%v", err)
	}
	if err := netpolicy.CheckListen(mode, d.config().Listen); err != nil {
		return apitype.NetworkInfo{}, clienterr.New(apitype.CodeInvalid, "%v", err)
	}
	if err := d.policy.Update(func(p *netpolicy.Policy) error { p.Mode = mode; return nil }); err != nil {
		return apitype.NetworkInfo{}, policyError(err)
	}
	d.Log.Info("Network mode changed.", "mode", mode)
	d.audit(audit.Event{Type: "network.mode", Outcome: audit.OutcomeSuccess, Fields: map[string]any{"mode": string(mode)}})
	return d.Network(), nil
}
