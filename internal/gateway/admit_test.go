package gateway

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	goruntime "runtime" // the package has its own type named runtime
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/tlsconf"
	"github.com/pgshield/pgshield/internal/wire"
)

// checkGoroutines fails the test if goroutines it started are still running
// 2 s after it ends. Call it first so that its cleanup runs last.
func checkGoroutines(t *testing.T) {
	t.Helper()
	base := goruntime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(2 * time.Second)
		for goruntime.NumGoroutine() > base {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<16)
				buf = buf[:goruntime.Stack(buf, true)]
				t.Errorf("%d goroutines still running, %d before the test:\n%s", goruntime.NumGoroutine(), base, buf)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

type testPKI struct {
	cert  *tlsconf.Cert
	roots *x509.CertPool
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	dir := t.TempDir()
	p := func(n string) string { return filepath.Join(dir, n) }
	if err := tlsconf.GenerateCA(p("ca.crt"), p("ca.key"), "gateway test CA"); err != nil {
		t.Fatal(err)
	}
	if err := tlsconf.GenerateServer(p("ca.crt"), p("ca.key"), p("server.crt"), p("server.key"),
		[]string{"localhost", "127.0.0.1"}); err != nil {
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
	return testPKI{cert: cert, roots: roots}
}

type admitResult struct {
	a   admitted
	err error
}

// startAdmit listens on loopback, dials it, and runs admit on the accepted
// connection. The caller owns the returned client connection; the server side
// is closed once the test has looked at the result.
func startAdmit(t *testing.T, tlsCfg *tls.Config) (net.Conn, <-chan admitResult) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	results := make(chan admitResult, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			results <- admitResult{err: err}
			return
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		a, err := admit(c, tlsCfg)
		results <- admitResult{a, err}
	}()
	cli, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_ = cli.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { cli.Close() })
	return cli, results
}

func wait(t *testing.T, results <-chan admitResult) admitResult {
	t.Helper()
	select {
	case r := <-results:
		if r.a.conn != nil {
			t.Cleanup(func() { r.a.conn.Close() })
		}
		return r
	case <-time.After(15 * time.Second):
		t.Fatal("admit did not return")
	}
	return admitResult{}
}

func sslRequest() []byte { return binary.BigEndian.AppendUint32([]byte{0, 0, 0, 8}, 80877103) }
func gssRequest() []byte { return binary.BigEndian.AppendUint32([]byte{0, 0, 0, 8}, 80877104) }

func startupMessage(t *testing.T, params map[string]string) []byte {
	t.Helper()
	b, err := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: params}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func readByte(t *testing.T, c net.Conn) byte {
	t.Helper()
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		t.Fatalf("reading the server's answer: %v", err)
	}
	return b[0]
}

func write(t *testing.T, c io.Writer, b []byte) {
	t.Helper()
	if _, err := c.Write(b); err != nil {
		t.Fatalf("client write: %v", err)
	}
}

// expectNoAnswer checks that the server closes without writing anything.
func expectNoAnswer(t *testing.T, c net.Conn) {
	t.Helper()
	var b [16]byte
	n, err := c.Read(b[:])
	if n != 0 || err == nil {
		t.Errorf("client read %q, %v; want the connection closed without an answer", b[:n], err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Errorf("client read timed out; want the server to close the connection")
	}
}

func TestAdmitPlaintextStartup(t *testing.T) {
	checkGoroutines(t)
	p := newTestPKI(t)
	cli, res := startAdmit(t, tlsconf.ServerConfig(p.cert, tls.VersionTLS12, 0))
	write(t, cli, startupMessage(t, map[string]string{"user": "alice", "database": "shop"}))
	r := wait(t, res)
	if r.err != nil {
		t.Fatalf("admit() error = %v; want nil", r.err)
	}
	if r.a.tls != nil || r.a.direct || r.a.startup == nil {
		t.Fatalf("admit() = %+v; want a plaintext startup", r.a)
	}
	if r.a.startup.Kind != wire.KindStartup || r.a.startup.User() != "alice" || r.a.startup.Database() != "shop" {
		t.Errorf("admit() startup = %+v; want alice/shop", r.a.startup)
	}
	if _, ok := r.a.conn.(*net.TCPConn); !ok {
		t.Errorf("admit() conn = %T; want the plain TCP connection", r.a.conn)
	}
}

func TestAdmitSSLRequestThenTLS(t *testing.T) {
	checkGoroutines(t)
	p := newTestPKI(t)
	for _, tt := range []struct {
		name       string
		alpn       []string
		maxVersion uint16
	}{
		{name: "libpq 16 style, TLS 1.3"},
		{name: "TLS 1.2", maxVersion: tls.VersionTLS12},
		{name: "libpq 17 style with ALPN", alpn: []string{"postgresql"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cli, res := startAdmit(t, tlsconf.ServerConfig(p.cert, tls.VersionTLS12, 0))
			write(t, cli, sslRequest())
			if b := readByte(t, cli); b != 'S' {
				t.Fatalf("answer to SSLRequest = %q; want 'S'", b)
			}
			tc := tls.Client(cli, &tls.Config{RootCAs: p.roots, ServerName: "localhost", NextProtos: tt.alpn,
				MaxVersion: tt.maxVersion})
			if err := tc.Handshake(); err != nil {
				t.Fatalf("client TLS handshake: %v", err)
			}
			// The startup packet in two pieces: admit must wait for all of it.
			sm := startupMessage(t, map[string]string{"user": "bob"})
			write(t, tc, sm[:5])
			time.Sleep(20 * time.Millisecond)
			write(t, tc, sm[5:])
			r := wait(t, res)
			if r.err != nil {
				t.Fatalf("admit() error = %v; want nil", r.err)
			}
			if r.a.tls == nil || r.a.direct {
				t.Fatalf("admit() tls = %v direct = %v; want a TLS state from SSLRequest negotiation", r.a.tls, r.a.direct)
			}
			if want := tc.ConnectionState().Version; r.a.tls.Version != want || !r.a.tls.HandshakeComplete {
				t.Errorf("admit() TLS version %s; want %s", tls.VersionName(r.a.tls.Version), tls.VersionName(want))
			}
			if r.a.startup.User() != "bob" {
				t.Errorf("admit() user = %q; want bob", r.a.startup.User())
			}
			// What the gateway writes on a.conn must reach the client over TLS.
			if _, err := r.a.conn.Write([]byte("Z")); err != nil {
				t.Fatal(err)
			}
			if b := readByte(t, tc); b != 'Z' {
				t.Errorf("client read %q over TLS; want 'Z'", b)
			}
			// tls.Conn.Close would wait for the client to read a close_notify.
			_ = r.a.conn.(*tls.Conn).NetConn().Close()
		})
	}
}

// TestAdmitSSLRequestWithBufferedData is CVE-2021-23214: bytes sent right
// behind the SSLRequest, before the client could have seen 'S', must not be
// taken as if they had arrived over TLS.
func TestAdmitSSLRequestWithBufferedData(t *testing.T) {
	checkGoroutines(t)
	p := newTestPKI(t)
	for _, tt := range []struct {
		name  string
		extra []byte
	}{
		{name: "startup packet", extra: startupMessage(t, map[string]string{"user": "mallory"})},
		{name: "one byte", extra: []byte{0x16}},
		{name: "a query", extra: []byte("Q\x00\x00\x00\x0dselect 1;\x00")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cli, res := startAdmit(t, tlsconf.ServerConfig(p.cert, tls.VersionTLS12, 0))
			write(t, cli, append(sslRequest(), tt.extra...)) // one write, one segment
			r := wait(t, res)
			if !errors.Is(r.err, errBufferedAfterSSLRequest) {
				t.Fatalf("admit() error = %v; want errBufferedAfterSSLRequest", r.err)
			}
			if r.a.tls != nil || r.a.startup != nil {
				t.Errorf("admit() = %+v; want no TLS state and no startup", r.a)
			}
			r.a.conn.Close() // what the server does
			expectNoAnswer(t, cli)
		})
	}
}

func TestAdmitGSSENCRequest(t *testing.T) {
	checkGoroutines(t)
	p := newTestPKI(t)
	t.Run("then plaintext startup", func(t *testing.T) {
		cli, res := startAdmit(t, tlsconf.ServerConfig(p.cert, tls.VersionTLS12, 0))
		write(t, cli, gssRequest())
		if b := readByte(t, cli); b != 'N' {
			t.Fatalf("answer to GSSENCRequest = %q; want 'N'", b)
		}
		write(t, cli, startupMessage(t, map[string]string{"user": "carol"}))
		r := wait(t, res)
		if r.err != nil || r.a.tls != nil || r.a.startup == nil || r.a.startup.User() != "carol" {
			t.Fatalf("admit() = %+v, %v; want a plaintext startup for carol", r.a, r.err)
		}
	})
	t.Run("then SSLRequest and TLS", func(t *testing.T) {
		cli, res := startAdmit(t, tlsconf.ServerConfig(p.cert, tls.VersionTLS12, 0))
		write(t, cli, gssRequest())
		if b := readByte(t, cli); b != 'N' {
			t.Fatalf("answer to GSSENCRequest = %q; want 'N'", b)
		}
		write(t, cli, sslRequest())
		if b := readByte(t, cli); b != 'S' {
			t.Fatalf("answer to SSLRequest = %q; want 'S'", b)
		}
		tc := tls.Client(cli, &tls.Config{RootCAs: p.roots, ServerName: "localhost"})
		if err := tc.Handshake(); err != nil {
			t.Fatalf("client TLS handshake: %v", err)
		}
		write(t, tc, startupMessage(t, map[string]string{"user": "dave"}))
		r := wait(t, res)
		if r.err != nil || r.a.tls == nil || r.a.startup.User() != "dave" {
			t.Fatalf("admit() = %+v, %v; want a TLS startup for dave", r.a, r.err)
		}
		_ = r.a.conn.(*tls.Conn).NetConn().Close()
	})
	t.Run("three negotiation requests", func(t *testing.T) {
		cli, res := startAdmit(t, tlsconf.ServerConfig(p.cert, tls.VersionTLS12, 0))
		for i := range 3 {
			write(t, cli, gssRequest())
			if b := readByte(t, cli); b != 'N' {
				t.Fatalf("answer to GSSENCRequest #%d = %q; want 'N'", i+1, b)
			}
		}
		r := wait(t, res)
		if !errors.Is(r.err, wire.ErrProtocolError) || !strings.Contains(r.err.Error(), "too many negotiation requests") {
			t.Fatalf("admit() error = %v; want too many negotiation requests", r.err)
		}
	})
}

func TestAdmitDirectTLS(t *testing.T) {
	checkGoroutines(t)
	p := newTestPKI(t)
	for _, tt := range []struct {
		name       string
		alpn       []string
		maxVersion uint16
		wantErr    string // substring; "" means admitted
	}{
		{name: "ALPN postgresql", alpn: []string{"postgresql"}},
		{name: "ALPN postgresql over TLS 1.2", alpn: []string{"postgresql"}, maxVersion: tls.VersionTLS12},
		{name: "ALPN postgresql among others", alpn: []string{"h2", "postgresql"}},
		{name: "no ALPN", wantErr: `without ALPN "postgresql"`},
		{name: "no ALPN over TLS 1.2", maxVersion: tls.VersionTLS12, wantErr: `without ALPN "postgresql"`},
		{name: "ALPN h2 only", alpn: []string{"h2"}, wantErr: "direct TLS handshake"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cli, res := startAdmit(t, tlsconf.ServerConfig(p.cert, tls.VersionTLS12, 0))
			tc := tls.Client(cli, &tls.Config{RootCAs: p.roots, ServerName: "localhost", NextProtos: tt.alpn,
				MaxVersion: tt.maxVersion})
			hsErr := tc.Handshake()
			if tt.wantErr == "" {
				if hsErr != nil {
					t.Fatalf("client TLS handshake: %v", hsErr)
				}
				write(t, tc, startupMessage(t, map[string]string{"user": "erin", "database": "x"}))
			}
			r := wait(t, res)
			if tt.wantErr != "" {
				if r.err == nil || !strings.Contains(r.err.Error(), tt.wantErr) {
					t.Fatalf("admit() error = %v; want one containing %q", r.err, tt.wantErr)
				}
				if r.a.startup != nil || r.a.tls != nil {
					t.Errorf("admit() = %+v; want neither a startup nor a TLS state", r.a)
				}
				_ = r.a.conn.(*tls.Conn).NetConn().Close()
				if hsErr == nil {
					// The handshake completed; the server then hung up without reading anything.
					_ = tc.SetReadDeadline(time.Now().Add(5 * time.Second))
					if n, err := tc.Read(make([]byte, 1)); n != 0 || err == nil {
						t.Errorf("client read %d bytes, %v; want the connection closed", n, err)
					}
				}
				return
			}
			if r.err != nil {
				t.Fatalf("admit() error = %v; want nil", r.err)
			}
			if !r.a.direct || r.a.tls == nil || r.a.tls.NegotiatedProtocol != "postgresql" {
				t.Fatalf("admit() = direct %v tls %+v; want direct TLS with ALPN postgresql", r.a.direct, r.a.tls)
			}
			if r.a.startup.User() != "erin" || r.a.startup.Database() != "x" {
				t.Errorf("admit() startup = %+v; want erin/x", r.a.startup)
			}
			_ = r.a.conn.(*tls.Conn).NetConn().Close()
		})
	}
}

func TestAdmitCancelRequest(t *testing.T) {
	checkGoroutines(t)
	p := newTestPKI(t)
	cli, res := startAdmit(t, tlsconf.ServerConfig(p.cert, tls.VersionTLS12, 0))
	b, err := (&pgproto3.CancelRequest{ProcessID: 4242, SecretKey: []byte{0xde, 0xad, 0xbe, 0xef}}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	write(t, cli, b)
	r := wait(t, res)
	if r.err != nil {
		t.Fatalf("admit() error = %v; want nil", r.err)
	}
	s := r.a.startup
	if s == nil || s.Kind != wire.KindCancel || s.CancelPID != 4242 || s.CancelKey != 0xdeadbeef {
		t.Fatalf("admit() startup = %+v; want CancelRequest 4242/0xdeadbeef", s)
	}
}

func TestAdmitRefusals(t *testing.T) {
	checkGoroutines(t)
	p := newTestPKI(t)
	tests := []struct {
		name string
		// client talks to the server; it may return early.
		client  func(t *testing.T, c net.Conn)
		wantErr func(err error) bool
		desc    string
	}{
		{name: "client hangs up at once", client: func(t *testing.T, c net.Conn) { c.Close() },
			wantErr: func(err error) bool { return errors.Is(err, io.EOF) }, desc: "io.EOF"},
		{name: "huge length word", client: func(t *testing.T, c net.Conn) {
			write(t, c, []byte{0xff, 0xff, 0xff, 0xff, 0, 3, 0, 0})
		}, wantErr: func(err error) bool { return errors.Is(err, wire.ErrProtocolError) }, desc: "ErrProtocolError"},
		{name: "length below 8", client: func(t *testing.T, c net.Conn) {
			write(t, c, []byte{0, 0, 0, 4})
		}, wantErr: func(err error) bool { return errors.Is(err, wire.ErrProtocolError) }, desc: "ErrProtocolError"},
		{name: "protocol 2", client: func(t *testing.T, c net.Conn) {
			write(t, c, append([]byte{0, 0, 0, 19, 0, 2, 0, 0}, "user\x00alice\x00\x00"...))
		}, wantErr: func(err error) bool {
			var ve *wire.UnsupportedVersionError
			return errors.As(err, &ve)
		}, desc: "UnsupportedVersionError"},
		{name: "no user", client: func(t *testing.T, c net.Conn) {
			write(t, c, startupMessage(t, map[string]string{"database": "x"}))
		}, wantErr: func(err error) bool {
			ce, ok := clienterr.As(err)
			return ok && ce.Code == "28000"
		}, desc: "a clienterr.Error with code 28000"},
		{name: "plaintext after 'S'", client: func(t *testing.T, c net.Conn) {
			write(t, c, sslRequest())
			if b := readByte(t, c); b != 'S' {
				t.Errorf("answer = %q; want 'S'", b)
			}
			write(t, c, startupMessage(t, map[string]string{"user": "alice"}))
		}, wantErr: func(err error) bool { return err != nil && strings.Contains(err.Error(), "TLS handshake") },
			desc: "a TLS handshake error"},
		{name: "SSLRequest inside TLS", client: func(t *testing.T, c net.Conn) {
			write(t, c, sslRequest())
			readByte(t, c)
			tc := tls.Client(c, &tls.Config{RootCAs: p.roots, ServerName: "localhost"})
			if err := tc.Handshake(); err != nil {
				t.Errorf("client handshake: %v", err)
				return
			}
			write(t, tc, sslRequest())
		}, wantErr: func(err error) bool {
			return errors.Is(err, wire.ErrProtocolError) && strings.Contains(err.Error(), "inside an encrypted connection")
		}, desc: "encryption requested inside an encrypted connection"},
		{name: "GSSENCRequest inside direct TLS", client: func(t *testing.T, c net.Conn) {
			tc := tls.Client(c, &tls.Config{RootCAs: p.roots, ServerName: "localhost", NextProtos: []string{"postgresql"}})
			if err := tc.Handshake(); err != nil {
				t.Errorf("client handshake: %v", err)
				return
			}
			write(t, tc, gssRequest())
		}, wantErr: func(err error) bool {
			return errors.Is(err, wire.ErrProtocolError) && strings.Contains(err.Error(), "inside an encrypted connection")
		}, desc: "encryption requested inside an encrypted connection"},
		{name: "TLS 1.2 CBC-only client after SSLRequest", client: func(t *testing.T, c net.Conn) {
			write(t, c, sslRequest())
			readByte(t, c)
			tc := tls.Client(c, &tls.Config{RootCAs: p.roots, ServerName: "localhost", MaxVersion: tls.VersionTLS12,
				CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA}})
			if err := tc.Handshake(); err == nil {
				t.Errorf("client handshake with only CBC suites succeeded")
			}
		}, wantErr: func(err error) bool { return err != nil && strings.Contains(err.Error(), "TLS handshake") },
			desc: "a TLS handshake error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cli, res := startAdmit(t, tlsconf.ServerConfig(p.cert, tls.VersionTLS12, 0))
			tt.client(t, cli)
			r := wait(t, res)
			if !tt.wantErr(r.err) {
				t.Fatalf("admit() error = %v; want %s", r.err, tt.desc)
			}
			if r.a.conn == nil {
				t.Errorf("admit() returned no connection to close")
			}
			if tc, ok := r.a.conn.(*tls.Conn); ok {
				_ = tc.NetConn().Close()
			}
		})
	}
}

func TestPrefixConn(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go func() {
		_, _ = b.Write([]byte("cdef"))
		b.Close()
	}()
	pc := &prefixConn{Conn: a, prefix: []byte("ab")}
	got, err := io.ReadAll(pc)
	if err != nil || !bytes.Equal(got, []byte("abcdef")) {
		t.Errorf("prefixConn read %q, %v; want \"abcdef\"", got, err)
	}
	pc = &prefixConn{Conn: a, prefix: []byte("xyz")}
	var one [1]byte
	for _, want := range "xyz" {
		if n, err := pc.Read(one[:]); n != 1 || err != nil || rune(one[0]) != want {
			t.Fatalf("prefixConn.Read = %q, %v; want %q", one[:n], err, want)
		}
	}
}

func TestPendingInput(t *testing.T) {
	checkGoroutines(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cli, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	srv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if pendingInput(srv) {
		t.Errorf("pendingInput() = true before the client wrote anything")
	}
	write(t, cli, []byte("xy"))
	deadline := time.Now().Add(2 * time.Second)
	for !pendingInput(srv) {
		if time.Now().After(deadline) {
			t.Fatal("pendingInput() = false after the client wrote 2 bytes")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Peeking must not consume.
	buf := make([]byte, 2)
	_ = srv.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.ReadFull(srv, buf); err != nil || string(buf) != "xy" {
		t.Errorf("after pendingInput the server read %q, %v; want \"xy\"", buf, err)
	}
	if pendingInput(srv) {
		t.Errorf("pendingInput() = true after everything was read")
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if pendingInput(a) {
		t.Errorf("pendingInput(net.Pipe) = true; want false for a conn without a file descriptor")
	}
}
