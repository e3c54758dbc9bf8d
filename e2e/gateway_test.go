package e2e

import (
	"context"
	"crypto/md5"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

const admin = "pgadmin"

func TestSSLModes(t *testing.T) {
	cases := []struct {
		name    string
		extra   string
		wantErr string // substring; empty means success
	}{
		{name: "disable", extra: "sslmode=disable", wantErr: "SSL connection is required"},
		{name: "allow", extra: "sslmode=allow"},
		{name: "prefer", extra: "sslmode=prefer"},
		{name: "require", extra: "sslmode=require"},
		{name: "verify-ca", extra: "sslmode=verify-ca"},
		{name: "verify-full", extra: "sslmode=verify-full"},
		{name: "verify-full, channel binding required", extra: "sslmode=verify-full channel_binding=require"},
		{name: "verify-full with the wrong host name", extra: "sslmode=verify-full host=wrong.example hostaddr=127.0.0.1",
			wantErr: "does not match host name"},
		{name: "verify-full without our CA", extra: "sslmode=verify-full sslrootcert=/etc/ssl/certs/ca-certificates.crt",
			wantErr: "certificate verify failed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := psql(t, shared.dsn("user="+admin+" "+tc.extra), adminPassword,
				"-c", "SELECT current_user")
			if tc.wantErr == "" {
				if err != nil || out != admin {
					t.Fatalf("psql %s: %v: %s", tc.extra, err, out)
				}
				return
			}
			if err == nil || !strings.Contains(out, tc.wantErr) {
				t.Fatalf("psql %s = %v, %q; want failure containing %q", tc.extra, err, out, tc.wantErr)
			}
		})
	}
}

func TestPlaintextGetsNoAuthRequest(t *testing.T) {
	c := dialRaw(t, shared)
	fe := pgproto3.NewFrontend(c, c)
	fe.Send(startup(admin))
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	m, err := fe.Receive()
	if err != nil {
		t.Fatal(err)
	}
	e, ok := m.(*pgproto3.ErrorResponse)
	if !ok {
		t.Fatalf("plaintext startup answered with %T; want ErrorResponse and no authentication request", m)
	}
	if e.Code != "28000" || !strings.Contains(e.Message, "no encryption") {
		t.Fatalf("ErrorResponse = %s %q; want 28000 mentioning no encryption", e.Code, e.Message)
	}
}

func TestPgxChannelBindingAndRequireAuth(t *testing.T) {
	for _, extra := range []string{
		"sslmode=verify-full channel_binding=require",
		"sslmode=verify-full require_auth=scram-sha-256",
		"sslmode=verify-full require_auth=scram-sha-256 channel_binding=require",
	} {
		t.Run(extra, func(t *testing.T) {
			conn, err := pgxConnect(t, shared.dsn("user="+admin+" password="+adminPassword+" "+extra))
			if err != nil {
				t.Fatalf("pgx connect (%s): %v", extra, err)
			}
			defer conn.Close(context.Background())
			var n int
			if err := conn.QueryRow(context.Background(), "SELECT 41 + 1").Scan(&n); err != nil || n != 42 {
				t.Fatalf("query = %d, %v", n, err)
			}
		})
	}
	// A client that demands a method the gateway does not use refuses it.
	_, err := pgxConnect(t, shared.dsn("user="+admin+" password="+adminPassword+" sslmode=require require_auth=md5"))
	if err == nil {
		t.Fatalf("require_auth=md5 connected; want refusal (gateway must only ask for SCRAM)")
	}
}

func TestDirectTLS(t *testing.T) {
	conn, err := pgxConnect(t, shared.dsn("user="+admin+" password="+adminPassword+" sslmode=verify-full sslnegotiation=direct"))
	if err != nil {
		t.Fatalf("direct TLS with ALPN: %v", err)
	}
	conn.Close(context.Background())

	// Direct TLS without ALPN "postgresql" is refused.
	c := dialRaw(t, shared)
	tc := tls.Client(c, shared.clientTLS(t, 0))
	err = tc.Handshake()
	if err == nil {
		_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
		fe := pgproto3.NewFrontend(tc, tc)
		fe.Send(startup(admin))
		_ = fe.Flush()
		if m, err := fe.Receive(); err == nil {
			t.Fatalf("direct TLS without ALPN answered %T; want the connection closed", m)
		}
	}
}

func TestWrongPassword(t *testing.T) {
	out, err := psql(t, shared.dsn("user="+admin+" sslmode=require"), "not-the-password", "-c", "SELECT 1")
	if err == nil || !strings.Contains(out, `password authentication failed for user "pgadmin"`) {
		t.Fatalf("wrong password: %v %q", err, out)
	}
	_, err = pgxConnect(t, shared.dsn("user="+admin+" password=nope sslmode=require"))
	if got := sqlState(err); got != "28P01" {
		t.Fatalf("wrong password SQLSTATE = %q (%v); want 28P01", got, err)
	}
}

func TestRefusedRolesLookLikeWrongPassword(t *testing.T) {
	// Give the reserved and refused roles real passwords so that only the
	// gateway's policy can be what refuses them.
	shared.superSQL(t, `ALTER ROLE postgres PASSWORD 'Reserved-Pass-1'`)
	shared.superSQL(t, `ALTER ROLE pgshield_service PASSWORD 'Reserved-Pass-1'`)
	shared.superSQL(t, `DROP ROLE IF EXISTS e2e_nologin, e2e_expired, e2e_md5, e2e_super`)
	shared.superSQL(t, `CREATE ROLE e2e_nologin NOLOGIN PASSWORD 'Reserved-Pass-1'`)
	shared.superSQL(t, `CREATE ROLE e2e_expired LOGIN PASSWORD 'Reserved-Pass-1' VALID UNTIL '2001-01-01'`)
	shared.superSQL(t, fmt.Sprintf(`CREATE ROLE e2e_md5 LOGIN PASSWORD 'md5%x'`, md5.Sum([]byte("Reserved-Pass-1e2e_md5"))))
	shared.superSQL(t, `CREATE ROLE e2e_super LOGIN SUPERUSER PASSWORD 'Reserved-Pass-1'`)
	time.Sleep(2500 * time.Millisecond) // role cache TTL
	for _, user := range []string{"postgres", "pgshield_service", "e2e_nologin", "e2e_expired", "e2e_md5", "e2e_super", "no_such_role"} {
		t.Run(user, func(t *testing.T) {
			_, err := pgxConnect(t, shared.dsn("user="+user+" password=Reserved-Pass-1 sslmode=require"))
			if got := sqlState(err); got != "28P01" {
				t.Fatalf("login as %s: SQLSTATE %q (%v); want 28P01", user, got, err)
			}
			if !strings.Contains(err.Error(), `password authentication failed for user "`+user+`"`) {
				t.Fatalf("login as %s: message %v; want the wrong-password message", user, err)
			}
		})
	}
}

// VALID UNTIL 'infinity' never expires; '-infinity' always has.
func TestValidUntilInfinity(t *testing.T) {
	shared.superSQL(t, `DROP ROLE IF EXISTS e2e_forever, e2e_never`)
	shared.superSQL(t, `CREATE ROLE e2e_forever LOGIN PASSWORD 'Forever-Pass-1' VALID UNTIL 'infinity'`)
	shared.superSQL(t, `CREATE ROLE e2e_never LOGIN PASSWORD 'Forever-Pass-1' VALID UNTIL '-infinity'`)
	defer shared.superSQL(t, `DROP ROLE IF EXISTS e2e_forever, e2e_never`)
	conn, err := pgxConnect(t, shared.dsn("user=e2e_forever password=Forever-Pass-1 sslmode=require"))
	if err != nil {
		t.Fatalf("login of a role VALID UNTIL 'infinity': %v", err)
	}
	conn.Close(context.Background())
	_, err = pgxConnect(t, shared.dsn("user=e2e_never password=Forever-Pass-1 sslmode=require"))
	if got := sqlState(err); got != "28P01" {
		t.Fatalf("login of a role VALID UNTIL '-infinity': SQLSTATE %q (%v); want 28P01", got, err)
	}
}

func TestUnknownUserSaltIsStable(t *testing.T) {
	a1 := saltFor(t, shared, "nobody_here")
	a2 := saltFor(t, shared, "nobody_here")
	b := saltFor(t, shared, "someone_else")
	if a1 != a2 {
		t.Fatalf("salt for an unknown user changed between attempts: %q vs %q", a1, a2)
	}
	if a1 == b {
		t.Fatalf("two unknown users got the same salt %q", a1)
	}
	// A real role's salt comes from its verifier, and is stable too.
	if r1, r2 := saltFor(t, shared, admin), saltFor(t, shared, admin); r1 != r2 {
		t.Fatalf("admin salt changed: %q vs %q", r1, r2)
	}
}

func TestBufferStuffingAfterSSLRequestCloses(t *testing.T) {
	c := dialRaw(t, shared)
	// SSLRequest and a plaintext StartupMessage in one write: the second
	// part would be taken as if it had come over TLS (CVE-2021-23214).
	sm, _ := startup(admin).Encode(nil)
	if _, err := c.Write(append(append([]byte{}, sslRequest...), sm...)); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	if err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("read: %v", err)
	}
	if len(b) != 0 {
		t.Fatalf("gateway answered %q to a stuffed SSLRequest; want the connection closed with no answer", b)
	}
}

func TestGSSEncRequestDeclined(t *testing.T) {
	c := dialRaw(t, shared)
	if _, err := c.Write([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30}); err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'N' {
		t.Fatalf("GSSENCRequest answer = %q, %v; want 'N'", b[0], err)
	}
	// libpq then falls back: psql with gssencmode=prefer still connects.
	if out, err := psql(t, shared.dsn("user="+admin+" sslmode=require gssencmode=prefer"), adminPassword, "-c", "SELECT 1"); err != nil || out != "1" {
		t.Fatalf("psql after GSS fallback: %v %q", err, out)
	}
}

func TestStartupPacketChecks(t *testing.T) {
	t.Run("duplicate key", func(t *testing.T) {
		r := dialTLS(t, shared)
		body := append(be32(196608), []byte("user\x00a\x00user\x00b\x00\x00")...)
		r.sendRaw(append(be32(uint32(len(body)+4)), body...))
		r.expectError("08P01")
	})
	t.Run("too long", func(t *testing.T) {
		r := dialTLS(t, shared)
		r.sendRaw(be32(10001))
		r.expectError("08P01")
	})
	t.Run("claims 4GiB", func(t *testing.T) {
		r := dialTLS(t, shared)
		r.sendRaw(be32(0xFFFFFFFF))
		r.expectError("08P01")
	})
	t.Run("replication", func(t *testing.T) {
		r := dialTLS(t, shared)
		sm := startup(admin)
		sm.Parameters["replication"] = "true"
		r.send(sm)
		r.expectError("28000")
	})
	t.Run("no user", func(t *testing.T) {
		r := dialTLS(t, shared)
		r.send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"database": "postgres"}})
		r.expectError("28000")
	})
	t.Run("protocol 3.2 negotiated down", func(t *testing.T) {
		r := dialTLS(t, shared)
		r.send(&pgproto3.StartupMessage{ProtocolVersion: 3<<16 | 2,
			Parameters: map[string]string{"user": admin, "database": "postgres", "_pq_.future": "x"}})
		npv, ok := r.receive().(*pgproto3.NegotiateProtocolVersion)
		if !ok || npv.NewestMinorProtocol != 0 || len(npv.UnrecognizedOptions) != 1 || npv.UnrecognizedOptions[0] != "_pq_.future" {
			t.Fatalf("want NegotiateProtocolVersion 3.0 with _pq_.future, got %+v", npv)
		}
		if _, ok := r.receive().(*pgproto3.AuthenticationSASL); !ok {
			t.Fatalf("after negotiation, want AuthenticationSASL")
		}
	})
	t.Run("query before authentication", func(t *testing.T) {
		r := dialTLS(t, shared)
		r.send(startup(admin))
		if _, ok := r.receive().(*pgproto3.AuthenticationSASL); !ok {
			t.Fatal("want AuthenticationSASL")
		}
		r.send(&pgproto3.Query{String: "SELECT 1"})
		r.expectError("08P01")
	})
	t.Run("second startup message", func(t *testing.T) {
		r := dialTLS(t, shared)
		r.send(startup(admin))
		r.receive()
		r.send(startup(admin))
		r.expectError("08P01")
	})
	t.Run("SASL length 0xFFFFFFFF", func(t *testing.T) {
		r := dialTLS(t, shared)
		r.send(startup(admin))
		r.receive()
		body := append([]byte("SCRAM-SHA-256\x00"), be32(0xFFFFFFFF)...)
		r.sendRaw(append(append([]byte{'p'}, be32(uint32(len(body)+4))...), body...))
		r.expectError("08P01")
	})
	t.Run("SASL message claims 1GiB", func(t *testing.T) {
		r := dialTLS(t, shared)
		r.send(startup(admin))
		r.receive()
		r.sendRaw(append([]byte{'p'}, be32(1<<30)...))
		r.expectError("08P01")
	})
	t.Run("bad base64 in client-final", func(t *testing.T) {
		r := dialTLS(t, shared)
		r.send(startup(admin))
		r.receive()
		r.send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,,n=,r=abcdefghijklmnopqrstuvwx")})
		cont := r.receive().(*pgproto3.AuthenticationSASLContinue)
		nonce := strings.SplitN(strings.TrimPrefix(string(cont.Data), "r="), ",", 2)[0]
		r.send(&pgproto3.SASLResponse{Data: []byte("c=biws,r=" + nonce + ",p=!!!notbase64")})
		r.expectError("08P01")
	})
	t.Run("wrong nonce", func(t *testing.T) {
		r := dialTLS(t, shared)
		r.send(startup(admin))
		r.receive()
		r.send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,,n=,r=abcdefghijklmnopqrstuvwx")})
		r.receive()
		r.send(&pgproto3.SASLResponse{Data: []byte("c=biws,r=abcdefghijklmnopqrstuvwxWRONG,p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")})
		r.expectError("08P01")
	})
}

func TestTLSVersionParameters(t *testing.T) {
	tls12 := shared.dsn("user=" + admin + " sslmode=require ssl_max_protocol_version=TLSv1.2")
	if out, err := psql(t, tls12, adminPassword, "-c", "SELECT 1"); err != nil {
		t.Fatalf("TLS 1.2 client with defaults: %v %s", err, out)
	}
	// An open session must survive the change.
	conn, err := pgxConnect(t, shared.dsn("user="+admin+" password="+adminPassword+" sslmode=require"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if out, err := shared.cli("parameter", "set", "ssl_min_protocol_version", "TLSv1.3"); err != nil {
		t.Fatalf("parameter set: %v %s", err, out)
	}
	t.Cleanup(func() { _, _ = shared.cli("parameter", "set", "ssl_min_protocol_version", "TLSv1.2") })
	out, err := psql(t, tls12, adminPassword, "-c", "SELECT 1")
	if err == nil || !strings.Contains(out, "protocol version") {
		t.Fatalf("TLS 1.2-only client against min TLSv1.3 = %v %q; want a protocol version failure", err, out)
	}
	if out, err := psql(t, shared.dsn("user="+admin+" sslmode=require"), adminPassword, "-c", "SELECT 1"); err != nil {
		t.Fatalf("TLS 1.3 client against min TLSv1.3: %v %s", err, out)
	}
	var one int
	if err := conn.QueryRow(context.Background(), "SELECT 1").Scan(&one); err != nil {
		t.Fatalf("open session dropped by a parameter change: %v", err)
	}
	// min > max is refused, naming the parameter; nothing changes.
	out, err = shared.cli("parameter", "set", "ssl_max_protocol_version", "TLSv1.2")
	if err == nil || !strings.Contains(out, "ssl_max_protocol_version") {
		t.Fatalf("max below min accepted: %v %q", err, out)
	}
	for _, bad := range [][]string{{"ssl_min_protocol_version", "TLSv1.1"}, {"ssl_min_protocol_version", "SSLv3"}, {"require_secure_transport", "maybe"}, {"accepted_password_auth_method", "md5"}} {
		out, err = shared.cli("parameter", "set", bad[0], bad[1])
		if err == nil || !strings.Contains(out, bad[0]) {
			t.Fatalf("parameter set %s %s = %v %q; want an error naming it", bad[0], bad[1], err, out)
		}
	}
	if out, err := shared.cli("parameter", "set", "ssl_min_protocol_version", "TLSv1.2"); err != nil {
		t.Fatalf("parameter set back: %v %s", err, out)
	}
	if out, err := psql(t, tls12, adminPassword, "-c", "SELECT 1"); err != nil {
		t.Fatalf("TLS 1.2 client after lowering the minimum again: %v %s", err, out)
	}
	// The Go TLS client cannot even offer CBC on 1.2 against us.
	c := dialRaw(t, shared)
	_, _ = c.Write(sslRequest)
	var b [1]byte
	_, _ = io.ReadFull(c, b[:])
	cfg := shared.clientTLS(t, tls.VersionTLS12)
	cfg.CipherSuites = []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_RSA_WITH_AES_128_GCM_SHA256}
	if err := tls.Client(c, cfg).Handshake(); err == nil {
		t.Fatalf("TLS 1.2 handshake with only CBC/static-RSA suites succeeded; want refusal")
	}
}

func TestRequireSecureTransportOff(t *testing.T) {
	if out, err := shared.cli("parameter", "set", "require_secure_transport", "off"); err != nil {
		t.Fatalf("parameter set: %v %s", err, out)
	}
	t.Cleanup(func() { _, _ = shared.cli("parameter", "set", "require_secure_transport", "on") })
	out, err := psql(t, shared.dsn("user="+admin+" sslmode=disable"), adminPassword, "-c", "SHOW server_version_num")
	if err != nil || !strings.HasPrefix(out, "15") {
		t.Fatalf("plaintext with require_secure_transport=off: %v %q", err, out)
	}
	// Plaintext is offered SCRAM only, never -PLUS.
	c := dialRaw(t, shared)
	fe := pgproto3.NewFrontend(c, c)
	fe.Send(startup(admin))
	_ = fe.Flush()
	m, err := fe.Receive()
	if err != nil {
		t.Fatal(err)
	}
	sasl, ok := m.(*pgproto3.AuthenticationSASL)
	if !ok || contains(sasl.AuthMechanisms, "SCRAM-SHA-256-PLUS") || !contains(sasl.AuthMechanisms, "SCRAM-SHA-256") {
		t.Fatalf("plaintext auth request = %#v; want SCRAM-SHA-256 only", m)
	}
	// channel_binding=require cannot be met without TLS.
	if _, err := pgxConnect(t, shared.dsn("user="+admin+" password="+adminPassword+" sslmode=disable channel_binding=require")); err == nil {
		t.Fatalf("channel_binding=require over plaintext connected")
	}
	if out, err := shared.cli("parameter", "set", "require_secure_transport", "on"); err != nil {
		t.Fatalf("parameter set: %v %s", err, out)
	}
	if out, err := psql(t, shared.dsn("user="+admin+" sslmode=disable"), adminPassword, "-c", "SELECT 1"); err == nil {
		t.Fatalf("plaintext accepted after require_secure_transport=on: %s", out)
	}
}

func TestCancelRequest(t *testing.T) {
	conn, err := pgxConnect(t, shared.dsn("user="+admin+" password="+adminPassword+" sslmode=require"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	// The client's key is pgshield's, not the backend's.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		time.Sleep(500 * time.Millisecond)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = conn.PgConn().CancelRequest(ctx)
	}()
	start := time.Now()
	_, err = conn.Exec(context.Background(), "SELECT pg_sleep(30)")
	wg.Wait()
	if got := sqlState(err); got != "57014" {
		t.Fatalf("cancelled query: SQLSTATE %q (%v); want 57014", got, err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("cancel took %s", d)
	}
}

func TestBackendErrorsReachClient(t *testing.T) {
	_, err := pgxConnect(t, "host=localhost port="+portOf(shared)+" dbname=no_such_db user="+admin+" password="+adminPassword+" sslmode=require")
	if got := sqlState(err); got != "3D000" {
		t.Fatalf("connect to a missing database: SQLSTATE %q (%v); want 3D000", got, err)
	}
}

func portOf(s *server) string { _, p, _ := net.SplitHostPort(s.addr()); return p }
