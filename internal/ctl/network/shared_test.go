package network

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/netpolicy"
)

// TestSharedPolicy: on a cluster node a change made here is published
// before it is put in force, and a refused publication (a standby) leaves
// it in force nowhere; a policy received from the cluster is put in force
// whole and never published again.
func TestSharedPolicy(t *testing.T) {
	n, fp, events := newController(t, "127.0.0.1:5432")
	initial := len(n.FirewallRules())
	var published [][]byte
	var refuse error
	n.c.Publish = func(b []byte) error {
		if refuse != nil {
			return refuse
		}
		published = append(published, b)
		return nil
	}
	if _, err := n.WriteFirewallRule(apitype.RuleRequest{Name: "apps", StartIPAddress: "10.0.0.1", EndIPAddress: "10.0.0.9"}, true); err != nil {
		t.Fatal(err)
	}
	if len(published) != 1 || len(fp.saved) != 1 {
		t.Fatalf("published %d, persisted %d; want 1 and 1", len(published), len(fp.saved))
	}
	got, err := netpolicy.DecodePolicy(published[0])
	if err != nil || len(got.FirewallRules) != initial+1 || got.FirewallRules[initial].Name != "apps" {
		t.Fatalf("published %s: %v", published[0], err)
	}

	refuse = errors.New("this node is a standby")
	if _, err := n.WriteFirewallRule(apitype.RuleRequest{Name: "more", StartIPAddress: "10.0.1.1", EndIPAddress: "10.0.1.1"}, true); err == nil {
		t.Fatal("a change the cluster refused was made")
	}
	if len(n.FirewallRules()) != initial+1 || len(fp.saved) != 1 {
		t.Fatalf("a refused change is in force: %+v", n.FirewallRules())
	}
	refuse = nil

	// Received: in force, persisted, audited, not published.
	recv := &netpolicy.Policy{Mode: netpolicy.ModePublic}
	recv.SetFirewallRule(netpolicy.FirewallRule{Name: "from-primary", StartIP: mustAddr(t, "10.0.2.1"), EndIP: mustAddr(t, "10.0.2.2")})
	b, err := recv.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if err := n.ApplyShared(b); err != nil {
		t.Fatal(err)
	}
	if rs := n.FirewallRules(); len(rs) != 1 || rs[0].Name != "from-primary" {
		t.Fatalf("after ApplyShared: %+v", rs)
	}
	if len(published) != 1 || len(fp.saved) != 2 {
		t.Fatalf("published %d (want 1), persisted %d (want 2)", len(published), len(fp.saved))
	}
	if e := (*events)[len(*events)-1]; e.Type != "network.shared" {
		t.Errorf("last event %q, want network.shared", e.Type)
	}
	// Refused: not a policy, an invalid one, or one whose mode does not
	// suit this node's gateway address.
	if err := n.ApplyShared([]byte(`{"mode":"public","unknown":1}`)); err == nil {
		t.Error("a policy with an unknown field was applied")
	}
	if err := n.ApplyShared([]byte(`{"mode":"public","firewall_rules":[{"name":"x","start_ip":"10.0.0.9","end_ip":"10.0.0.1"}]}`)); err == nil {
		t.Error("an invalid policy (a range that ends before it starts) was applied")
	}
	wild, _, _ := newController(t, "0.0.0.0:5432")
	if err := wild.ApplyShared([]byte(`{"mode":"private"}`)); err == nil {
		t.Error("private mode was applied to a gateway listening on every interface")
	}
	if rs := n.FirewallRules(); len(rs) != 1 || rs[0].Name != "from-primary" {
		t.Fatalf("after refusals: %+v", rs)
	}
}

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
