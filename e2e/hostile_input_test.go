package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Hostile input at the door (issue #17, item 6): each case asserts the exact
// reply of the real gateway, over TLS (after an SSLRequest) and, where the
// reply comes before TLS, in plaintext. The server is a server of its own:
// the failures here count against 127.0.0.1 in the threat protection.

// reply is what a client got back: a message or nothing, then whether the
// connection closed.
type reply struct {
	msg    pgproto3.BackendMessage
	closed bool
}

// readReply reads the first backend message (if any) and then checks that
// the gateway closes the connection, within the connection's deadline.
func readReply(t *testing.T, c net.Conn) reply {
	t.Helper()
	fe := pgproto3.NewFrontend(c, c)
	var r reply
	m, err := fe.Receive()
	if err != nil {
		if !isClosed(err) {
			t.Fatalf("reading the reply: %v; want a message or a close", err)
		}
		r.closed = true
		return r
	}
	r.msg = m
	if _, err := fe.Receive(); err != nil {
		if !isClosed(err) {
			t.Fatalf("after %T: %v; want the connection closed", m, err)
		}
		r.closed = true
	}
	return r
}

func isClosed(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false // a hang is not a close
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		strings.Contains(err.Error(), "connection reset")
}

// wantFatal checks that r is exactly one FATAL ErrorResponse with code and
// message, and a close.
func wantFatal(t *testing.T, r reply, code, msg string) {
	t.Helper()
	e, ok := r.msg.(*pgproto3.ErrorResponse)
	if !ok || e.Severity != "FATAL" || e.Code != code || e.Message != msg || !r.closed {
		t.Fatalf("reply = %#v, closed %v; want FATAL %s %q and a close", r.msg, r.closed, code, msg)
	}
}

// wantSilentClose checks that the connection was closed without a word.
func wantSilentClose(t *testing.T, r reply) {
	t.Helper()
	if r.msg != nil || !r.closed {
		t.Fatalf("reply = %#v, closed %v; want a close without any message", r.msg, r.closed)
	}
}

// tlsConn is dialTLS's connection without the pgproto3 wrapper.
func tlsConn(t *testing.T, s *server) net.Conn { return dialTLS(t, s).conn }

// startupBody is a startup packet body: protocol code then raw bytes.
func startupPacket(code uint32, rest []byte) []byte {
	b := be32(uint32(8 + len(rest)))
	b = binary.BigEndian.AppendUint32(b, code)
	return append(b, rest...)
}

func params(kv ...string) []byte {
	var b []byte
	for _, s := range kv {
		b = append(append(b, s...), 0)
	}
	return append(b, 0)
}

const (
	invalidLength = "protocol violation: invalid length of startup packet"
	protoV3       = 3 << 16
	cancelCode    = 80877102 // "1234.5678"; 1234.5679 is the SSLRequest
)

func TestHostileInputStartup(t *testing.T) {
	s, err := newServer("hostile-input")
	t.Cleanup(func() {
		if s != nil {
			s.stop()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	// The gateway decides on the length word alone: the cases send no body
	// (a reply that waited for one would hang and fail on the deadline).
	for _, tc := range []struct {
		name string
		send []byte
	}{
		{"length 0", be32(0)},
		{"length 4", be32(4)},
		{"length 7", append(be32(7), 0, 3, 0)},
		{"length 10001", be32(10001)},
		{"length 0x7FFFFFFF", be32(0x7FFFFFFF)},
		{"length 0x80000000 (negative as int32)", be32(0x80000000)},
	} {
		t.Run(tc.name+" over TLS", func(t *testing.T) {
			c := tlsConn(t, s)
			write(t, c, tc.send)
			wantFatal(t, readReply(t, c), "08P01", invalidLength)
		})
		t.Run(tc.name+" in plaintext", func(t *testing.T) {
			c := dialRaw(t, s)
			write(t, c, tc.send)
			wantFatal(t, readReply(t, c), "08P01", invalidLength)
		})
	}
	t.Run("length exactly 10000 is accepted", func(t *testing.T) {
		// PostgreSQL's limit is inclusive: a 10,000-byte packet is read
		// and the login goes on.
		c := tlsConn(t, s)
		head := params("user", admin, "database", "postgres", "application_name", "")
		pad := 10000 - 8 - len(head)
		body := params("user", admin, "database", "postgres", "application_name", strings.Repeat("a", pad))
		pkt := startupPacket(protoV3, body)
		if len(pkt) != 10000 {
			t.Fatalf("test packet is %d bytes", len(pkt))
		}
		write(t, c, pkt)
		if m, err := pgproto3.NewFrontend(c, c).Receive(); err != nil {
			t.Fatalf("10,000-byte startup packet: %v; want AuthenticationSASL", err)
		} else if _, ok := m.(*pgproto3.AuthenticationSASL); !ok {
			t.Fatalf("10,000-byte startup packet: %#v; want AuthenticationSASL", m)
		}
	})
	for _, tc := range []struct {
		name string
		code uint32
		msg  string
	}{
		{"protocol 2.0", 2 << 16, "unsupported frontend protocol 2.0: server supports 3.0 to 3.0"},
		{"protocol 4.0", 4 << 16, "unsupported frontend protocol 4.0: server supports 3.0 to 3.0"},
		{"protocol 0.0", 0, "unsupported frontend protocol 0.0: server supports 3.0 to 3.0"},
		{"protocol 65535.65535", 0xFFFFFFFF, "unsupported frontend protocol 65535.65535: server supports 3.0 to 3.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tlsConn(t, s)
			write(t, c, startupPacket(tc.code, params("user", admin, "database", "postgres")))
			wantFatal(t, readReply(t, c), "0A000", tc.msg)
		})
	}
	t.Run("protocol 1234.5679 with parameters, as a startup", func(t *testing.T) {
		// 1234.5679 is the SSLRequest code, 1234.5678 the cancel code:
		// neither may be read as a StartupMessage with parameters.
		for _, code := range []uint32{cancelCode, cancelCode + 1, cancelCode + 2} {
			c := tlsConn(t, s)
			write(t, c, startupPacket(code, params("user", admin, "database", "postgres")))
			want := map[uint32]string{
				cancelCode:     "protocol violation: invalid length of CancelRequest",
				cancelCode + 1: "protocol violation: invalid length of SSLRequest",
				cancelCode + 2: "protocol violation: invalid length of GSSENCRequest",
			}[code]
			wantFatal(t, readReply(t, c), "08P01", want)
		}
	})
	t.Run("CancelRequest with an unknown key", func(t *testing.T) {
		for _, viaTLS := range []bool{false, true} {
			c := dialRaw(t, s)
			if viaTLS {
				c = tlsConn(t, s)
			}
			write(t, c, startupPacket(cancelCode, []byte{0, 0, 0, 1, 1, 2, 3, 4}))
			wantSilentClose(t, readReply(t, c))
		}
	})
	t.Run("SSLRequest inside TLS", func(t *testing.T) {
		c := tlsConn(t, s)
		write(t, c, sslRequest)
		wantFatal(t, readReply(t, c), "08P01", "protocol violation: encryption requested inside an encrypted connection")
	})
	t.Run("plaintext startup after the 'S'", func(t *testing.T) {
		// Not a TLS ClientHello: the gateway must not answer in plaintext
		// once it has agreed to TLS.
		c := dialRaw(t, s)
		write(t, c, sslRequest)
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'S' {
			t.Fatalf("SSLRequest answer = %q, %v", b[0], err)
		}
		write(t, c, startupPacket(protoV3, params("user", admin, "database", "postgres")))
		got, err := io.ReadAll(c)
		if err != nil && !isClosed(err) {
			t.Fatalf("after a plaintext startup in place of TLS: %v; want a close", err)
		}
		// A TLS alert record (0x15) is allowed; plaintext PostgreSQL
		// messages ('E', 'R') are not.
		if len(got) > 0 && got[0] != 0x15 {
			t.Fatalf("after a plaintext startup in place of TLS the gateway sent %q; want nothing or a TLS alert", got)
		}
	})
	t.Run("empty parameter key", func(t *testing.T) {
		// An empty key is the packet's terminator; what follows is
		// garbage after it.
		c := tlsConn(t, s)
		rest := append([]byte("user\x00"+admin+"\x00\x00value\x00"), 0)
		write(t, c, startupPacket(protoV3, rest))
		wantFatal(t, readReply(t, c), "08P01", "protocol violation: invalid startup packet layout: data after terminator")
	})
	t.Run("only the terminator", func(t *testing.T) {
		c := tlsConn(t, s)
		write(t, c, startupPacket(protoV3, []byte{0}))
		wantFatal(t, readReply(t, c), "28000", "no PostgreSQL user name specified in startup packet")
	})
	t.Run("empty user value", func(t *testing.T) {
		c := tlsConn(t, s)
		write(t, c, startupPacket(protoV3, params("user", "", "database", "postgres")))
		wantFatal(t, readReply(t, c), "28000", "no PostgreSQL user name specified in startup packet")
	})
	t.Run("no terminator", func(t *testing.T) {
		c := tlsConn(t, s)
		write(t, c, startupPacket(protoV3, []byte("user\x00"+admin+"\x00")))
		wantFatal(t, readReply(t, c), "08P01", "protocol violation: invalid startup packet layout: expected terminator as last byte")
	})
	t.Run("unterminated value", func(t *testing.T) {
		c := tlsConn(t, s)
		write(t, c, startupPacket(protoV3, []byte("user\x00"+admin+"\x00database\x00postgres")))
		wantFatal(t, readReply(t, c), "08P01", `protocol violation: invalid startup packet layout: missing value for "database"`)
	})

	t.Run("oversized messages after login", func(t *testing.T) {
		// After login the gateway relays bytes; PostgreSQL itself refuses
		// an impossible length as a COMMERROR: "invalid message length" in
		// its log, the connection closed without a reply (postgres.c,
		// pq_getmessage). The gateway must pass that close on and keep
		// serving others.
		for _, tc := range []struct {
			name string
			msg  []byte
		}{
			{"Query claiming 0x7FFFFFFF bytes", append([]byte{'Q'}, be32(0x7FFFFFFF)...)},
			{"Query claiming 0xFFFFFFFF bytes", append([]byte{'Q'}, be32(0xFFFFFFFF)...)},
			{"Query of length 3", append([]byte{'Q'}, be32(3)...)},
			{"Sync over PostgreSQL's 10,000-byte small-message limit", append(append([]byte{'S'}, be32(20004)...), make([]byte, 20000)...)},
		} {
			t.Run(tc.name, func(t *testing.T) {
				hc := hijackedSession(t, s)
				_ = hc.Conn.SetDeadline(time.Now().Add(20 * time.Second))
				write(t, hc.Conn, tc.msg)
				wantSilentClose(t, readReply(t, hc.Conn))
			})
		}
		conn, err := pgxConnect(t, s.dsn("user="+admin+" password="+adminPassword+" sslmode=verify-full"))
		if err != nil {
			t.Fatalf("a new session after the oversized messages: %v", err)
		}
		conn.Close(context.Background())
	})
}

// hijackedSession logs in as the administrator with pgx and takes over the
// raw TLS connection, for bytes no client library would send.
func hijackedSession(t *testing.T, s *server) *pgconn.HijackedConn {
	t.Helper()
	conn, err := pgxConnect(t, s.dsn("user="+admin+" password="+adminPassword+" sslmode=verify-full"))
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	hc, err := conn.PgConn().Hijack()
	if err != nil {
		t.Fatalf("hijack: %v", err)
	}
	t.Cleanup(func() { hc.Conn.Close() })
	return hc
}

func write(t *testing.T, c net.Conn, b []byte) {
	t.Helper()
	if _, err := c.Write(b); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// Role names at PostgreSQL's 63-byte limit (NAMEDATALEN - 1). PostgreSQL
// cuts a longer identifier in CREATE ROLE (at a character boundary) and a
// longer user name in the startup packet (at byte 63), so on a bare server
// a 64-byte name logs in as the 63-byte role sharing its prefix. The
// gateway compares the full name as text: no name other than a role's own
// reaches that role.
func TestHostileInputRoleNames(t *testing.T) {
	s, err := newServer("hostile-names")
	t.Cleanup(func() {
		if s != nil {
			s.stop()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	a, err := pgxConnect(t, s.dsn("user="+admin+" password="+adminPassword+" sslmode=verify-full"))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(context.Background())

	r63 := "r63_" + strings.Repeat("x", 59)
	r64 := r63 + "y"
	e31, e32 := strings.Repeat("é", 31), strings.Repeat("é", 32) // 62 and 64 bytes
	const pw1, pw2, pwE = "Len63-Pass-1", "Len64-Pass-2", "Multi-Byte-3"
	if len(r63) != 63 || len(r64) != 64 || len(e31) != 62 || len(e32) != 64 {
		t.Fatal("test names have the wrong lengths")
	}
	mustExec(t, a, `CREATE ROLE `+pgx.Identifier{r63}.Sanitize()+` LOGIN PASSWORD '`+pw1+`'`)
	// The 64-byte name is cut to the 63-byte one: PostgreSQL refuses a
	// second role instead of making one the other name reaches.
	if err := execSQL(a, `CREATE ROLE `+pgx.Identifier{r64}.Sanitize()+` LOGIN PASSWORD '`+pw2+`'`); sqlState(err) != "42710" {
		t.Fatalf("CREATE ROLE of the 64-byte name: %v; want 42710 (it is the 63-byte role)", err)
	}
	mustExec(t, a, `CREATE ROLE `+pgx.Identifier{e32}.Sanitize()+` LOGIN PASSWORD '`+pwE+`'`)
	if got := s.pinnedSQL(t, `SELECT string_agg(rolname || ':' || octet_length(rolname), ',' ORDER BY rolname) FROM pg_authid
		WHERE rolname LIKE 'r63\_%' OR rolname LIKE 'é%'`); got != r63+":63,"+e31+":62" {
		t.Fatalf("roles = %q; want the 63-byte role and the 31-character (62-byte) multibyte one", got)
	}

	login := func(user, password string) (string, error) {
		cfg, err := pgx.ParseConfig(s.dsn("sslmode=verify-full"))
		if err != nil {
			t.Fatal(err)
		}
		cfg.User, cfg.Password = user, password
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		c, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			return "", err
		}
		defer c.Close(context.Background())
		var who string
		err = c.QueryRow(ctx, `SELECT session_user`).Scan(&who)
		return who, err
	}
	wantRefused := func(user, password string) {
		t.Helper()
		who, err := login(user, password)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "28P01" || pe.Message != "password authentication failed for user "+strconv.Quote(user) {
			t.Errorf("login as %q (%d bytes) = %q, %v; want 28P01 for that name", user, len(user), who, err)
		}
	}
	wantIn := func(user, password string) {
		t.Helper()
		if who, err := login(user, password); err != nil || who != user {
			t.Errorf("login as %q = %q, %v; want in as itself", user, who, err)
		}
	}
	wantIn(r63, pw1)
	wantRefused(r64, pw1) // the 63-byte role's password under the 64-byte name
	wantRefused(r64, pw2)
	wantIn(e31, pwE)
	wantRefused(e32, pwE) // the name as created, before PostgreSQL cut it
	t.Run("names that are not UTF-8", func(t *testing.T) {
		// Cut at byte 63, in the middle of a character: what PostgreSQL's
		// startup truncation would make of the 64-byte name.
		wantRefused(e32[:63], pwE)
		wantRefused(string(bytes.Repeat([]byte{0xff}, 63)), pwE)
	})
}
