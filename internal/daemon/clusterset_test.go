package daemon

import (
	"context"
	"testing"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
)

// TestClusterSetWiring: a single node keeps ALTER SYSTEM (no ClusterSet);
// a cluster node's goes to its node, and before the node exists it is a
// clear "unavailable", not a nil dereference. (TestRealHADaemons, in
// internal/cluster/link, runs it against Patroni.)
func TestClusterSetWiring(t *testing.T) {
	d := &Daemon{}
	if d.clusterSet(&config.Config{}) != nil {
		t.Error("a single node got a ClusterSet")
	}
	set := d.clusterSet(&config.Config{Cluster: &config.Cluster{Scope: "prod", Node: "n1"}})
	if set == nil {
		t.Fatal("a cluster node got no ClusterSet")
	}
	err := set(context.Background(), "work_mem", "12288")
	if ce, ok := clienterr.As(err); !ok || ce.Code != apitype.CodeUnavailable {
		t.Errorf("before the node is built: %v", err)
	}
}
