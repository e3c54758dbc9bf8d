package node

import (
	"crypto/tls"
	"path/filepath"
	"testing"

	"github.com/pgshield/pgshield/internal/tlsconf"
)

// testTLS is a client TLS config with a certificate (the fence wants one).
func testTLS(t *testing.T) *tls.Config {
	t.Helper()
	dir := t.TempDir()
	crt, key := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if err := tlsconf.GenerateCA(crt, key, "test"); err != nil {
		t.Fatal(err)
	}
	c, err := tls.LoadX509KeyPair(crt, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{c}}
}
