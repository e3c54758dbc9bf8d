package material

import (
	"crypto/x509"
	"encoding/json"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgshield/pgshield/internal/cluster/etcd"
	"github.com/pgshield/pgshield/internal/cluster/link"
	"github.com/pgshield/pgshield/internal/cluster/node"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/tlsconf"
)

func spec(nodes ...string) Spec {
	s := Spec{Scope: "prod", Etcd: []Host{{"e1", net.ParseIP("10.77.41.11")}, {"e2", net.ParseIP("10.77.41.12")}, {"e3", net.ParseIP("10.77.41.13")}}}
	for i, n := range nodes {
		s.Nodes = append(s.Nodes, Host{n, net.IPv4(10, 77, 41, byte(21+i))})
	}
	return s
}

func cert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := tlsconf.ParseCerts(b)
	if err != nil {
		t.Fatal(err)
	}
	return cs[0]
}

func verifies(leaf, ca *x509.Certificate, usage x509.ExtKeyUsage) bool {
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	_, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{usage}})
	return err == nil
}

// TestMake: every machine's directory has what it needs and no more; a
// node's certificate is the node CA's and no etcd client, etcd's client
// certificate no node; every node has the same secrets and a section
// init --ha takes; files are 0600 in 0700 directories.
func TestMake(t *testing.T) {
	out := filepath.Join(t.TempDir(), "c")
	if err := Make(out, spec("n1", "n2", "n3"), time.Now()); err != nil {
		t.Fatal(err)
	}
	nodeCA, etcdCA := cert(t, filepath.Join(out, node.FileCA)), cert(t, filepath.Join(out, EtcdPKIDir, "ca.crt"))
	var secrets string
	for i, n := range []string{"n1", "n2", "n3"} {
		d := NodeDir(out, n)
		for _, f := range node.Files {
			if _, err := os.Stat(filepath.Join(d, f)); err != nil {
				t.Errorf("%s: %v", n, err)
			}
		}
		leaf := cert(t, filepath.Join(d, node.FileNodeCert))
		if !verifies(leaf, nodeCA, x509.ExtKeyUsageClientAuth) || verifies(leaf, etcdCA, x509.ExtKeyUsageClientAuth) ||
			len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != link.NodeDNSName(n) {
			t.Errorf("%s's link certificate: names %v; must chain to the node CA only", n, leaf.DNSNames)
		}
		if _, err := link.LoadIdentity(n, filepath.Join(d, node.FileCA), filepath.Join(d, node.FileNodeCert), filepath.Join(d, node.FileNodeKey)); err != nil {
			t.Errorf("%s: LoadIdentity: %v", n, err)
		}
		client := cert(t, filepath.Join(d, node.FileEtcdCert))
		if !verifies(client, etcdCA, x509.ExtKeyUsageClientAuth) || verifies(client, nodeCA, x509.ExtKeyUsageClientAuth) {
			t.Errorf("%s's etcd client certificate must chain to etcd's client CA only", n)
		}
		s, err := node.ReadSecrets(filepath.Join(d, node.FileSecrets))
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			secrets = s.Replication + s.Rewind + s.Config
		} else if secrets != s.Replication+s.Rewind+s.Config {
			t.Errorf("%s: secrets differ from n1's", n)
		}
		var cl config.Cluster
		b, _ := os.ReadFile(filepath.Join(d, ClusterJSON))
		if err := json.Unmarshal(b, &cl); err != nil || cl.Check() != nil || cl.Node != n || cl.Join != (i > 0) || len(cl.Peers) != 2 ||
			cl.TTL != 30 || len(cl.Etcd) != 3 || cl.Etcd[0] != "10.77.41.11:2379" {
			t.Errorf("%s: cluster.json %s (%v)", n, b, cl.Check())
		}
		if _, err := os.Stat(filepath.Join(d, CAKey)); err == nil {
			t.Errorf("%s's directory holds the CA key", n)
		}
	}
	for _, m := range []string{"e1", "e2", "e3"} {
		d := EtcdMemberDir(out, m)
		c, name, err := ReadEtcdMember(d)
		if err != nil || name != m || c.Token != "prod-etcd" {
			t.Fatalf("ReadEtcdMember(%s) = %v %q %v", m, c, name, err)
		}
		if _, err := etcd.Args(c, name, etcd.PKI{Dir: d}, "/x"); err != nil {
			t.Error(err)
		}
		_ = filepath.WalkDir(d, func(p string, e fs.DirEntry, _ error) error {
			if strings.HasSuffix(p, "ca.key") || strings.Contains(p, "client") {
				t.Errorf("etcd member %s's directory holds %s", m, p)
			}
			return nil
		})
	}
	_ = filepath.WalkDir(out, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := e.Info()
		if want := fs.FileMode(0o600); e.IsDir() && fi.Mode().Perm() != 0o700 || !e.IsDir() && fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v", p, fi.Mode().Perm())
		}
		return nil
	})
	readme, _ := os.ReadFile(filepath.Join(out, ReadmeFile))
	for _, s := range []string{"cluster etcd --dir", "init --listen 10.77.41.21:5432", "Keep offline"} {
		if !strings.Contains(string(readme), s) {
			t.Errorf("README lacks %q:\n%s", s, readme)
		}
	}
	// An existing directory is never written over.
	if err := Make(out, spec("n1", "n2"), time.Now()); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("Make over an existing directory: %v", err)
	}
}

// TestMakeRefuses: bad specs are refused before anything is written.
func TestMakeRefuses(t *testing.T) {
	bad := map[string]Spec{
		"one node":        spec("n1"),
		"four nodes":      spec("n1", "n2", "n3", "n4"),
		"bad name":        spec("n1", "N2"),
		"same name":       spec("n1", "n1"),
		"bad scope":       func() Spec { s := spec("n1", "n2"); s.Scope = "Prod!"; return s }(),
		"two etcd":        func() Spec { s := spec("n1", "n2"); s.Etcd = s.Etcd[:2]; return s }(),
		"loopback node":   func() Spec { s := spec("n1", "n2"); s.Nodes[1].IP = net.ParseIP("127.0.0.1"); return s }(),
		"same address":    func() Spec { s := spec("n1", "n2"); s.Nodes[1].IP = s.Nodes[0].IP; return s }(),
		"no node address": func() Spec { s := spec("n1", "n2"); s.Nodes[1].IP = nil; return s }(),
	}
	for name, s := range bad {
		out := filepath.Join(t.TempDir(), "c")
		if err := Make(out, s, time.Now()); err == nil {
			t.Errorf("%s: Make accepted it", name)
		}
		if _, err := os.Stat(out); err == nil {
			t.Errorf("%s: %s was left behind", name, out)
		}
	}
}

// TestChownMember: the member's files become etcd's user's; a link planted
// in the directory (which that user owns after the first start) makes the
// next start refuse, and what it points at keeps its owner.
func TestChownMember(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	out := filepath.Join(t.TempDir(), "c")
	if err := Make(out, spec("n1", "n2"), time.Now()); err != nil {
		t.Fatal(err)
	}
	d := EtcdMemberDir(out, "e1")
	if err := ChownMember(d, "e1", 4321, 4322); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{d, filepath.Join(d, "ca.crt"), filepath.Join(d, "member-e1", "peer.key")} {
		st, _ := os.Lstat(f)
		if s := st.Sys().(*syscall.Stat_t); s.Uid != 4321 || s.Gid != 4322 {
			t.Errorf("%s: owner %d:%d", f, s.Uid, s.Gid)
		}
	}
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("root's"), 0o600); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(d, "member-e1", "server.key")
	os.Remove(key)
	if err := os.Symlink(victim, key); err != nil {
		t.Fatal(err)
	}
	if err := ChownMember(d, "e1", 4321, 4322); err == nil || !strings.Contains(err.Error(), "not a plain file") {
		t.Errorf("a planted link: %v", err)
	}
	os.Remove(key)
	if err := os.Link(victim, key); err != nil {
		t.Fatal(err)
	}
	if err := ChownMember(d, "e1", 4321, 4322); err == nil {
		t.Error("a planted hard link was accepted")
	}
	sub := filepath.Join(d, "member-e1")
	if err := os.Rename(sub, sub+".old"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Dir(victim), sub); err != nil {
		t.Fatal(err)
	}
	if err := ChownMember(d, "e1", 4321, 4322); err == nil {
		t.Error("a planted directory link was accepted")
	}
	if st, _ := os.Stat(victim); st.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Errorf("the link's target was given away")
	}
}
