// Package network is the controller of a server's network policy: the
// policy engine (firewall rules in public mode, network security rules in
// private mode) and its file, the nftables mirror of the rules, and the
// outbound path that opens PostgreSQL's network namespace to the allowed
// destinations. Rule changes go through the engine, which validates the
// whole new policy and persists it before swapping it in.
//
// Locks: the engine's own (internal/netpolicy); the persist step runs
// under it and takes no lock of another controller except the
// configuration store's, briefly, to read the parameters.
package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/ctl/conf"
	"github.com/pgshield/pgshield/internal/netpolicy"
	"github.com/pgshield/pgshield/internal/nft"
	"github.com/pgshield/pgshield/internal/outbound"
)

// Config is what the controller needs.
type Config struct {
	Layout config.Layout
	Log    *slog.Logger
	Conf   *conf.Store
	Audit  func(audit.Event)
	// PostmasterPID is the running postmaster's pid, 0 if none: the
	// outbound path joins its namespace.
	PostmasterPID func() int
	// Persist, if set, replaces what a policy change does before it is
	// swapped in (kernel firewall, outbound path, network.json). For tests.
	Persist func(*netpolicy.Policy) error
	// Publish, on a cluster node, shares a change made here with every
	// node (internal/cluster/node.Shared) before it is put in force here;
	// its error refuses the change. Not called for a policy received
	// from the cluster (ApplyShared).
	Publish func(body []byte) error
	// Serialize, on a cluster node, runs each local change inside the
	// shared item's lock (node.Shared.Serialize), the same outermost lock
	// its watch holds while it applies a received policy: one lock order,
	// shared lock then updMu then the engine's.
	Serialize func(func() error) error
}

// Controller is the network policy of one server.
type Controller struct {
	c        Config
	serverID string // names the nftables table; fixed at start
	policy   *netpolicy.Engine
	outbound *outbound.Path
	listen   atomic.Pointer[string] // the gateway's address, once it listens
	// updMu serializes the updates this controller makes (localUpdate,
	// ApplyShared), so that publish is read by the update that set it.
	updMu sync.Mutex
	// publish is set while a local change (an API call) is being
	// persisted: only those are shared with the cluster, not one received
	// from it, nor the engine's own expiry (every node expires a rule
	// on its own).
	publish atomic.Bool
}

// localUpdate is n.policy.Update for a change made on this node.
func (n *Controller) localUpdate(fn func(p *netpolicy.Policy) error) error {
	update := func() error {
		n.updMu.Lock()
		defer n.updMu.Unlock()
		n.publish.Store(true)
		defer n.publish.Store(false)
		return n.policy.Update(fn)
	}
	if n.c.Serialize != nil {
		return n.c.Serialize(update)
	}
	return update()
}

// New loads the policy (a missing file is default deny) and checks that
// the configured listen address suits its mode.
func New(c Config) (*Controller, error) {
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Audit == nil {
		c.Audit = func(audit.Event) {}
	}
	if c.PostmasterPID == nil {
		c.PostmasterPID = func() int { return 0 }
	}
	cfg := c.Conf.Get()
	n := &Controller{c: c, serverID: cfg.ServerID}
	n.outbound = &outbound.Path{ID: cfg.ServerID, Log: c.Log.With("component", "outbound"),
		Allow: func(dst netip.Addr, port uint16) bool { return n.policy.CheckOutbound(dst, port).Allowed }}
	pol, err := LoadPolicy(c.Layout)
	if err != nil {
		return nil, fmt.Errorf("network policy: %w", err)
	}
	if err := netpolicy.CheckListen(pol.Mode, cfg.Listen); err != nil {
		return nil, err
	}
	persist := c.Persist
	if persist == nil {
		persist = func(p *netpolicy.Policy) error {
			if err := n.applyKernelFirewall(p, c.Conf.Params()); err != nil {
				return err
			}
			if err := n.outbound.Apply(c.PostmasterPID(), p.NetworkRules); err != nil {
				return err
			}
			return SavePolicy(c.Layout, p)
		}
	}
	local := persist
	persist = func(p *netpolicy.Policy) error {
		// A change made here is shared first: refused (a standby), it is
		// put in force nowhere.
		if n.c.Publish != nil && n.publish.Load() {
			b, err := p.Encode()
			if err != nil {
				return err
			}
			if err := n.c.Publish(b); err != nil {
				return err
			}
		}
		return local(p)
	}
	n.policy, err = netpolicy.NewEngine(pol, netpolicy.WithLogger(c.Log.With("component", "netpolicy")), netpolicy.WithPersist(persist))
	if err != nil {
		return nil, err
	}
	return n, nil
}

// Start records the gateway's address (bound by then), mirrors the rules
// into the kernel and runs the engine (expiry, live re-checks) until ctx
// ends.
func (n *Controller) Start(ctx context.Context, listen string) error {
	n.listen.Store(&listen)
	if err := n.applyKernelFirewall(n.policy.Snapshot(), n.c.Conf.Params()); err != nil {
		return fmt.Errorf("kernel firewall: %w", err)
	}
	go n.policy.Run(ctx)
	return nil
}

// StopKernelFirewall removes the nftables table, if the feature is on.
func (n *Controller) StopKernelFirewall() {
	if n.c.Conf.Params().KernelFirewall {
		if err := nft.Remove(n.kernelTable()); err != nil {
			n.c.Log.Error("Removing the kernel firewall failed.", "error", err)
		}
	}
}

// StopOutbound removes the outbound path.
func (n *Controller) StopOutbound() {
	if err := n.outbound.Close(); err != nil {
		n.c.Log.Error("Removing the outbound path failed.", "error", err)
	}
}

// Listen is the gateway's address, empty before Start.
func (n *Controller) Listen() string {
	if p := n.listen.Load(); p != nil {
		return *p
	}
	return ""
}

// ForPort is the policy the gateway enforces on port.
func (n *Controller) ForPort(port uint16) netpolicy.PortPolicy { return n.policy.ForPort(port) }

// ApplyOutbound opens the namespace of the postmaster pid to the outbound
// rules in force (when PostgreSQL is ready).
func (n *Controller) ApplyOutbound(pid int) error {
	return n.outbound.Apply(pid, n.policy.Snapshot().NetworkRules)
}

// ApplyKernelFirewall mirrors the rules in force with params (a change of
// pgshield.kernel_firewall or pgshield.trusted_proxies).
func (n *Controller) ApplyKernelFirewall(params config.Params) error {
	return n.applyKernelFirewall(n.policy.Snapshot(), params)
}

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

// Encoded is the policy in force, as network.json holds it.
func (n *Controller) Encoded() ([]byte, error) { return n.policy.Snapshot().Encode() }

// ApplyShared puts in force a policy another node shared (already
// authenticated by the caller): validated whole, refused if this node's
// gateway address does not suit its mode; sessions it no longer allows
// end, as with a local change.
func (n *Controller) ApplyShared(body []byte) error {
	p, err := netpolicy.DecodePolicy(body)
	if err != nil {
		return err
	}
	if err := netpolicy.CheckListen(p.Mode, n.c.Conf.Get().Listen); err != nil {
		return err
	}
	n.updMu.Lock()
	defer n.updMu.Unlock()
	err = n.policy.Update(func(cur *netpolicy.Policy) error {
		*cur = *p.Clone()
		return nil
	})
	if err != nil {
		return policyError(err)
	}
	n.c.Audit(audit.Event{Type: "network.shared", Outcome: audit.OutcomeSuccess,
		Fields: map[string]any{"mode": string(p.Mode), "firewall_rules": len(p.FirewallRules), "network_rules": len(p.NetworkRules)}})
	return nil
}

// ListenPort is the port of a host:port address, 0 if none.
func ListenPort(addr string) uint16 {
	_, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.ParseUint(p, 10, 16)
	return uint16(n)
}

func (n *Controller) ruleStats() map[string]netpolicy.RuleStats {
	out := map[string]netpolicy.RuleStats{}
	for _, s := range n.policy.Stats() {
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
func (n *Controller) FirewallRules() []apitype.FirewallRule {
	st := n.ruleStats()
	out := []apitype.FirewallRule{}
	for _, r := range n.policy.Snapshot().FirewallRules {
		out = append(out, toAPIFirewall(r, st[netpolicy.KindFirewall+"/"+strings.ToLower(r.Name)]))
	}
	return out
}

// FirewallRule returns the public-access rule name (any case).
func (n *Controller) FirewallRule(name string) (apitype.FirewallRule, error) {
	for _, fr := range n.policy.Snapshot().FirewallRules {
		if strings.EqualFold(fr.Name, name) {
			return toAPIFirewall(fr, n.ruleStats()[netpolicy.KindFirewall+"/"+strings.ToLower(fr.Name)]), nil
		}
	}
	return apitype.FirewallRule{}, clienterr.New(apitype.CodeNotFound, "firewall rule %q does not exist", name)
}

// expiry turns the request's expiry fields into a time (zero: never).
func (n *Controller) expiry(req apitype.RuleRequest) (time.Time, error) {
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
func (n *Controller) WriteFirewallRule(req apitype.RuleRequest, create bool) (apitype.FirewallRule, error) {
	exp, err := n.expiry(req)
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
	err = n.localUpdate(func(p *netpolicy.Policy) error {
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
	n.c.Log.Info("Firewall rule written.", "name", result.Name, "start", result.StartIP, "end", result.EndIP)
	n.c.Audit(audit.Event{Type: "firewall_rule.write", Outcome: audit.OutcomeSuccess, Rule: result.Name, Fields: map[string]any{"start_ip": result.StartIP.String(), "end_ip": result.EndIP.String()}})
	return n.FirewallRule(result.Name)
}

// DeleteFirewallRule deletes a firewall rule; sessions it allowed end.
func (n *Controller) DeleteFirewallRule(name string) error {
	err := n.localUpdate(func(p *netpolicy.Policy) error {
		if !p.DeleteFirewallRule(name) {
			return clienterr.New(apitype.CodeNotFound, "firewall rule %q does not exist", name)
		}
		return nil
	})
	if err != nil {
		return policyError(err)
	}
	n.c.Log.Info("Firewall rule deleted.", "name", name)
	n.c.Audit(audit.Event{Type: "firewall_rule.delete", Outcome: audit.OutcomeSuccess, Rule: name})
	return nil
}

// NetworkRules lists the private-access rules with their hits.
func (n *Controller) NetworkRules() []apitype.NetworkRule {
	st := n.ruleStats()
	out := []apitype.NetworkRule{}
	for _, r := range n.policy.Snapshot().NetworkRules {
		out = append(out, toAPINetwork(r, st[netpolicy.KindNetwork+"/"+strings.ToLower(r.Name)]))
	}
	return out
}

// NetworkRule returns the private-access rule name (any case).
func (n *Controller) NetworkRule(name string) (apitype.NetworkRule, error) {
	for _, nr := range n.policy.Snapshot().NetworkRules {
		if strings.EqualFold(nr.Name, name) {
			return toAPINetwork(nr, n.ruleStats()[netpolicy.KindNetwork+"/"+strings.ToLower(nr.Name)]), nil
		}
	}
	return apitype.NetworkRule{}, clienterr.New(apitype.CodeNotFound, "network rule %q does not exist", name)
}

// CreateNetworkRule adds the network security rule req.Name.
func (n *Controller) CreateNetworkRule(req apitype.RuleRequest) (apitype.NetworkRule, error) {
	exp, err := n.expiry(req)
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
	err = n.localUpdate(func(p *netpolicy.Policy) error {
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
	n.c.Log.Info("Network rule created.", "name", rule.Name, "priority", rule.Priority, "access", rule.Access)
	n.c.Audit(audit.Event{Type: "network_rule.create", Outcome: audit.OutcomeSuccess, Rule: rule.Name, Fields: map[string]any{"priority": rule.Priority, "access": rule.Access, "direction": rule.Direction}})
	return n.NetworkRule(rule.Name)
}

// DeleteNetworkRule deletes a network security rule; sessions it allowed
// end.
func (n *Controller) DeleteNetworkRule(name string) error {
	err := n.localUpdate(func(p *netpolicy.Policy) error {
		if !p.DeleteNetworkRule(name) {
			return clienterr.New(apitype.CodeNotFound, "network rule %q does not exist", name)
		}
		return nil
	})
	if err != nil {
		return policyError(err)
	}
	n.c.Log.Info("Network rule deleted.", "name", name)
	n.c.Audit(audit.Event{Type: "network_rule.delete", Outcome: audit.OutcomeSuccess, Rule: name})
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

// Info reports the network mode and the gateway's address.
func (n *Controller) Info() apitype.NetworkInfo {
	return apitype.NetworkInfo{Mode: string(n.policy.Snapshot().Mode), Listen: n.Listen()}
}

// SetMode switches between public access (firewall rules) and
// private access (network security rules). Both rule sets are kept, so a
// switch loses nothing; the listen address must suit the new mode, and
// sessions the new mode does not allow are ended.
func (n *Controller) SetMode(modeName string) (apitype.NetworkInfo, error) {
	mode, err := netpolicy.ParseMode(modeName)
	if err != nil {
		return apitype.NetworkInfo{}, clienterr.New(apitype.CodeInvalid, "%v", err)
	}
	if err := netpolicy.CheckListen(mode, n.c.Conf.Get().Listen); err != nil {
		return apitype.NetworkInfo{}, clienterr.New(apitype.CodeInvalid, "%v", err)
	}
	if err := n.localUpdate(func(p *netpolicy.Policy) error { p.Mode = mode; return nil }); err != nil {
		return apitype.NetworkInfo{}, policyError(err)
	}
	n.c.Log.Info("Network mode changed.", "mode", mode)
	n.c.Audit(audit.Event{Type: "network.mode", Outcome: audit.OutcomeSuccess, Fields: map[string]any{"mode": string(mode)}})
	return n.Info(), nil
}
