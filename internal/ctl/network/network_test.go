package network

import (
	"errors"
	"strings"
	"testing"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/ctl/conf"
	"github.com/pgshield/pgshield/internal/netpolicy"
)

// fakePersister keeps what the engine persists, or fails.
type fakePersister struct {
	saved []*netpolicy.Policy
	err   error
}

func (f *fakePersister) persist(p *netpolicy.Policy) error {
	if f.err != nil {
		return f.err
	}
	f.saved = append(f.saved, p.Clone())
	return nil
}

func (f *fakePersister) last() *netpolicy.Policy { return f.saved[len(f.saved)-1] }

func newController(t *testing.T, listen string) (*Controller, *fakePersister, *[]audit.Event) {
	t.Helper()
	l := config.Layout{Root: t.TempDir()}
	pol, err := InitialPolicy(netpolicy.ModePublic, listen)
	if err != nil {
		t.Fatal(err)
	}
	if err := SavePolicy(l, pol); err != nil {
		t.Fatal(err)
	}
	fp := &fakePersister{}
	var events []audit.Event
	n, err := New(Config{Layout: l, Conf: conf.New(l, &config.Config{ServerID: "0123456789abcdef", Listen: listen, Parameters: map[string]string{}}),
		Persist: fp.persist, Audit: func(e audit.Event) { events = append(events, e) }})
	if err != nil {
		t.Fatal(err)
	}
	return n, fp, &events
}

func TestFirewallRuleCRUD(t *testing.T) {
	n, fp, events := newController(t, "127.0.0.1:5432")
	if got := n.FirewallRules(); len(got) != 2 || got[0].Name != "AllowLocalhost" {
		t.Fatalf("FirewallRules() = %+v; want the two localhost rules init writes", got)
	}
	r, err := n.WriteFirewallRule(apitype.RuleRequest{Name: "Office", StartIPAddress: "10.0.0.1", EndIPAddress: "10.0.0.9"}, true)
	if err != nil || r.Name != "Office" || r.StartIPAddress != "10.0.0.1" {
		t.Fatalf("create = %+v, %v", r, err)
	}
	if len(fp.saved) != 1 || len(fp.last().FirewallRules) != 3 {
		t.Errorf("persisted %d policies; want 1 with 3 rules", len(fp.saved))
	}
	var ae *apitype.Error
	if _, err := n.WriteFirewallRule(apitype.RuleRequest{Name: "office", StartIPAddress: "10.0.0.1", EndIPAddress: "10.0.0.1"}, true); !errors.As(err, &ae) || ae.Code != apitype.CodeInvalid {
		t.Errorf("second create (other case) = %v; want invalid: names are case-insensitive", err)
	}
	if _, err := n.WriteFirewallRule(apitype.RuleRequest{Name: "Nope", EndIPAddress: "10.0.0.2"}, false); !errors.As(err, &ae) || ae.Code != apitype.CodeNotFound {
		t.Errorf("update of a missing rule = %v; want not found", err)
	}
	if _, err := n.WriteFirewallRule(apitype.RuleRequest{Name: "Bad", StartIPAddress: "10.0.0.300", EndIPAddress: "10.0.0.1"}, true); !errors.As(err, &ae) || ae.Code != apitype.CodeInvalid {
		t.Errorf("create with a bad address = %v; want invalid", err)
	}
	if r, err = n.WriteFirewallRule(apitype.RuleRequest{Name: "OFFICE", EndIPAddress: "10.0.0.20"}, false); err != nil || r.StartIPAddress != "10.0.0.1" || r.EndIPAddress != "10.0.0.20" {
		t.Errorf("update = %+v, %v; want the end moved, the start kept", r, err)
	}
	// A policy that cannot be persisted is not swapped in.
	fp.err = errors.New("disk full")
	if err := n.DeleteFirewallRule("Office"); err == nil {
		t.Errorf("delete with a failing persister = nil; want the error")
	}
	if _, err := n.FirewallRule("office"); err != nil {
		t.Errorf("rule gone after a failed delete: %v", err)
	}
	fp.err = nil
	if err := n.DeleteFirewallRule("office"); err != nil {
		t.Fatal(err)
	}
	if _, err := n.FirewallRule("Office"); !errors.As(err, &ae) || ae.Code != apitype.CodeNotFound {
		t.Errorf("FirewallRule after delete = %v; want not found", err)
	}
	if err := n.DeleteFirewallRule("office"); !errors.As(err, &ae) || ae.Code != apitype.CodeNotFound {
		t.Errorf("second delete = %v; want not found", err)
	}
	var types []string
	for _, e := range *events {
		types = append(types, e.Type)
	}
	if want := "firewall_rule.write firewall_rule.write firewall_rule.delete"; strings.Join(types, " ") != want {
		t.Errorf("audit events = %q; want %q", types, want)
	}
}

func TestNetworkRulesAndMode(t *testing.T) {
	n, fp, _ := newController(t, "127.0.0.1:5432")
	var ae *apitype.Error
	if _, err := n.CreateNetworkRule(apitype.RuleRequest{Name: "Deny10", Priority: 100, Access: "Deny", SourceAddressPrefix: "10.0.0.0/8"}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.CreateNetworkRule(apitype.RuleRequest{Name: "Clash", Priority: 100, Access: "Allow", SourceAddressPrefix: "*"}); !errors.As(err, &ae) || ae.Code != apitype.CodeInvalid {
		t.Errorf("a second rule at priority 100 = %v; want invalid", err)
	}
	if got := n.NetworkRules(); len(got) != 1 || got[0].DestinationPortRange != netpolicy.Any {
		t.Errorf("NetworkRules() = %+v; want one rule on any port", got)
	}
	info, err := n.SetMode("private")
	if err != nil || info.Mode != "private" || fp.last().Mode != netpolicy.ModePrivate {
		t.Errorf("SetMode(private) = %+v, %v; want private, persisted", info, err)
	}
	// Both rule sets are kept across a switch.
	if len(fp.last().FirewallRules) != 2 || len(fp.last().NetworkRules) != 1 {
		t.Errorf("persisted policy after the switch = %+v; want both rule sets", fp.last())
	}
	if _, err := n.SetMode("galactic"); !errors.As(err, &ae) || ae.Code != apitype.CodeInvalid {
		t.Errorf("SetMode(galactic) = %v; want invalid", err)
	}
	if err := n.DeleteNetworkRule("deny10"); err != nil || len(n.NetworkRules()) != 0 {
		t.Errorf("delete = %v, rules %+v; want none left", err, n.NetworkRules())
	}
}

func TestLoadSavePolicy(t *testing.T) {
	l := config.Layout{Root: t.TempDir()}
	p, err := LoadPolicy(l)
	if err != nil || p.Mode != netpolicy.ModePublic || len(p.FirewallRules) != 0 {
		t.Errorf("LoadPolicy() without a file = %+v, %v; want public, default deny", p, err)
	}
	p, err = InitialPolicy(netpolicy.ModePublic, "0.0.0.0:5432")
	if err != nil || len(p.FirewallRules) != 0 {
		t.Errorf("InitialPolicy on a public address = %+v, %v; want no rules", p, err)
	}
}
