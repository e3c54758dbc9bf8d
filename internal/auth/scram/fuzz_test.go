package scram

import (
	"bytes"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
	xscram "github.com/xdg-go/scram"

	"github.com/pgshield/pgshield/internal/wire"
)

// fuzzConn feeds Run a fixed first input and builds the rest once Run has
// written its AuthenticationSASLContinue, so that the fuzzer can reach the
// proof check (the server nonce is random).
type fuzzConn struct {
	in   []byte
	next func(out []byte) []byte
	out  bytes.Buffer
}

func (c *fuzzConn) Read(p []byte) (int, error) {
	if len(c.in) == 0 && c.next != nil {
		c.in, c.next = c.next(c.out.Bytes()), nil
	}
	if len(c.in) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.in)
	c.in = c.in[n:]
	return n, nil
}

func (c *fuzzConn) Write(p []byte) (int, error) { return c.out.Write(p) }

// serverMessages decodes what Run wrote.
func serverMessages(t *testing.T, out []byte) []pgproto3.BackendMessage {
	t.Helper()
	fe := pgproto3.NewFrontend(bytes.NewReader(out), io.Discard)
	var msgs []pgproto3.BackendMessage
	for {
		m, err := fe.Receive()
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return msgs
		}
		if err != nil {
			t.Fatalf("server wrote an undecodable message: %v (%q)", err, out)
		}
		switch m := m.(type) {
		case *pgproto3.AuthenticationSASL:
			m.AuthMechanisms = slices.Clone(m.AuthMechanisms)
		case *pgproto3.AuthenticationSASLContinue:
			m.Data = slices.Clone(m.Data)
		}
		msgs = append(msgs, m)
	}
}

// FuzzExchange feeds Run arbitrary client messages. In framed mode first and
// final are the SCRAM payloads of a SASLInitialResponse and a SASLResponse,
// and final may use the placeholders NONCE (the server's nonce), CBIND (the
// right channel-binding value for first's gs2 header) and a trailing
// ",p=PROOF" (the correct proof for testPassword). Otherwise first+final are
// raw bytes on the wire. Run must never panic, and must succeed only with the
// correct proof, a mechanism it offered, matching channel binding, and a
// role that is allowed in.
func FuzzExchange(f *testing.F) {
	salted, err := pbkdf2.Key(sha256.New, testPassword, testSalt, DefaultIterations, sha256.Size)
	if err != nil {
		f.Fatal(err)
	}
	mac := func(key []byte, msg string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(msg))
		return h.Sum(nil)
	}
	clientKey := mac(salted, "Client Key")
	storedKey := sha256.Sum256(clientKey)
	serverKey := mac(salted, "Server Key")
	creds := Credentials{KeyFactors: xscram.KeyFactors{Salt: string(testSalt), Iters: DefaultIterations},
		StoredKey: storedKey[:], ServerKey: serverKey}
	cb := endPoint("server certificate")

	f.Fuzz(func(t *testing.T, framed, binding, valid bool, mech string, first, final []byte) {
		x := &Exchange{User: testUser, Creds: creds, Valid: valid, Why: "role is not permitted to log in"}
		if binding {
			x.Binding = cb
		}
		c := &fuzzConn{}
		var sent string // the client-final-message after placeholders
		var authMsg string
		if !framed {
			c.in = append(slices.Clone(first), final...)
		} else {
			m1, err := (&pgproto3.SASLInitialResponse{AuthMechanism: mech, Data: first}).Encode(nil)
			if err != nil {
				t.Skip()
			}
			c.in = m1
			c.next = func(out []byte) []byte {
				var s1 string
				for _, m := range serverMessages(t, out) {
					if m, ok := m.(*pgproto3.AuthenticationSASLContinue); ok {
						s1 = string(m.Data)
					}
				}
				fields := strings.Split(string(first), ",")
				gs2 := ""
				if len(fields) >= 2 {
					gs2 = fields[0] + "," + fields[1] + ","
				}
				cbind := []byte(gs2)
				if strings.HasPrefix(gs2, "p") {
					cbind = append(cbind, cb.Data...)
				}
				msg := strings.ReplaceAll(string(final), "NONCE", field(s1, "r"))
				msg = strings.ReplaceAll(msg, "CBIND", base64.StdEncoding.EncodeToString(cbind))
				if c2wop, ok := strings.CutSuffix(msg, ",p=PROOF"); ok && len(fields) >= 3 {
					authMsg = strings.Join(fields[2:], ",") + "," + s1 + "," + c2wop
					sig := mac(storedKey[:], authMsg)
					proof := make([]byte, len(sig))
					for i := range sig {
						proof[i] = clientKey[i] ^ sig[i]
					}
					msg = c2wop + ",p=" + base64.StdEncoding.EncodeToString(proof)
				}
				sent = msg
				b, _ := (&pgproto3.SASLResponse{Data: []byte(msg)}).Encode(nil)
				return b
			}
		}

		got, err := x.Run(c)

		msgs := serverMessages(t, c.out.Bytes())
		if len(msgs) == 0 || len(msgs) > 2 {
			t.Fatalf("Run wrote %d messages; want AuthenticationSASL and at most a SASLContinue", len(msgs))
		}
		sasl, ok := msgs[0].(*pgproto3.AuthenticationSASL)
		wantMechs := []string{MechSCRAM}
		if binding {
			wantMechs = []string{MechSCRAMPlus, MechSCRAM}
		}
		if !ok || !slices.Equal(sasl.AuthMechanisms, wantMechs) {
			t.Fatalf("Run first wrote %#v; want AuthenticationSASL%q", msgs[0], wantMechs)
		}
		if len(msgs) == 2 {
			if _, ok := msgs[1].(*pgproto3.AuthenticationSASLContinue); !ok {
				t.Fatalf("Run then wrote %T; want AuthenticationSASLContinue", msgs[1])
			}
		}

		if err != nil {
			if got != nil {
				t.Fatalf("Run() = %q with error %v", got, err)
			}
			var ae *AuthError
			switch {
			case errors.As(err, &ae):
				if ae.Code != wire.CodeProtocolViolation && ae.Code != wire.CodeInvalidPassword &&
					ae.Code != wire.CodeFeatureNotSupported {
					t.Fatalf("Run() AuthError code %s; want 08P01, 28P01 or 0A000", ae.Code)
				}
				if ae.Code == wire.CodeInvalidPassword && !strings.HasPrefix(ae.Message, "password authentication failed") {
					t.Fatalf("Run() 28P01 message %q", ae.Message)
				}
			case errors.Is(err, wire.ErrProtocolError), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
			default:
				t.Fatalf("Run() error = %v (%T); want AuthError, protocol error or EOF", err, err)
			}
			return
		}

		// Success: every condition for it must hold.
		if !framed || !valid {
			t.Fatalf("Run() succeeded (framed=%v valid=%v) with first %q final %q", framed, valid, first, final)
		}
		if !bytes.HasSuffix(final, []byte(",p=PROOF")) || authMsg == "" {
			t.Fatalf("Run() succeeded without the correct proof: first %q final %q", first, sent)
		}
		if want := "v=" + base64.StdEncoding.EncodeToString(mac(serverKey, authMsg)); string(got) != want {
			t.Fatalf("Run() = %q; want server signature %q", got, want)
		}
		if strings.Split(string(first), ",")[1] != "" {
			t.Fatalf("Run() succeeded with an authorization identity in %q", first)
		}
		flag := string(first)[:1]
		switch {
		case mech == MechSCRAM && flag == "n":
		case mech == MechSCRAM && flag == "y" && !binding:
		case mech == MechSCRAMPlus && binding && strings.HasPrefix(string(first), "p=tls-server-end-point,"):
			cbind, err := base64.StdEncoding.DecodeString(field(sent, "c"))
			if err != nil || !bytes.HasSuffix(cbind, cb.Data) {
				t.Fatalf("Run() accepted channel binding %q; want the server's end point", field(sent, "c"))
			}
		default:
			t.Fatalf("Run() succeeded with mechanism %q, flag %q, binding offered %v", mech, flag, binding)
		}
	})
}
