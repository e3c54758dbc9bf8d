package gateway

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgshield/pgshield/internal/testutil/pgtest"
	"github.com/pgshield/pgshield/internal/tlsconf"
)

// TestRealSetCert: a certificate rotation is live. A session open before
// it goes on; a new SCRAM-SHA-256-PLUS login binds to the new certificate
// (its handshake presented it); a certificate of another CA is presented
// at once too (verify-full with the old CA then fails, which shows the
// handshake really changed).
func TestRealSetCert(t *testing.T) {
	srv := pgtest.Shared(t)
	checkGoroutines(t)
	srv.CreateRole(t, "gw_rot", goodPassword, "LOGIN")
	env := startRealGateway(t, srv)

	// Re-point the gateway at a CA of this test's own, before any session.
	now := time.Now()
	ca, caKey, err := tlsconf.NewCA("rotation test CA", now)
	if err != nil {
		t.Fatal(err)
	}
	issue := func() *tlsconf.Cert {
		certPEM, keyPEM, err := tlsconf.IssueServer(ca, caKey, []string{"localhost", "127.0.0.1"}, now)
		if err != nil {
			t.Fatal(err)
		}
		c, err := tlsconf.ParsePair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	env.caFile = filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(env.caFile, tlsconf.EncodeCert(ca.Raw), 0o600); err != nil {
		t.Fatal(err)
	}
	first, second := issue(), issue()
	env.srv.SetCert(first)

	presented := func(t *testing.T) (string, func(context.Context) error) {
		t.Helper()
		conn, err := env.connectPgx(t, "gw_rot", goodPassword, "channel_binding=require")
		if err != nil {
			t.Fatalf("SCRAM-SHA-256-PLUS login: %v", err)
		}
		tc, ok := conn.PgConn().Conn().(*tls.Conn)
		if !ok {
			t.Fatalf("connection is %T; want TLS", conn.PgConn().Conn())
		}
		return tlsconf.Fingerprint(tc.ConnectionState().PeerCertificates[0]), func(ctx context.Context) error {
			var one int
			return conn.QueryRow(ctx, "SELECT 1").Scan(&one)
		}
	}
	fp, queryOld := presented(t)
	if fp != tlsconf.Fingerprint(first.Leaf()) {
		t.Fatalf("presented %s; want the first certificate", fp)
	}
	if starts := env.awaitAudited(t, "session.start"); starts[len(starts)-1].Fields["method"] != "SCRAM-SHA-256-PLUS" {
		t.Fatalf("login method %v; want SCRAM-SHA-256-PLUS", starts[len(starts)-1].Fields["method"])
	}

	env.srv.SetCert(second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := queryOld(ctx); err != nil {
		t.Fatalf("session opened before the rotation: %v", err)
	}
	fp, queryNew := presented(t)
	if fp != tlsconf.Fingerprint(second.Leaf()) {
		t.Fatalf("after SetCert a new handshake presented %s; want the second certificate", fp)
	}
	if err := queryNew(ctx); err != nil {
		t.Fatal(err)
	}
	if err := queryOld(ctx); err != nil {
		t.Fatalf("session opened before the rotation, after a new login: %v", err)
	}

	// A client keeping TLS session tickets resumes while the certificate
	// stays, and not across a rotation: the ticket keys went with the old
	// tls.Config, so a resumed session never binds to a certificate it
	// did not see.
	cache := tls.NewLRUClientSessionCache(4)
	resumed := func() (bool, string) {
		t.Helper()
		host, port, _ := net.SplitHostPort(env.addr)
		cc, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%s user=gw_rot password='%s' dbname=postgres sslmode=verify-full sslrootcert=%s channel_binding=require",
			host, port, goodPassword, env.caFile))
		if err != nil {
			t.Fatal(err)
		}
		cc.TLSConfig.ClientSessionCache = cache
		conn, err := pgx.ConnectConfig(ctx, cc)
		if err != nil {
			t.Fatalf("SCRAM-SHA-256-PLUS login with a session cache: %v", err)
		}
		defer conn.Close(ctx)
		var one int
		if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
			t.Fatal(err)
		}
		cs := conn.PgConn().Conn().(*tls.Conn).ConnectionState()
		return cs.DidResume, tlsconf.Fingerprint(cs.PeerCertificates[0])
	}
	resumed()
	// Go's client stores a TLS 1.3 ticket once it reads it, which may be
	// after the first query: a few tries, bounded.
	did := false
	for i := 0; i < 5 && !did; i++ {
		did, _ = resumed()
	}
	if !did {
		t.Fatalf("no TLS resumption with a session cache before the rotation; the check below would prove nothing")
	}
	third := issue()
	env.srv.SetCert(third)
	if did, fp := resumed(); did || fp != tlsconf.Fingerprint(third.Leaf()) {
		t.Fatalf("after SetCert: resumed %v, presented %s; want a full handshake with the new certificate", did, fp)
	}
	second = third

	// A parameter change keeps the rotated certificate.
	env.srv.SetParams(env.srv.rt.Load().params)
	if fp, _ := presented(t); fp != tlsconf.Fingerprint(second.Leaf()) {
		t.Fatalf("after SetParams the gateway presented %s; want the rotated certificate", fp)
	}
}
