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
	pool := func(f string) *x509.CertPool {
		p := x509.NewCertPool()
		p.AddCert(readCert(t, f))
		return p
	}
	clientRoots, peerRoots := pool(p.CACert()), pool(p.PeerCACert())
	verifies := func(c *x509.Certificate, roots *x509.CertPool, u x509.ExtKeyUsage) bool {
		_, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{u}})
		return err == nil
	}
	both := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	for _, m := range c.Members {
		server, peer := readCert(t, p.ServerCert(m.Name)), readCert(t, p.PeerCert(m.Name))
		for _, u := range both {
			// The client port serves clients and, through etcd's gateway,
			// is a client of itself; a peer serves peers and dials them.
			if !verifies(server, clientRoots, u) {
				t.Errorf("%s: client-port certificate does not verify for %v", m.Name, u)
			}
			if !verifies(peer, peerRoots, u) {
				t.Errorf("%s: peer certificate does not verify for %v", m.Name, u)
			}
			// Neither CA vouches for the other's certificates.
			if verifies(server, peerRoots, u) || verifies(peer, clientRoots, u) {
				t.Errorf("%s: a certificate verifies under the other CA for %v", m.Name, u)
			}
		}
		if peer.Subject.CommonName != PeerCN || server.Subject.CommonName == PeerCN {
			t.Errorf("%s: CNs %q (peer), %q (client port); only peers are %q", m.Name, peer.Subject.CommonName, server.Subject.CommonName, PeerCN)
		}
		for name, leaf := range map[string]*x509.Certificate{"server": server, "peer": peer} {
			// The member's address is its certificates' only name.
			if len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(m.IP) || len(leaf.DNSNames) != 0 {
				t.Errorf("%s %s: names %v %v, want only %s", m.Name, name, leaf.IPAddresses, leaf.DNSNames, m.IP)
			}
			if k, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
				t.Errorf("%s %s: key is not ECDSA P-256", m.Name, name)
			}
		}
		for crt, key := range map[string]string{p.ServerCert(m.Name): p.ServerKey(m.Name), p.PeerCert(m.Name): p.PeerKey(m.Name)} {
			kb, _ := os.ReadFile(key)
			k, err := tlsconf.ParseKey(kb)
			if err != nil || !tlsconf.SameKey(readCert(t, crt).PublicKey, k) {
				t.Errorf("%s: key does not match: %v", crt, err)
			}
		}
	}
	client := readCert(t, p.ClientCert())
	if !verifies(client, clientRoots, x509.ExtKeyUsageClientAuth) {
		t.Error("the client certificate does not verify as a client")
	}
	// The client certificate can neither serve (impersonate a member's
	// client port) nor chain to the peer CA (join as a peer).
	if verifies(client, clientRoots, x509.ExtKeyUsageServerAuth) {
		t.Error("the client certificate verifies as a server")
	}
	if verifies(client, peerRoots, x509.ExtKeyUsageClientAuth) {
		t.Error("the client certificate verifies under the peer CA")
	}
	if client.Subject.CommonName == PeerCN || len(client.IPAddresses) != 0 {
		t.Errorf("client certificate: CN %q, IPs %v", client.Subject.CommonName, client.IPAddresses)
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
		"--trusted-ca-file=" + p.CACert(), "--peer-trusted-ca-file=" + p.PeerCACert(),
		"--peer-cert-allowed-cn=" + PeerCN,
		"--cert-file=" + p.ServerCert("m2"), "--key-file=" + p.ServerKey("m2"),
		"--peer-cert-file=" + p.PeerCert("m2"), "--peer-key-file=" + p.PeerKey("m2"),
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
