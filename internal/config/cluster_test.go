package config

import (
	"strings"
	"testing"
)

func TestClusterCheck(t *testing.T) {
	good := func() Cluster {
		return Cluster{Scope: "prod", Node: "n1", LinkListen: "10.0.0.1:5500", LinkPort: 5501, RESTPort: 8101,
			Peers: []ClusterPeer{{Name: "n2", Addr: "10.0.0.2:5500", LinkPort: 5502, RESTPort: 8102}},
			Etcd:  []string{"10.0.0.11:2379", "10.0.0.12:2379", "10.0.0.13:2379"}}
	}
	c := good()
	if err := c.Check(); err != nil {
		t.Fatalf("a good section: %v", err)
	}
	for name, tc := range map[string]struct {
		mod  func(*Cluster)
		want string
	}{
		"bad scope":          {func(c *Cluster) { c.Scope = "Prod/x" }, "scope"},
		"bad node name":      {func(c *Cluster) { c.Node = "N1" }, "node name"},
		"peer named as self": {func(c *Cluster) { c.Peers[0].Name = "n1" }, "used twice"},
		"no peer":            {func(c *Cluster) { c.Peers = nil }, "no peer"},
		"same link address":  {func(c *Cluster) { c.Peers[0].Addr = c.LinkListen }, "used twice"},
		"port clash":         {func(c *Cluster) { c.Peers[0].LinkPort = 8101 }, "both"},
		"port zero":          {func(c *Cluster) { c.RESTPort = 0 }, "port 0"},
		"bad link address":   {func(c *Cluster) { c.LinkListen = "10.0.0.1" }, "link address"},
		"no etcd":            {func(c *Cluster) { c.Etcd = nil }, "no etcd"},
		"bad etcd":           {func(c *Cluster) { c.Etcd = []string{"https://10.0.0.11:2379"} }, "etcd member"},
	} {
		c := good()
		tc.mod(&c)
		err := c.Check()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want an error with %q", name, err, tc.want)
		}
	}
}

// TestClusterRolesReserved: on a cluster node the replication and rewind
// roles are reserved (pgshield_guard's list) and never log in through the
// gateway; on a single node they are not special.
func TestClusterRolesReserved(t *testing.T) {
	c := &Config{ServiceRole: DefaultServiceRole}
	for _, r := range []string{ReplicationRole, RewindRole} {
		if !c.IsReserved(r) {
			t.Errorf("%s may log in through the gateway", r)
		}
		if strings.Contains(strings.Join(c.ReservedRoles(), ","), r) {
			t.Errorf("%s reserved on a single node", r)
		}
	}
	c.Cluster = &Cluster{}
	got := strings.Join(c.ReservedRoles(), ",")
	for _, r := range []string{ReplicationRole, RewindRole, SuperuserRole} {
		if !strings.Contains(got, r) {
			t.Errorf("cluster node: %s not reserved (%s)", r, got)
		}
	}
}
