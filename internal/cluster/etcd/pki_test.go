package etcd

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgshield/pgshield/internal/tlsconf"
)

func testCluster() Cluster {
	return Cluster{Token: "t1", Members: []Member{
		{Name: "m1", IP: net.ParseIP("10.77.0.11")}, {Name: "m2", IP: net.ParseIP("10.77.0.12")}, {Name: "m3", IP: net.ParseIP("10.77.0.13")},
	}}
}

func readCert(t *testing.T, p string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := tlsconf.ParseCerts(b)
	if err != nil {
		t.Fatal(err)
	}
	return cs[0]
}

func TestGeneratePKI(t *testing.T) {
	c := testCluster()
	p := PKI{Dir: filepath.Join(t.TempDir(), "pki")}
	if err := p.Generate(c, time.Now()); err != nil {
		t.Fatal(err)
	}
	// Every file 0600, every directory 0700.
	err := filepath.Walk(p.Dir, func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		want := os.FileMode(0o600)
		if fi.IsDir() {
			want = 0o700
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %04o, want %04o", path, fi.Mode().Perm(), want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ca := readCert(t, p.CACert())
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	for _, m := range c.Members {
		leaf := readCert(t, p.MemberCert(m.Name))
		// A member is a server to clients and peers, and a client to peers.
		for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{u}}); err != nil {
				t.Errorf("%s for %v: %v", m.Name, u, err)
			}
		}
		if err := leaf.VerifyHostname(m.IP.String()); err != nil {
			t.Errorf("%s: %v", m.Name, err)
		}
		if k, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
			t.Errorf("%s: key is not ECDSA P-256", m.Name)
		}
		kb, _ := os.ReadFile(p.MemberKey(m.Name))
		key, err := tlsconf.ParseKey(kb)
		if err != nil || !tlsconf.SameKey(leaf.PublicKey, key) {
			t.Errorf("%s: key does not match: %v", m.Name, err)
		}
	}
	client := readCert(t, p.ClientCert())
	if _, err := client.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Error(err)
	}
	// The client certificate cannot serve: it could not impersonate a member.
	if _, err := client.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("the client certificate verifies as a server")
	}
	if err := p.Generate(c, time.Now()); err == nil {
		t.Error("a second Generate replaced the CA")
	}
}

func TestArgs(t *testing.T) {
	c := testCluster()
	p := PKI{Dir: "/etc/pgshield/etcd"}
	args, err := Args(c, "m2", p, "/var/lib/pgshield/etcd")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"--client-cert-auth", "--peer-client-cert-auth", "--enable-v2=false",
		"--listen-client-urls=https://10.77.0.12:2379", "--listen-peer-urls=https://10.77.0.12:2380",
		"--initial-cluster=m1=https://10.77.0.11:2380,m2=https://10.77.0.12:2380,m3=https://10.77.0.13:2380",
		"--trusted-ca-file=" + p.CACert(), "--peer-trusted-ca-file=" + p.CACert(),
		"--key-file=" + p.MemberKey("m2"), "--peer-key-file=" + p.MemberKey("m2"),
	} {
		if !slices.Contains(args, want) {
			t.Errorf("missing %s in %q", want, args)
		}
	}
	for _, a := range args {
		if strings.Contains(a, "http://") || strings.Contains(a, "0.0.0.0") {
			t.Errorf("a plain or wildcard URL: %s", a)
		}
	}
	if _, err := Args(c, "m9", p, "/x"); err == nil {
		t.Error("a member not in the cluster accepted")
	}
}

func TestValidate(t *testing.T) {
	bad := map[string]func(*Cluster){
		"two members":  func(c *Cluster) { c.Members = c.Members[:2] },
		"same address": func(c *Cluster) { c.Members[1].IP = c.Members[0].IP },
		"same name":    func(c *Cluster) { c.Members[1].Name = "m1" },
		"loopback":     func(c *Cluster) { c.Members[0].IP = net.ParseIP("127.0.0.1") },
		"no address":   func(c *Cluster) { c.Members[0].IP = nil },
		"odd name":     func(c *Cluster) { c.Members[0].Name = "m1,m4=https://evil:2380" },
		"odd token":    func(c *Cluster) { c.Token = "a b" },
	}
	for name, f := range bad {
		c := testCluster()
		f(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := testCluster().Validate(); err != nil {
		t.Error(err)
	}
}
