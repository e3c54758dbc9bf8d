// Package material makes everything a new cluster's machines need before
// the first `pgshield init --ha` (`pgshield cluster init`): the cluster CA
// and each node's link certificate, etcd's two CAs and its members' and
// client's certificates, the cluster's secrets (in the first node's
// directory only: the others receive them over the link when they join),
// and each node's cluster section, in one directory per machine, so that the operator copies one
// directory to each and runs one command there.
//
// The node CA is not etcd's client CA: a node's link certificate is then
// no etcd client certificate, and etcd's client certificate (which
// Patroni, running as PostgreSQL's OS user, holds) is no node on the link.
package material

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pgshield/pgshield/internal/cluster/etcd"
	"github.com/pgshield/pgshield/internal/cluster/link"
	"github.com/pgshield/pgshield/internal/cluster/node"
	"github.com/pgshield/pgshield/internal/cluster/patroni"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/tlsconf"
)

// Host is a machine of the cluster: a node or an etcd member.
type Host struct {
	Name string
	IP   net.IP
}

// Spec is the cluster to make.
type Spec struct {
	Scope string
	// Nodes are pgshield's (2 or 3; the first bootstraps), Etcd etcd's 3
	// members (they may share machines with nodes, not addresses with
	// each other).
	Nodes []Host
	Etcd  []Host
	// Timings are Patroni's (patroni.DefaultTimings when zero).
	Timings patroni.Timings
	// AsyncWhenAlone turns synchronous_mode_strict off (config.Cluster).
	AsyncWhenAlone bool
}

// Ports every node uses: its link listener on its own address, and its
// numbers on the link (config.Cluster: unique in the cluster).
const (
	LinkListenPort = 5500
	linkPortBase   = 5501
	restPortBase   = 8101
)

// Files of the output directory.
const (
	CAKey       = "ca.key"       // the node CA's key: keep it offline
	ClusterJSON = "cluster.json" // a node's section (init --ha), or an etcd member's cluster (EtcdCluster)
	EtcdPKIDir  = "etcd-pki"     // etcd's CAs and keys: keep it offline
	etcdMember  = "etcd-member-" // + name: what that member's machine needs
	nodeDir     = "node-"        // + name: that node's --ha-files and --ha
	ReadmeFile  = "README.txt"   // what goes where
)

// EtcdCluster is an etcd member's cluster.json: its cluster's token and
// members, which `pgshield cluster etcd` runs it with.
type EtcdCluster struct {
	Token   string `json:"token"`
	Members []struct {
		Name string `json:"name"`
		IP   string `json:"ip"`
	} `json:"members"`
}

// Cluster is e's etcd.Cluster.
func (e EtcdCluster) Cluster() (etcd.Cluster, error) {
	c := etcd.Cluster{Token: e.Token}
	for _, m := range e.Members {
		ip := net.ParseIP(m.IP)
		if ip == nil {
			return c, fmt.Errorf("etcd member %s: %q is not an IP address", m.Name, m.IP)
		}
		c.Members = append(c.Members, etcd.Member{Name: m.Name, IP: ip})
	}
	return c, c.Validate()
}

// NodeDir and EtcdMemberDir are where Make puts one machine's files.
func NodeDir(out, name string) string       { return filepath.Join(out, nodeDir+name) }
func EtcdMemberDir(out, name string) string { return filepath.Join(out, etcdMember+name) }

func (s Spec) check() error {
	if len(s.Nodes) < 2 || len(s.Nodes) > 3 {
		return fmt.Errorf("a cluster has 2 or 3 nodes here, not %d", len(s.Nodes))
	}
	ips := map[string]string{}
	for _, n := range s.Nodes {
		if !link.ValidNodeName(n.Name) {
			return fmt.Errorf("node name %q: want a lower-case letter, then letters, digits and '-'", n.Name)
		}
		if n.IP == nil || n.IP.IsUnspecified() || n.IP.IsLoopback() {
			return fmt.Errorf("node %s: needs a routable address of its own", n.Name)
		}
		if o, ok := ips[n.IP.String()]; ok {
			return fmt.Errorf("nodes %s and %s have the same address", o, n.Name)
		}
		ips[n.IP.String()] = n.Name
	}
	return s.etcd().Validate()
}

func (s Spec) etcd() etcd.Cluster {
	c := etcd.Cluster{Token: s.Scope + "-etcd"}
	for _, m := range s.Etcd {
		c.Members = append(c.Members, etcd.Member{Name: m.Name, IP: m.IP})
	}
	return c
}

// Sections are every node's cluster section, in Spec order.
func (s Spec) Sections() []config.Cluster {
	t := s.Timings
	if t == (patroni.Timings{}) {
		t = patroni.DefaultTimings
	}
	var eps []string
	for _, m := range s.Etcd {
		eps = append(eps, net.JoinHostPort(m.IP.String(), strconv.Itoa(etcd.ClientPort)))
	}
	addr := func(i int) string { return net.JoinHostPort(s.Nodes[i].IP.String(), strconv.Itoa(LinkListenPort)) }
	out := make([]config.Cluster, 0, len(s.Nodes))
	for i, n := range s.Nodes {
		c := config.Cluster{Scope: s.Scope, Node: n.Name, Join: i > 0, LinkListen: addr(i),
			LinkPort: linkPortBase + i, RESTPort: restPortBase + i, Etcd: slices.Clone(eps),
			TTL: t.TTL, LoopWait: t.LoopWait, RetryTimeout: t.RetryTimeout, AsyncWhenAlone: s.AsyncWhenAlone}
		for j, o := range s.Nodes {
			if j != i {
				c.Peers = append(c.Peers, config.ClusterPeer{Name: o.Name, Addr: addr(j), LinkPort: linkPortBase + j, RESTPort: restPortBase + j})
			}
		}
		out = append(out, c)
	}
	return out
}

// Make writes the cluster's material under out, which must not exist
// (its parent must): every directory 0700, every file 0600, root's.
func Make(out string, s Spec, now time.Time) (err error) {
	if err := s.check(); err != nil {
		return err
	}
	sections := s.Sections()
	for i := range sections {
		if err := sections[i].Check(); err != nil {
			return err
		}
	}
	if err := os.Mkdir(out, 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%s already exists; refusing to write a cluster's keys over it", out)
		}
		return err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(out) // half a cluster's keys help no one
		}
	}()
	// The node CA.
	ca, caKey, err := tlsconf.NewCA("pgshield cluster CA "+s.Scope, now)
	if err != nil {
		return err
	}
	keyPEM, err := tlsconf.EncodeKey(caKey)
	if err != nil {
		return err
	}
	caPEM := tlsconf.EncodeCert(ca.Raw)
	if err := config.WriteFileAtomic(filepath.Join(out, CAKey), keyPEM, 0o600); err != nil {
		return err
	}
	if err := config.WriteFileAtomic(filepath.Join(out, node.FileCA), caPEM, 0o600); err != nil {
		return err
	}
	// etcd's.
	ec := s.etcd()
	pki := etcd.PKI{Dir: filepath.Join(out, EtcdPKIDir)}
	if err := pki.Generate(ec, now); err != nil {
		return err
	}
	secrets, err := json.Marshal(node.NewSecrets())
	if err != nil {
		return err
	}
	copyTo := func(dst, src string) error {
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		return config.WriteFileAtomic(dst, b, 0o600)
	}
	for i, n := range s.Nodes {
		d := NodeDir(out, n.Name)
		if err := os.Mkdir(d, 0o700); err != nil {
			return err
		}
		if err := link.IssueNode(filepath.Join(out, node.FileCA), filepath.Join(out, CAKey), n.Name,
			filepath.Join(d, node.FileNodeCert), filepath.Join(d, node.FileNodeKey), now); err != nil {
			return err
		}
		for dst, src := range map[string]string{node.FileCA: filepath.Join(out, node.FileCA), node.FileEtcdCA: pki.CACert(),
			node.FileEtcdCert: pki.ClientCert(), node.FileEtcdKey: pki.ClientKey()} {
			if err := copyTo(filepath.Join(d, dst), src); err != nil {
				return err
			}
		}
		// Only the first node's: the others, joining, are given them by a
		// node already up, over the link (init --ha).
		if i == 0 {
			if err := config.WriteFileAtomic(filepath.Join(d, node.FileSecrets), secrets, 0o600); err != nil {
				return err
			}
		}
		b, _ := json.MarshalIndent(sections[i], "", "  ")
		if err := config.WriteFileAtomic(filepath.Join(d, ClusterJSON), append(b, '\n'), 0o600); err != nil {
			return err
		}
	}
	var desc EtcdCluster
	desc.Token = ec.Token
	for _, m := range ec.Members {
		desc.Members = append(desc.Members, struct {
			Name string `json:"name"`
			IP   string `json:"ip"`
		}{m.Name, m.IP.String()})
	}
	descJSON, _ := json.MarshalIndent(desc, "", "  ")
	for _, m := range ec.Members {
		// The layout of etcd.PKI, without the CA keys.
		d := EtcdMemberDir(out, m.Name)
		member := etcd.PKI{Dir: d}
		if err := os.MkdirAll(filepath.Dir(member.ServerCert(m.Name)), 0o700); err != nil {
			return err
		}
		if err := os.Chmod(d, 0o700); err != nil {
			return err
		}
		for _, f := range [][2]string{{member.CACert(), pki.CACert()}, {member.PeerCACert(), pki.PeerCACert()},
			{member.ServerCert(m.Name), pki.ServerCert(m.Name)}, {member.ServerKey(m.Name), pki.ServerKey(m.Name)},
			{member.PeerCert(m.Name), pki.PeerCert(m.Name)}, {member.PeerKey(m.Name), pki.PeerKey(m.Name)}} {
			if err := copyTo(f[0], f[1]); err != nil {
				return err
			}
		}
		if err := config.WriteFileAtomic(filepath.Join(d, ClusterJSON), append(descJSON, '\n'), 0o600); err != nil {
			return err
		}
	}
	return config.WriteFileAtomic(filepath.Join(out, ReadmeFile), []byte(Readme(s, now)), 0o600)
}

// Readme says what goes where, in the order to do it.
func Readme(s Spec, now time.Time) string {
	var b []byte
	add := func(format string, args ...any) { b = fmt.Appendf(b, format, args...) }
	add("pgshield cluster %q, made %s.\n\n", s.Scope, now.UTC().Format(time.RFC3339))
	add("Keep offline (they issue every certificate): %s, %s/.\n\n", CAKey, EtcdPKIDir)
	add("1. On each etcd member's machine, copy its directory (0700, root's) and run it, e.g. as a service:\n")
	for _, m := range s.Etcd {
		add("     %s (%s): pgshield cluster etcd --dir <copy of %s> --data-dir /var/lib/pgshield-etcd\n", m.Name, m.IP, etcdMember+m.Name)
	}
	add("\n2. On each node, in this order (the first bootstraps, the others join), copy its directory and run:\n")
	for i, n := range s.Nodes {
		add("     %s (%s): pgshield init --listen %s --ha <copy>/%s --ha-files <copy> && pgshield up\n",
			n.Name, n.IP, net.JoinHostPort(n.IP.String(), "5432"), ClusterJSON)
		if i == 0 {
			add("        then wait until `pgshield cluster show` says confirmed\n")
		} else {
			add("        first, on %s: pgshield cluster allow-join %s (it may then receive the secrets once)\n", s.Nodes[0].Name, n.Name)
		}
	}
	add("\nOnly %s's directory holds secrets.json (the cluster's passwords and config key): the others receive them\n", s.Nodes[0].Name)
	add("over the link at init, from a node that allow-join opened a window on. Every directory is secret (a node's\n")
	add("key is its identity on the link). Delete the copies once `init` has taken them in.\n")
	return string(b)
}

// ReadEtcdMember reads the directory Make wrote for one etcd member: its
// cluster, and its name (the one member whose certificates are there).
func ReadEtcdMember(dir string) (etcd.Cluster, string, error) {
	var desc EtcdCluster
	// Read as root: root's directory, a plain file, never a link.
	top, err := openDir(unix.AT_FDCWD, dir)
	if err != nil {
		return etcd.Cluster{}, "", err
	}
	defer unix.Close(top)
	fd, err := unix.Openat(top, ClusterJSON, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return etcd.Cluster{}, "", fmt.Errorf("%s: %w", filepath.Join(dir, ClusterJSON), err)
	}
	f := os.NewFile(uintptr(fd), ClusterJSON)
	defer f.Close()
	if err := rootsOnly(fd, unix.S_IFREG, filepath.Join(dir, ClusterJSON)); err != nil {
		return etcd.Cluster{}, "", err
	}
	b, err := io.ReadAll(io.LimitReader(f, 1<<16))
	if err != nil {
		return etcd.Cluster{}, "", err
	}
	if err := json.Unmarshal(b, &desc); err != nil {
		return etcd.Cluster{}, "", fmt.Errorf("%s: not an etcd member's cluster: %w", filepath.Join(dir, ClusterJSON), err)
	}
	c, err := desc.Cluster()
	if err != nil {
		return c, "", err
	}
	var name string
	for _, m := range c.Members {
		if _, err := os.Stat(etcd.PKI{Dir: dir}.ServerCert(m.Name)); err == nil {
			if name != "" {
				return c, "", fmt.Errorf("%s holds the certificates of %s and %s: one member's directory only", dir, name, m.Name)
			}
			name = m.Name
		}
	}
	if name == "" {
		return c, "", fmt.Errorf("%s holds no member's certificates", dir)
	}
	return c, name, nil
}

// ShareMember lets group gid (the one etcd runs as) read an etcd
// member's directory as Make wrote it, which stays root's: directories
// 0750, files 0640, root:gid. Nothing the etcd user does can then change
// what root reads or changes here at the next start; and nothing here
// follows a link (each directory is opened O_NOFOLLOW relative to its
// parent, each file opened O_NOFOLLOW and changed through its
// descriptor). Anything not root's, not a directory or a regular file
// with one link, is refused.
func ShareMember(dir, name string, gid int) error {
	top, err := openDir(unix.AT_FDCWD, dir)
	if err != nil {
		return err
	}
	defer unix.Close(top)
	sub, err := openDir(top, "member-"+name)
	if err != nil {
		return err
	}
	defer unix.Close(sub)
	file := func(dfd int, f string) error {
		fd, err := unix.Openat(dfd, f, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		defer unix.Close(fd)
		if err := rootsOnly(fd, unix.S_IFREG, f); err != nil {
			return err
		}
		if err := unix.Fchown(fd, 0, gid); err != nil {
			return err
		}
		return unix.Fchmod(fd, 0o640)
	}
	for _, f := range []string{"ca.crt", "peer-ca.crt", ClusterJSON} {
		if err := file(top, f); err != nil {
			return err
		}
	}
	for _, f := range []string{"server.crt", "server.key", "peer.crt", "peer.key"} {
		if err := file(sub, f); err != nil {
			return err
		}
	}
	for _, fd := range []int{sub, top} {
		if err := unix.Fchown(fd, 0, gid); err != nil {
			return err
		}
		if err := unix.Fchmod(fd, 0o750); err != nil {
			return err
		}
	}
	return nil
}

func openDir(at int, path string) (int, error) {
	fd, err := unix.Openat(at, path, unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("%s: %w", path, err)
	}
	if err := rootsOnly(fd, unix.S_IFDIR, path); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// rootsOnly refuses fd unless it is root's, of type typ, and (a file)
// has one link.
func rootsOnly(fd int, typ uint32, name string) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != typ || st.Uid != 0 || (typ == unix.S_IFREG && st.Nlink != 1) {
		return fmt.Errorf("%s is not root's own plain %s; refusing to use it", name, map[uint32]string{unix.S_IFREG: "file", unix.S_IFDIR: "directory"}[typ])
	}
	return nil
}

// DataDir makes (or opens) etcd's data directory and gives it to uid:gid,
// 0700, through a descriptor: a link put in its place is refused, never
// followed.
func DataDir(path string, uid, gid int) error {
	if err := os.Mkdir(path, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	fd, err := unix.Open(path, unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("etcd's data directory %s: %w", path, err)
	}
	defer unix.Close(fd)
	if err := unix.Fchown(fd, uid, gid); err != nil {
		return err
	}
	return unix.Fchmod(fd, 0o700)
}
