package tlsconf

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParsePairAndCheckServing(t *testing.T) {
	now := time.Now()
	ca, caKey, err := NewCA("t", now)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := IssueServer(ca, caKey, []string{"db.example", "10.0.0.1"}, now)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParsePair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckServing(c.Leaf(), now); err != nil {
		t.Fatalf("a fresh certificate: %v", err)
	}
	if got := strings.Join(Hosts(c.Leaf()), ","); got != "db.example,db.example,10.0.0.1" {
		t.Errorf("Hosts = %s", got)
	}
	if len(c.TLS.Certificate) != 2 || !c.Leaf().NotAfter.Before(ca.NotAfter.Add(time.Second)) {
		t.Errorf("chain of %d, leaf until %v (CA %v); want leaf+CA, never past the CA", len(c.TLS.Certificate), c.Leaf().NotAfter, ca.NotAfter)
	}
	_, otherKey, err := IssueServer(ca, caKey, []string{"db.example"}, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParsePair(certPEM, otherKey); !errors.Is(err, ErrMismatch) {
		t.Errorf("ParsePair with another key: %v; want ErrMismatch", err)
	}
	for _, tt := range []struct {
		name string
		at   time.Time
		want string
	}{
		{"expired", c.Leaf().NotAfter, "expired"},
		{"not yet valid", c.Leaf().NotBefore.Add(-time.Second), "not valid before"},
	} {
		if err := CheckServing(c.Leaf(), tt.at); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v; want %q", tt.name, err, tt.want)
		}
	}
	if err := CheckServing(ca, now); err == nil || !strings.Contains(err.Error(), "CA") {
		t.Errorf("a CA certificate as server certificate: %v", err)
	}
	// A client-auth-only certificate and one naming no host.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for _, tt := range []struct {
		tmpl x509.Certificate
		want string
	}{
		{x509.Certificate{DNSNames: []string{"db.example"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, "server authentication"},
		{x509.Certificate{Subject: pkix.Name{CommonName: "db.example"}}, "names no host"},
	} {
		tt.tmpl.SerialNumber, tt.tmpl.NotBefore, tt.tmpl.NotAfter = randomSerial(), now.Add(-time.Hour), now.Add(time.Hour)
		der, err := x509.CreateCertificate(rand.Reader, &tt.tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		leaf, _ := x509.ParseCertificate(der)
		if err := CheckServing(leaf, now); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("CheckServing: %v; want %q", err, tt.want)
		}
	}
	if fp := Fingerprint(ca); len(fp) != 95 || strings.ToUpper(fp) != fp || strings.Count(fp, ":") != 31 {
		t.Errorf("Fingerprint = %q; want 32 upper-case hex bytes, colon-separated", fp)
	}
	// Never key bytes in a parse error.
	if _, err := ParseKey([]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")); err == nil || strings.Contains(err.Error(), "AAAA") {
		t.Errorf("ParseKey of a broken key: %v", err)
	}
}
