package scram

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	xscram "github.com/xdg-go/scram"

	"github.com/pgshield/pgshield/internal/tlsconf"
)

// TestExchangeOverTLSWithChannelBinding runs the exchange over a real TLS
// connection: the client computes tls-server-end-point from the certificate it
// received, the server uses tlsconf's precomputed EndPoint, and they must agree.
func TestExchangeOverTLSWithChannelBinding(t *testing.T) {
	dir := t.TempDir()
	p := func(n string) string { return filepath.Join(dir, n) }
	if err := tlsconf.GenerateCA(p("ca.crt"), p("ca.key"), "test CA"); err != nil {
		t.Fatal(err)
	}
	if err := tlsconf.GenerateServer(p("ca.crt"), p("ca.key"), p("server.crt"), p("server.key"),
		[]string{"localhost"}); err != nil {
		t.Fatal(err)
	}
	cert, err := tlsconf.LoadCert(p("server.crt"), p("server.key"))
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(p("ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)

	for _, tt := range []struct {
		name       string
		maxVersion uint16
		wrongCB    bool
		wantCode   string
	}{
		{name: "TLS 1.3", maxVersion: tls.VersionTLS13},
		{name: "TLS 1.2", maxVersion: tls.VersionTLS12},
		{name: "TLS 1.3 with a binding from another certificate", maxVersion: tls.VersionTLS13, wrongCB: true,
			wantCode: "08P01"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srvRaw, cliRaw := net.Pipe()
			deadline := time.Now().Add(10 * time.Second)
			_ = srvRaw.SetDeadline(deadline)
			_ = cliRaw.SetDeadline(deadline)
			srv := tls.Server(srvRaw, tlsconf.ServerConfig(cert, tls.VersionTLS12, 0))
			cli := tls.Client(cliRaw, &tls.Config{RootCAs: roots, ServerName: "localhost", MaxVersion: tt.maxVersion})

			type result struct {
				final []byte
				err   error
			}
			creds := realCreds(t)
			done := make(chan result, 1)
			go func() {
				defer srvRaw.Close() // closing the TLS layer would wait for a close_notify reader
				if err := srv.Handshake(); err != nil {
					done <- result{nil, err}
					return
				}
				x := &Exchange{User: testUser, Creds: creds, Valid: true, Binding: &cert.EndPoint}
				final, err := x.Run(srv)
				done <- result{final, err}
			}()
			if err := cli.Handshake(); err != nil {
				t.Fatalf("client handshake: %v", err)
			}
			cs := cli.ConnectionState()
			cb, err := xscram.NewTLSServerEndpointBinding(&cs)
			if err != nil {
				t.Fatal(err)
			}
			if !cb.Matches(cert.EndPoint) {
				t.Errorf("client's tls-server-end-point %x differs from LoadCert's %x", cb.Data, cert.EndPoint.Data)
			}
			if tt.wrongCB {
				cb = *endPoint("another certificate")
			}
			var o outcome
			o.clientErr = script{password: testPassword, mech: MechSCRAMPlus, conv: withBinding(&cb)}.play(cli, &o)
			r := <-done
			cliRaw.Close()
			if tt.wantCode != "" {
				if got := sqlstate(r.err); got != tt.wantCode {
					t.Fatalf("Exchange.Run() error = %v (SQLSTATE %s); want %s", r.err, got, tt.wantCode)
				}
				return
			}
			if r.err != nil || o.clientErr != nil {
				t.Fatalf("Exchange.Run() error = %v, client error = %v; want success", r.err, o.clientErr)
			}
			if _, err := o.conv.Step(string(r.final)); err != nil || !o.conv.Valid() {
				t.Errorf("client rejected server-final %q: %v", r.final, err)
			}
		})
	}
}
