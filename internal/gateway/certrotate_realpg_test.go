package gateway

import (
	"context"
	"crypto/tls"
	"os"
	"path/filepath"
	"testing"
	"time"

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

	// A parameter change keeps the rotated certificate.
	env.srv.SetParams(env.srv.rt.Load().params)
	if fp, _ := presented(t); fp != tlsconf.Fingerprint(second.Leaf()) {
		t.Fatalf("after SetParams the gateway presented %s; want the rotated certificate", fp)
	}
}
