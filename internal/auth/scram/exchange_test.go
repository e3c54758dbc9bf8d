package scram

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	xscram "github.com/xdg-go/scram"

	"github.com/pgshield/pgshield/internal/wire"
)

const (
	testUser     = "alice"
	testPassword = "correct horse battery staple"
)

// realCreds are the stored credentials PostgreSQL would hold for testPassword.
func realCreds(t *testing.T) Credentials {
	t.Helper()
	v, err := Verifier(testUser, testPassword, testSalt, DefaultIterations)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseVerifier(v)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func endPoint(data string) *xscram.ChannelBinding {
	sum := sha256.Sum256([]byte(data))
	return &xscram.ChannelBinding{Type: xscram.ChannelBindingTLSServerEndpoint, Data: sum[:]}
}

// script is what the test client does; by default it is a well-behaved
// libpq-like SCRAM-SHA-256 client.
type script struct {
	user     string // SCRAM user name; libpq sends an empty one
	password string
	mech     string // mechanism selected; default SCRAM-SHA-256
	// conv starts the client conversation; default NewConversation (flag n).
	conv func(c *xscram.Client) *xscram.ClientConversation
	// editFirst and editFinal rewrite the client's SCRAM messages.
	editFirst, editFinal func(string) string
	// rawFirst and rawFinal replace the whole frontend message on the wire.
	rawFirst, rawFinal []byte
}

// outcome is what both sides saw.
type outcome struct {
	mechs     []string // mechanisms the server advertised
	final     []byte   // server-final-message returned by Run
	err       error    // Run's error
	conv      *xscram.ClientConversation
	clientErr error
}

// client plays s against the server on conn.
func (s script) play(conn net.Conn, o *outcome) error {
	fe := pgproto3.NewFrontend(conn, conn)
	m, err := fe.Receive()
	if err != nil {
		return err
	}
	sasl, ok := m.(*pgproto3.AuthenticationSASL)
	if !ok {
		return fmt.Errorf("first server message is %T; want AuthenticationSASL", m)
	}
	o.mechs = sasl.AuthMechanisms

	c, err := xscram.SHA256.NewClient(s.user, s.password, "")
	if err != nil {
		return err
	}
	if s.conv != nil {
		o.conv = s.conv(c)
	} else {
		o.conv = c.NewConversation()
	}
	first, err := o.conv.Step("")
	if err != nil {
		return err
	}
	if s.editFirst != nil {
		first = s.editFirst(first)
	}
	mech := s.mech
	if mech == "" {
		mech = MechSCRAM
	}
	if s.rawFirst != nil {
		if _, err := conn.Write(s.rawFirst); err != nil {
			return err
		}
	} else {
		fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: mech, Data: []byte(first)})
		if err := fe.Flush(); err != nil {
			return err
		}
	}

	m, err = fe.Receive()
	if err != nil {
		return err
	}
	cont, ok := m.(*pgproto3.AuthenticationSASLContinue)
	if !ok {
		return fmt.Errorf("second server message is %T; want AuthenticationSASLContinue", m)
	}
	final, err := o.conv.Step(string(cont.Data))
	if err != nil {
		return err
	}
	if s.editFinal != nil {
		final = s.editFinal(final)
	}
	if s.rawFinal != nil {
		_, err = conn.Write(s.rawFinal)
		return err
	}
	fe.Send(&pgproto3.SASLResponse{Data: []byte(final)})
	return fe.Flush()
}

// run drives x.Run on one end of a net.Pipe against s on the other.
func run(t *testing.T, x *Exchange, s script) outcome {
	t.Helper()
	srv, cli := net.Pipe()
	deadline := time.Now().Add(10 * time.Second)
	_ = srv.SetDeadline(deadline)
	_ = cli.SetDeadline(deadline)
	type result struct {
		final []byte
		err   error
	}
	done := make(chan result, 1)
	go func() {
		final, err := x.Run(srv)
		srv.Close() // as the gateway does after a failure; ends the client's reads
		done <- result{final, err}
	}()
	var o outcome
	o.clientErr = s.play(cli, &o)
	cli.Close()
	select {
	case r := <-done:
		o.final, o.err = r.final, r.err
	case <-time.After(15 * time.Second):
		t.Fatal("Exchange.Run did not return")
	}
	return o
}

// sqlstate is the code the gateway sends for err.
func sqlstate(err error) string {
	var ae *AuthError
	if errors.As(err, &ae) {
		return ae.Code
	}
	code, _ := wire.ClientMessage(err)
	return code
}

func replaceField(msg, key, value string) string {
	fields := strings.Split(msg, ",")
	for i, f := range fields {
		if strings.HasPrefix(f, key+"=") {
			fields[i] = key + "=" + value
		}
	}
	return strings.Join(fields, ",")
}

func field(msg, key string) string {
	for f := range strings.SplitSeq(msg, ",") {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return ""
}

func withBinding(cb *xscram.ChannelBinding) func(c *xscram.Client) *xscram.ClientConversation {
	return func(c *xscram.Client) *xscram.ClientConversation { return c.NewConversationWithChannelBinding(*cb) }
}

func advertising(c *xscram.Client) *xscram.ClientConversation {
	return c.NewConversationAdvertisingChannelBinding()
}

func TestExchangeRun(t *testing.T) {
	creds := realCreds(t)
	mock := MockCredentials([]byte("0123456789abcdef0123456789abcdef"), testUser)
	cb := endPoint("server certificate")
	otherCB := endPoint("a man-in-the-middle's certificate")
	tlsUnique := &xscram.ChannelBinding{Type: xscram.ChannelBindingTLSUnique, Data: cb.Data}
	good := script{password: testPassword}

	tests := []struct {
		name      string
		x         Exchange
		s         script
		wantMechs []string
		wantCode  string // "" means success
		wantWhy   string // AuthError.Reason, when set
	}{
		{name: "success", x: Exchange{Creds: creds, Valid: true}, s: good, wantMechs: []string{MechSCRAM}},
		{name: "success with a SCRAM user name", x: Exchange{Creds: creds, Valid: true},
			s: script{user: "somebody-else", password: testPassword}},
		{name: "success with y flag when PLUS not offered", x: Exchange{Creds: creds, Valid: true},
			s: script{password: testPassword, conv: advertising}},
		{name: "success without binding although PLUS offered", x: Exchange{Creds: creds, Valid: true, Binding: cb},
			s: good, wantMechs: []string{MechSCRAMPlus, MechSCRAM}},
		{name: "channel binding", x: Exchange{Creds: creds, Valid: true, Binding: cb},
			s:         script{password: testPassword, mech: MechSCRAMPlus, conv: withBinding(cb)},
			wantMechs: []string{MechSCRAMPlus, MechSCRAM}},
		{name: "wrong password", x: Exchange{Creds: creds, Valid: true},
			s: script{password: "wrong"}, wantCode: "28P01", wantWhy: "wrong password"},
		{name: "empty password", x: Exchange{Creds: creds, Valid: true},
			s: script{password: ""}, wantCode: "28P01", wantWhy: "wrong password"},
		{name: "wrong password with channel binding", x: Exchange{Creds: creds, Valid: true, Binding: cb},
			s:        script{password: "wrong", mech: MechSCRAMPlus, conv: withBinding(cb)},
			wantCode: "28P01"},
		{name: "invalid role with the right password", x: Exchange{Creds: creds, Why: "password has expired"},
			s: good, wantCode: "28P01", wantWhy: "password has expired"},
		{name: "mock credentials", x: Exchange{Creds: mock, Why: "role does not exist"},
			s: good, wantCode: "28P01", wantWhy: "role does not exist"},
		{name: "tampered proof", x: Exchange{Creds: creds, Valid: true},
			s: script{password: testPassword, editFinal: func(m string) string {
				return replaceField(m, "p", base64.StdEncoding.EncodeToString(make([]byte, 32)))
			}}, wantCode: "28P01"},
		{name: "mismatching binding data", x: Exchange{Creds: creds, Valid: true, Binding: cb},
			s:        script{password: testPassword, mech: MechSCRAMPlus, conv: withBinding(otherCB)},
			wantCode: "08P01"},
		{name: "binding type tls-unique", x: Exchange{Creds: creds, Valid: true, Binding: cb},
			s:        script{password: testPassword, mech: MechSCRAMPlus, conv: withBinding(tlsUnique)},
			wantCode: "08P01"},
		{name: "PLUS when not offered", x: Exchange{Creds: creds, Valid: true},
			s:        script{password: testPassword, mech: MechSCRAMPlus, conv: withBinding(cb)},
			wantCode: "08P01"},
		{name: "y flag when PLUS offered (downgrade)", x: Exchange{Creds: creds, Valid: true, Binding: cb},
			s: script{password: testPassword, conv: advertising}, wantCode: "08P01"},
		{name: "PLUS mechanism with n flag", x: Exchange{Creds: creds, Valid: true, Binding: cb},
			s: script{password: testPassword, mech: MechSCRAMPlus}, wantCode: "08P01"},
		{name: "plain mechanism with p flag", x: Exchange{Creds: creds, Valid: true, Binding: cb},
			s: script{password: testPassword, conv: withBinding(cb)}, wantCode: "08P01"},
		{name: "unknown mechanism", x: Exchange{Creds: creds, Valid: true},
			s: script{password: testPassword, mech: "SCRAM-SHA-1"}, wantCode: "08P01"},
		{name: "binding data stripped from client-final", x: Exchange{Creds: creds, Valid: true, Binding: cb},
			s: script{password: testPassword, mech: MechSCRAMPlus, conv: withBinding(cb),
				editFinal: func(m string) string {
					return replaceField(m, "c", base64.StdEncoding.EncodeToString([]byte("p=tls-server-end-point,,")))
				}},
			wantCode: "08P01"},
		{name: "query instead of SASLInitialResponse", x: Exchange{Creds: creds, Valid: true},
			s:        script{password: testPassword, rawFirst: mustEncode(t, &pgproto3.Query{String: "select 1"})},
			wantCode: "08P01"},
		{name: "query instead of SASLResponse", x: Exchange{Creds: creds, Valid: true},
			s:        script{password: testPassword, rawFinal: mustEncode(t, &pgproto3.Query{String: "select 1"})},
			wantCode: "08P01"},
		{name: "password message instead of SASLResponse", x: Exchange{Creds: creds, Valid: true},
			s: script{password: testPassword, rawFinal: mustEncode(t, &pgproto3.PasswordMessage{Password: testPassword})},
			// PasswordMessage shares type 'p': it is read as a SASLResponse and fails to parse.
			wantCode: "08P01"},
		{name: "garbage client-first", x: Exchange{Creds: creds, Valid: true},
			s: script{password: testPassword, editFirst: func(string) string { return "n,,hello" }}, wantCode: "08P01"},
		{name: "empty client-first", x: Exchange{Creds: creds, Valid: true},
			s: script{password: testPassword, editFirst: func(string) string { return "" }}, wantCode: "08P01"},
		{name: "client-first with extension", x: Exchange{Creds: creds, Valid: true},
			s: script{password: testPassword, editFirst: func(m string) string {
				return strings.Replace(m, "n=,", "m=ext,n=,", 1)
			}}, wantCode: "08P01"},
		{name: "client-first with bad user name encoding", x: Exchange{Creds: creds, Valid: true},
			s: script{password: testPassword, editFirst: func(m string) string {
				return strings.Replace(m, "n=,", "n=a=b,", 1)
			}}, wantCode: "08P01"},
		{name: "authorization identity", x: Exchange{Creds: creds, Valid: true},
			s: script{password: testPassword, editFirst: func(m string) string {
				return strings.Replace(m, "n,,", "n,a=postgres,", 1)
			}}, wantCode: "0A000"},
		{name: "empty authorization identity", x: Exchange{Creds: creds, Valid: true},
			s: script{password: testPassword, editFirst: func(m string) string {
				return strings.Replace(m, "n,,", "n,a=,", 1)
			}}, wantCode: "0A000"},
		{name: "authorization identity with channel binding", x: Exchange{Creds: creds, Valid: true, Binding: cb},
			s: script{password: testPassword, mech: MechSCRAMPlus, conv: withBinding(cb),
				editFirst: func(m string) string {
					return strings.Replace(m, "p=tls-server-end-point,,", "p=tls-server-end-point,a=alice,", 1)
				}}, wantCode: "0A000"},
		{name: "bad base64 channel binding", x: Exchange{Creds: creds, Valid: true},
			s:        script{password: testPassword, editFinal: func(m string) string { return replaceField(m, "c", "!!!") }},
			wantCode: "08P01"},
		{name: "bad base64 proof", x: Exchange{Creds: creds, Valid: true},
			s:        script{password: testPassword, editFinal: func(m string) string { return replaceField(m, "p", "@@") }},
			wantCode: "08P01"},
		{name: "short proof", x: Exchange{Creds: creds, Valid: true},
			s: script{password: testPassword, editFinal: func(m string) string {
				return replaceField(m, "p", base64.StdEncoding.EncodeToString([]byte("short")))
			}}, wantCode: "08P01"},
		{name: "garbage client-final", x: Exchange{Creds: creds, Valid: true},
			s: script{password: testPassword, editFinal: func(string) string { return "garbage" }}, wantCode: "08P01"},
		{name: "wrong nonce in client-final", x: Exchange{Creds: creds, Valid: true},
			s: script{password: testPassword, editFinal: func(m string) string {
				return replaceField(m, "r", field(m, "r")+"x")
			}}, wantCode: "08P01"},
		{name: "client nonce only in client-final", x: Exchange{Creds: creds, Valid: true},
			s: script{password: testPassword, editFinal: func(m string) string {
				return replaceField(m, "r", field(m, "r")[:10])
			}}, wantCode: "08P01"},
		{name: "SASLInitialResponse with length 0xFFFFFFFF", x: Exchange{Creds: creds, Valid: true},
			s: script{password: testPassword, rawFirst: []byte{'p', 0xff, 0xff, 0xff, 0xff}}, wantCode: "08P01"},
		{name: "SASLResponse with length 0xFFFFFFFF", x: Exchange{Creds: creds, Valid: true},
			s: script{password: testPassword, rawFinal: []byte{'p', 0xff, 0xff, 0xff, 0xff}}, wantCode: "08P01"},
		{name: "SASLInitialResponse over 65535 bytes", x: Exchange{Creds: creds, Valid: true},
			s: script{password: testPassword, rawFirst: []byte{'p', 0, 1, 0, 4}}, wantCode: "08P01"},
		{name: "SASLInitialResponse without client-first (length -1)", x: Exchange{Creds: creds, Valid: true},
			s:        script{password: testPassword, rawFirst: mustEncode(t, &rawSASLInitial{mech: MechSCRAM, declared: -1})},
			wantCode: "08P01"},
		{name: "SASLInitialResponse length mismatch", x: Exchange{Creds: creds, Valid: true},
			s: script{password: testPassword, rawFirst: mustEncode(t, &rawSASLInitial{mech: MechSCRAM, declared: 100,
				data: "n,,n=,r=abcdefghijklmnop"})},
			wantCode: "08P01"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := tt.x
			x.User = testUser
			o := run(t, &x, tt.s)
			if tt.wantMechs != nil && !slices.Equal(o.mechs, tt.wantMechs) {
				t.Errorf("Exchange.Run advertised %q; want %q", o.mechs, tt.wantMechs)
			}
			if tt.wantCode == "" {
				if o.err != nil {
					t.Fatalf("Exchange.Run() error = %v (client: %v); want success", o.err, o.clientErr)
				}
				if o.clientErr != nil {
					t.Fatalf("client error = %v", o.clientErr)
				}
				if !strings.HasPrefix(string(o.final), "v=") {
					t.Fatalf("Exchange.Run() = %q; want a server-final-message starting with v=", o.final)
				}
				if _, err := o.conv.Step(string(o.final)); err != nil || !o.conv.Valid() {
					t.Errorf("client rejected the server signature %q: %v", o.final, err)
				}
				return
			}
			if o.err == nil {
				t.Fatalf("Exchange.Run() = %q, nil; want error %s", o.final, tt.wantCode)
			}
			if o.final != nil {
				t.Errorf("Exchange.Run() = %q with error %v; want no server-final-message", o.final, o.err)
			}
			if got := sqlstate(o.err); got != tt.wantCode {
				t.Errorf("Exchange.Run() error = %v (SQLSTATE %s); want SQLSTATE %s", o.err, got, tt.wantCode)
			}
			var ae *AuthError
			if tt.wantCode == "28P01" {
				if !errors.As(o.err, &ae) {
					t.Fatalf("Exchange.Run() error = %T; want *AuthError", o.err)
				}
				if want := `password authentication failed for user "alice"`; ae.Message != want {
					t.Errorf("AuthError.Message = %q; want %q", ae.Message, want)
				}
				if tt.wantWhy != "" && ae.Reason != tt.wantWhy {
					t.Errorf("AuthError.Reason = %q; want %q", ae.Reason, tt.wantWhy)
				}
			}
		})
	}
}

// rawSASLInitial encodes a SASLInitialResponse with any declared length.
type rawSASLInitial struct {
	mech     string
	declared int32
	data     string
}

func (*rawSASLInitial) Frontend() {}
func (*rawSASLInitial) Decode([]byte) error {
	return errors.New("not implemented")
}

func (m *rawSASLInitial) Encode(dst []byte) ([]byte, error) {
	b := append([]byte(m.mech), 0)
	b = append(b, byte(m.declared>>24), byte(m.declared>>16), byte(m.declared>>8), byte(m.declared))
	b = append(b, m.data...)
	n := len(b) + 4
	dst = append(dst, 'p', byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	return append(dst, b...), nil
}

func mustEncode(t *testing.T, m pgproto3.FrontendMessage) []byte {
	t.Helper()
	b, err := m.Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestExchangeRunClientHangsUp(t *testing.T) {
	creds := realCreds(t)
	for _, stage := range []string{"before SASLInitialResponse", "before SASLResponse"} {
		t.Run(stage, func(t *testing.T) {
			srv, cli := net.Pipe()
			_ = srv.SetDeadline(time.Now().Add(10 * time.Second))
			done := make(chan error, 1)
			x := &Exchange{User: testUser, Creds: creds, Valid: true}
			go func() {
				_, err := x.Run(srv)
				srv.Close()
				done <- err
			}()
			fe := pgproto3.NewFrontend(cli, cli)
			if _, err := fe.Receive(); err != nil {
				t.Fatal(err)
			}
			if stage == "before SASLResponse" {
				fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: MechSCRAM, Data: []byte("n,,n=,r=abcdefghijkl")})
				if err := fe.Flush(); err != nil {
					t.Fatal(err)
				}
				if _, err := fe.Receive(); err != nil {
					t.Fatal(err)
				}
			}
			cli.Close()
			err := <-done
			if err == nil || !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrClosedPipe) {
				t.Errorf("Exchange.Run() error = %v; want EOF", err)
			}
		})
	}
}

// TestExchangeRunSendsNothingAfterContinue checks that Run leaves
// AuthenticationSASLFinal to its caller, which sends it with AuthenticationOk
// once the backend session is up.
func TestExchangeRunSendsNothingAfterContinue(t *testing.T) {
	x := &Exchange{User: testUser, Creds: realCreds(t), Valid: true}
	srv, cli := net.Pipe()
	_ = cli.SetDeadline(time.Now().Add(10 * time.Second))
	_ = srv.SetDeadline(time.Now().Add(10 * time.Second))
	done := make(chan error, 1)
	go func() {
		_, err := x.Run(srv)
		done <- err
	}()
	var o outcome
	if err := (script{password: testPassword}).play(cli, &o); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Exchange.Run() error = %v", err)
	}
	srv.Close()
	var b [1]byte
	if n, err := cli.Read(b[:]); n != 0 || err == nil {
		t.Errorf("after Run returned the client read %d bytes (%q), %v; want nothing", n, b[:n], err)
	}
}
