package tlsconf

import (
	"crypto/tls"
	"testing"
)

// BenchmarkHandshake: the CPU of one TLS 1.3 handshake with ServerConfig,
// client and server together on one pipe, full and resumed (a client that
// keeps its ticket, as pgx with a ClientSessionCache or JDBC do).
//
//	go test -run '^$' -bench Handshake ./internal/tlsconf
func BenchmarkHandshake(b *testing.B) {
	p := newPKI(b, "localhost")
	srv := ServerConfig(p.cert, tls.VersionTLS12, 0)
	for _, bc := range []struct {
		name   string
		resume bool
	}{{"full", false}, {"resumed", true}} {
		b.Run(bc.name, func(b *testing.B) {
			cli := &tls.Config{RootCAs: p.roots, ServerName: "localhost"}
			if bc.resume {
				cli.ClientSessionCache = tls.NewLRUClientSessionCache(1)
				resumeHandshake(b, srv, cli) // the ticket
			}
			b.ReportAllocs()
			for b.Loop() {
				if cs := resumeHandshake(b, srv, cli); cs.DidResume != bc.resume {
					b.Fatalf("DidResume = %v; want %v", cs.DidResume, bc.resume)
				}
			}
		})
	}
}
