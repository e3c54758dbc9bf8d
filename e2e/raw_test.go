package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// rawConn is a hand-driven client connection for protocol edge cases.
type rawConn struct {
	t    *testing.T
	conn net.Conn
	fe   *pgproto3.Frontend
}

func dialRaw(t *testing.T, s *server) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", s.addr(), 5*time.Second)
	if err != nil {
		t.Fatalf("dial gateway: %v", err)
	}
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c
}

func (s *server) clientTLS(t *testing.T, maxVersion uint16, alpn ...string) *tls.Config {
	t.Helper()
	pem, err := os.ReadFile(s.caFile())
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &tls.Config{RootCAs: pool, ServerName: "localhost", MaxVersion: maxVersion, NextProtos: alpn}
}

var sslRequest = []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}

// dialTLS negotiates TLS with an SSLRequest and returns a raw client.
func dialTLS(t *testing.T, s *server) *rawConn {
	t.Helper()
	c := dialRaw(t, s)
	if _, err := c.Write(sslRequest); err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'S' {
		t.Fatalf("SSLRequest answer = %q, %v; want 'S'", b[0], err)
	}
	tc := tls.Client(c, s.clientTLS(t, 0))
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake: %v", err)
	}
	return &rawConn{t: t, conn: tc, fe: pgproto3.NewFrontend(tc, tc)}
}

func (r *rawConn) send(msgs ...pgproto3.FrontendMessage) {
	r.t.Helper()
	for _, m := range msgs {
		r.fe.Send(m)
	}
	if err := r.fe.Flush(); err != nil {
		r.t.Fatalf("send: %v", err)
	}
}

func (r *rawConn) sendRaw(b []byte) {
	r.t.Helper()
	if _, err := r.conn.Write(b); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

func (r *rawConn) receive() pgproto3.BackendMessage {
	r.t.Helper()
	m, err := r.fe.Receive()
	if err != nil {
		r.t.Fatalf("receive: %v", err)
	}
	return m
}

// expectError reads until an ErrorResponse and checks its SQLSTATE, then
// checks that the gateway closes the connection.
func (r *rawConn) expectError(code string) *pgproto3.ErrorResponse {
	r.t.Helper()
	for i := 0; i < 10; i++ {
		m := r.receive()
		if e, ok := m.(*pgproto3.ErrorResponse); ok {
			if e.Code != code {
				r.t.Fatalf("ErrorResponse code = %s (%s); want %s", e.Code, e.Message, code)
			}
			if _, err := r.fe.Receive(); err == nil {
				r.t.Fatalf("connection still open after FATAL %s", code)
			}
			return e
		}
	}
	r.t.Fatalf("no ErrorResponse %s", code)
	return nil
}

func startup(user string) *pgproto3.StartupMessage {
	return &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": user, "database": "postgres"}}
}

// saltFor starts a SCRAM exchange for user and returns the salt the gateway
// offers in server-first-message.
func saltFor(t *testing.T, s *server, user string) string {
	t.Helper()
	r := dialTLS(t, s)
	r.send(startup(user))
	sasl, ok := r.receive().(*pgproto3.AuthenticationSASL)
	if !ok {
		t.Fatalf("first answer is not AuthenticationSASL")
	}
	if !contains(sasl.AuthMechanisms, "SCRAM-SHA-256-PLUS") || !contains(sasl.AuthMechanisms, "SCRAM-SHA-256") {
		t.Fatalf("mechanisms over TLS = %v; want both SCRAM-SHA-256-PLUS and SCRAM-SHA-256", sasl.AuthMechanisms)
	}
	r.send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,,n=,r=abcdefghijklmnopqrstuvwx")})
	cont, ok := r.receive().(*pgproto3.AuthenticationSASLContinue)
	if !ok {
		t.Fatalf("no AuthenticationSASLContinue")
	}
	var salt, iters string
	for _, kv := range strings.Split(string(cont.Data), ",") {
		switch {
		case strings.HasPrefix(kv, "s="):
			salt = kv[2:]
		case strings.HasPrefix(kv, "i="):
			iters = kv[2:]
		}
	}
	if _, err := base64.StdEncoding.DecodeString(salt); err != nil || salt == "" {
		t.Fatalf("bad salt %q", salt)
	}
	if iters != "4096" {
		t.Fatalf("iterations = %q; want 4096", iters)
	}
	return salt
}

func contains(xs []string, x string) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

func be32(v uint32) []byte { b := make([]byte, 4); binary.BigEndian.PutUint32(b, v); return b }
