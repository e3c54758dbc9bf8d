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
// certificate no node; only the first node has the secrets; every node a
// section init --ha takes; files are 0600 in 0700 directories.
func TestMake(t *testing.T) {
	out := filepath.Join(t.TempDir(), "c")
	if err := Make(out, spec("n1", "n2", "n3"), time.Now()); err != nil {
		t.Fatal(err)
	}
	nodeCA, etcdCA := cert(t, filepath.Join(out, node.FileCA)), cert(t, filepath.Join(out, EtcdPKIDir, "ca.crt"))
	var secrets string
	defer func() {
		if len(secrets) < 48 {
			t.Errorf("n1's secrets are too short: %d characters", len(secrets))
		}
	}()
	for i, n := range []string{"n1", "n2", "n3"} {
		d := NodeDir(out, n)
		for _, f := range node.Files {
			_, err := os.Stat(filepath.Join(d, f))
			if f == node.FileSecrets && i > 0 {
				if err == nil {
					t.Errorf("%s, joining, has %s (it receives them over the link)", n, f)
				}
				continue
			}
			if err != nil {
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
		if i == 0 {
			s, err := node.ReadSecrets(filepath.Join(d, node.FileSecrets))
			if err != nil {
				t.Fatal(err)
			}
			secrets = s.Replication + s.Rewind + s.Config
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

// TestShareMember: the member's directory stays root's and its group
// (etcd's) reads it; anything planted in it (a link, a second link to a
// file, a directory link, a file or directory not root's) makes the start
// refuse, and what a link points at is left alone. The data directory is
// given to etcd's user, never through a link.
func TestShareMember(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	out := filepath.Join(t.TempDir(), "c")
	if err := Make(out, spec("n1", "n2"), time.Now()); err != nil {
		t.Fatal(err)
	}
	d := EtcdMemberDir(out, "e1")
	if c, name, err := ReadEtcdMember(d); err != nil || name != "e1" || len(c.Members) != 3 {
		t.Fatalf("ReadEtcdMember = %v %q %v", c, name, err)
	}
	if err := ShareMember(d, "e1", 4322); err != nil {
		t.Fatal(err)
	}
	for f, mode := range map[string]fs.FileMode{d: 0o750, filepath.Join(d, "member-e1"): 0o750, filepath.Join(d, "ca.crt"): 0o640,
		filepath.Join(d, "member-e1", "peer.key"): 0o640, filepath.Join(d, ClusterJSON): 0o640} {
		st, _ := os.Lstat(f)
		if s := st.Sys().(*syscall.Stat_t); s.Uid != 0 || s.Gid != 4322 || st.Mode().Perm() != mode {
			t.Errorf("%s: owner %d:%d mode %v; want 0:4322 %v", f, s.Uid, s.Gid, st.Mode().Perm(), mode)
		}
	}
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("root's"), 0o600); err != nil {
		t.Fatal(err)
	}
	refused := func(what string) {
		t.Helper()
		if err := ShareMember(d, "e1", 4322); err == nil {
			t.Errorf("%s was accepted", what)
		}
		if st, _ := os.Stat(victim); st.Sys().(*syscall.Stat_t).Gid != 0 || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: the victim was changed", what)
		}
	}
	key := filepath.Join(d, "member-e1", "server.key")
	keep, _ := os.ReadFile(key)
	os.Remove(key)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Symlink(victim, key))
	refused("a link to another file")
	os.Remove(key)
	must(os.Link(victim, key))
	refused("a second link to another file")
	os.Remove(key)
	must(os.WriteFile(key, keep, 0o600))
	must(os.Chown(key, 4321, 4322))
	refused("a file not root's")
	must(os.Chown(key, 0, 0))
	must(os.Chown(d, 4321, 4322))
	refused("a directory not root's")
	if _, _, err := ReadEtcdMember(d); err == nil {
		t.Error("ReadEtcdMember read from a directory not root's")
	}
	must(os.Chown(d, 0, 0))
	sub := filepath.Join(d, "member-e1")
	must(os.Rename(sub, sub+".old"))
	must(os.Symlink(filepath.Dir(victim), sub))
	refused("a link to another directory")
	must(os.Remove(sub))
	must(os.Rename(sub+".old", sub))
	if err := ShareMember(d, "e1", 4322); err != nil {
		t.Errorf("put back as it was: %v", err)
	}

	data := filepath.Join(t.TempDir(), "data")
	if err := DataDir(data, 4321, 4322); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(data); st.Sys().(*syscall.Stat_t).Uid != 4321 || st.Mode().Perm() != 0o700 {
		t.Errorf("data directory: %v", st.Mode())
	}
	link := filepath.Join(t.TempDir(), "data-link")
	must(os.Symlink(filepath.Dir(victim), link))
	if err := DataDir(link, 4321, 4322); err == nil {
		t.Error("DataDir followed a link")
	}
	if st, _ := os.Stat(filepath.Dir(victim)); st.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Error("DataDir gave a link's target away")
	}
}
