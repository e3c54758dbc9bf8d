package config

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
)

// Cluster is a high-availability node's place in its cluster (issue #18):
// set by `pgshield init --ha`, absent on a single node. The daemon then
// runs Patroni in place of the postmaster, the node link, the promotion
// socket and the gateway's leadership fence (internal/cluster/node).
// Nothing here is secret: the node's certificates and the cluster's
// passwords are files in Layout's cluster directories.
type Cluster struct {
	// Scope is the cluster's name (Patroni's scope); Node this node's.
	Scope string `json:"scope"`
	Node  string `json:"node"`
	// Join: this node was made empty, to be cloned from the primary by
	// Patroni (set by `init --ha --join`); the first node bootstraps.
	Join bool `json:"join,omitempty"`
	// LinkListen is host:port of this node's link listener (its cluster
	// address, reachable by every other node).
	LinkListen string `json:"link_listen"`
	// LinkPort and RESTPort are this node's numbers on the link: its
	// PostgreSQL is <peer socket dir>/.s.PGSQL.<LinkPort> on every other
	// node, its Patroni REST API 127.0.0.1:<RESTPort>. Unique in the
	// cluster.
	LinkPort int           `json:"link_port"`
	RESTPort int           `json:"rest_port"`
	Peers    []ClusterPeer `json:"peers"`
	// Etcd are the members' client addresses, host:port.
	Etcd []string `json:"etcd"`
	// TTL, LoopWait and RetryTimeout are Patroni's, in seconds (0: its
	// defaults, 30/10/10).
	TTL          int `json:"ttl,omitempty"`
	LoopWait     int `json:"loop_wait,omitempty"`
	RetryTimeout int `json:"retry_timeout,omitempty"`
	// AsyncWhenAlone turns synchronous_mode_strict off (two-node
	// clusters that prefer writes to the promise; see
	// internal/cluster/patroni.Generate).
	AsyncWhenAlone bool `json:"async_when_alone,omitempty"`
}

// ClusterPeer is another node as this one reaches it.
type ClusterPeer struct {
	Name string `json:"name"`
	// Addr is host:port of the peer's link listener.
	Addr     string `json:"addr"`
	LinkPort int    `json:"link_port"`
	RESTPort int    `json:"rest_port"`
}

var nodeName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// Check refuses an incomplete or inconsistent cluster section.
func (c *Cluster) Check() error {
	if !nodeName.MatchString(c.Scope) {
		return fmt.Errorf("cluster: scope %q: want lower-case letters, digits and '-'", c.Scope)
	}
	names := map[string]bool{}
	ports := map[int]string{}
	addrs := map[string]bool{}
	check := func(name, addr string, link, rest int) error {
		if !nodeName.MatchString(name) || names[name] {
			return fmt.Errorf("cluster: node name %q invalid or used twice", name)
		}
		names[name] = true
		if err := hostPort(addr); err != nil || addrs[addr] {
			return fmt.Errorf("cluster: node %s: link address %q: invalid or used twice", name, addr)
		}
		addrs[addr] = true
		for _, p := range []int{link, rest} {
			if p <= 0 || p > 65535 {
				return fmt.Errorf("cluster: node %s: port %d", name, p)
			}
			if o, ok := ports[p]; ok {
				return fmt.Errorf("cluster: port %d is both %s's and %s's", p, o, name)
			}
			ports[p] = name
		}
		return nil
	}
	if err := check(c.Node, c.LinkListen, c.LinkPort, c.RESTPort); err != nil {
		return err
	}
	if len(c.Peers) == 0 {
		return errors.New("cluster: no peer")
	}
	for _, p := range c.Peers {
		if err := check(p.Name, p.Addr, p.LinkPort, p.RESTPort); err != nil {
			return err
		}
	}
	if len(c.Etcd) == 0 {
		return errors.New("cluster: no etcd member")
	}
	for _, e := range c.Etcd {
		if err := hostPort(e); err != nil {
			return fmt.Errorf("cluster: etcd member %q: %w", e, err)
		}
	}
	return nil
}

func hostPort(s string) error {
	h, p, err := net.SplitHostPort(s)
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(p)
	if err != nil || n <= 0 || n > 65535 || h == "" {
		return fmt.Errorf("%q is not host:port", s)
	}
	return nil
}

// ClusterDir holds a node's cluster material, root's (0700): the cluster
// CA's certificate, the node's certificate and key, etcd's client CA,
// certificate and key, and secrets.json (the replication and rewind
// roles' passwords, the same on every node).
func (l Layout) ClusterDir() string { return filepath.Join(l.Root, "cluster") }

// PatroniDir holds what Patroni reads (root's, 0750, Patroni's group):
// its YAML (with the REST password) and copies of the etcd client files,
// root's and 0640 (the pgpass file is in PatroniPassDir).
func (l Layout) PatroniDir() string { return filepath.Join(l.Root, "patroni") }

// PatroniPassDir holds Patroni's pgpass file alone (0700, Patroni's
// user's: Patroni wants its directory writable, libpq the file its own).
func (l Layout) PatroniPassDir() string { return filepath.Join(l.Root, "patroni-pass") }

// PatroniHome is the empty, root-owned home Patroni runs with, so that
// Python finds no user site-packages there (PostgreSQL's OS user's own
// home is its to write).
func (l Layout) PatroniHome() string { return filepath.Join(l.Root, "patroni-home") }

// PatroniBinDir is the bin_dir Patroni runs PostgreSQL's programs from
// (root's, 0755; internal/cluster/patroni.WriteBinDir): outside
// PatroniDir.
func (l Layout) PatroniBinDir() string { return filepath.Join(l.Root, "patroni-bin") }

// PeerSocketDir is where the node link serves one socket per peer (short:
// socket paths are limited to 107 bytes).
func (l Layout) PeerSocketDir() string { return filepath.Join(l.RunDir(), "peers") }

// PromoteSocket is the daemon's answer to Patroni's pre_promote hook.
func (l Layout) PromoteSocket() string { return filepath.Join(l.RunDir(), "promote.sock") }
