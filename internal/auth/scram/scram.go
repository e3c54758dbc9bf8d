// Package scram runs the server side of PostgreSQL's SASL authentication
// with SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (channel binding), using
// github.com/xdg-go/scram for the mechanism itself.
//
// RFC 5802 (SCRAM), RFC 7677 (SCRAM-SHA-256), RFC 5929 (tls-server-end-point
// channel binding), and PostgreSQL's "SASL Authentication" protocol section.
package scram

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"

	"github.com/pgshield/pgshield/internal/wire"
)

// Mechanism names as PostgreSQL spells them.
const (
	MechSCRAM     = "SCRAM-SHA-256"
	MechSCRAMPlus = "SCRAM-SHA-256-PLUS"
)

// DefaultIterations matches PostgreSQL's scram_iterations default.
const DefaultIterations = 4096

// Credentials are a role's stored SCRAM secrets.
type Credentials = scram.StoredCredentials

// ErrNoVerifier means rolpassword is not a SCRAM-SHA-256 verifier (unset or md5).
var ErrNoVerifier = errors.New("role has no SCRAM-SHA-256 secret")

// ParseVerifier parses a pg_authid.rolpassword value of the form
// SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>.
func ParseVerifier(s string) (Credentials, error) {
	rest, ok := strings.CutPrefix(s, "SCRAM-SHA-256$")
	if !ok {
		return Credentials{}, ErrNoVerifier
	}
	parts := strings.Split(rest, "$")
	if len(parts) != 2 {
		return Credentials{}, fmt.Errorf("%w: malformed verifier", ErrNoVerifier)
	}
	itSalt := strings.SplitN(parts[0], ":", 2)
	keys := strings.SplitN(parts[1], ":", 2)
	if len(itSalt) != 2 || len(keys) != 2 {
		return Credentials{}, fmt.Errorf("%w: malformed verifier", ErrNoVerifier)
	}
	iters, err := strconv.Atoi(itSalt[0])
	if err != nil || iters < 1 {
		return Credentials{}, fmt.Errorf("%w: bad iteration count", ErrNoVerifier)
	}
	salt, err1 := base64.StdEncoding.DecodeString(itSalt[1])
	stored, err2 := base64.StdEncoding.DecodeString(keys[0])
	server, err3 := base64.StdEncoding.DecodeString(keys[1])
	if err1 != nil || err2 != nil || err3 != nil || len(stored) != sha256.Size || len(server) != sha256.Size {
		return Credentials{}, fmt.Errorf("%w: bad encoding", ErrNoVerifier)
	}
	return Credentials{KeyFactors: scram.KeyFactors{Salt: string(salt), Iters: iters}, StoredKey: stored, ServerKey: server}, nil
}

// Verifier computes the rolpassword string for password, so that the
// plaintext never has to reach PostgreSQL.
func Verifier(username, password string, salt []byte, iters int) (string, error) {
	c, err := scram.SHA256.NewClient(username, password, "")
	if err != nil {
		return "", err
	}
	sc := c.GetStoredCredentials(scram.KeyFactors{Salt: string(salt), Iters: iters})
	enc := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", iters, enc(salt), enc(sc.StoredKey), enc(sc.ServerKey)), nil
}

// MockCredentials returns deterministic fake credentials for a role that
// must not log in (unknown, NOLOGIN, expired, no verifier, reserved), so the
// exchange looks the same as for a real role: same salt every time for the
// same name, same iteration count, same work.
func MockCredentials(secret []byte, username string) Credentials {
	mac := func(label string) []byte {
		h := hmac.New(sha256.New, secret)
		h.Write([]byte(label))
		h.Write([]byte{0})
		h.Write([]byte(username))
		return h.Sum(nil)
	}
	return Credentials{
		KeyFactors: scram.KeyFactors{Salt: string(mac("salt")[:16]), Iters: DefaultIterations},
		StoredKey:  mac("stored"),
		ServerKey:  mac("server"),
	}
}

// AuthError is a failed exchange: Code and Message go to the client, Reason
// is for the audit record and logs only.
type AuthError struct {
	Code    string
	Message string
	Reason  string
}

func (e *AuthError) Error() string { return e.Message + ": " + e.Reason }

// Exchange describes one authentication attempt.
type Exchange struct {
	// User is the startup packet's user; SCRAM's own user name is ignored,
	// as PostgreSQL does.
	User  string
	Creds Credentials
	// Valid is false when the attempt must fail whatever the proof.
	Valid bool
	// Why explains an invalid attempt (audit only).
	Why string
	// Binding is the connection's tls-server-end-point data; nil for a
	// plaintext connection, which is then offered no -PLUS mechanism.
	Binding *scram.ChannelBinding
	// Mechanism is the one the client chose, once Run has read it.
	Mechanism string
}

// Run drives the SASL exchange on rw. It returns the server-final-message
// that the caller sends in AuthenticationSASLFinal once the backend is up.
func (x *Exchange) Run(rw io.ReadWriter) (serverFinal []byte, err error) {
	mechs := []string{MechSCRAM}
	if x.Binding != nil {
		mechs = []string{MechSCRAMPlus, MechSCRAM}
	}
	if err := wire.Send(rw, &pgproto3.AuthenticationSASL{AuthMechanisms: mechs}); err != nil {
		return nil, err
	}
	body, err := readSASL(rw)
	if err != nil {
		return nil, err
	}
	mech, first, err := wire.ParseSASLInitialResponse(body)
	if err != nil {
		return nil, protocol("%v", err)
	}
	plus := false
	x.Mechanism = mech
	switch {
	case mech == MechSCRAM:
	case mech == MechSCRAMPlus && x.Binding != nil:
		plus = true
	default:
		return nil, protocol("client selected an invalid SASL authentication mechanism")
	}
	// PostgreSQL ties the gs2 flag to the mechanism: 'p' only with -PLUS.
	if len(first) == 0 || (first[0] == 'p') != plus {
		return nil, protocol("malformed SCRAM message: channel binding flag does not match mechanism")
	}
	srv, err := scram.SHA256.NewServer(func(string) (Credentials, error) { return x.Creds, nil })
	if err != nil {
		return nil, err
	}
	var conv *scram.ServerConversation
	if x.Binding != nil {
		conv = srv.NewConversationWithChannelBinding(*x.Binding)
	} else {
		conv = srv.NewConversation()
	}
	s1, err := conv.Step(string(first))
	if err != nil {
		return nil, protocol("malformed SCRAM message")
	}
	// Like PostgreSQL, refuse an authzid rather than silently ignore it
	// (RFC 4422: the server must not succeed without honouring it). A
	// successful Step guarantees the gs2 header's authzid field exists.
	if strings.SplitN(string(first), ",", 3)[1] != "" {
		msg := "client uses authorization identity, but it is not supported"
		return nil, &AuthError{Code: wire.CodeFeatureNotSupported, Message: msg, Reason: msg}
	}
	if err := wire.Send(rw, &pgproto3.AuthenticationSASLContinue{Data: []byte(s1)}); err != nil {
		return nil, err
	}
	body, err = readSASL(rw)
	if err != nil {
		return nil, err
	}
	s2, err := conv.Step(string(body))
	switch {
	case err != nil && s2 == scram.ErrInvalidProof && !x.Valid:
		// Mock credentials fail the proof: the reason is why they were used.
		return nil, x.failed(x.Why)
	case err != nil && s2 == scram.ErrInvalidProof:
		return nil, x.failed("wrong password")
	case err != nil && s2 == scram.ErrChannelBindingsDontMatch:
		return nil, protocol("SCRAM channel binding check failed")
	case err != nil:
		return nil, protocol("malformed SCRAM message")
	case !conv.Valid():
		return nil, x.failed("wrong password")
	case !x.Valid:
		return nil, x.failed(x.Why)
	}
	return []byte(s2), nil
}

// readSASL reads the client's next SASL message ('p'); anything else, or an
// impossible length, is a protocol violation.
func readSASL(r io.Reader) ([]byte, error) {
	body, err := wire.ReadExpected(r, 'p', wire.MaxAuthMessageLen)
	var ue *wire.UnexpectedMessageError
	switch {
	case errors.As(err, &ue):
		return nil, protocol("expected SASL response, got message type %d", ue.Got)
	case errors.Is(err, wire.ErrProtocolError):
		return nil, protocol("invalid SASL message length")
	}
	return body, err
}

func (x *Exchange) failed(reason string) error {
	return &AuthError{Code: wire.CodeInvalidPassword,
		Message: fmt.Sprintf("password authentication failed for user %q", x.User), Reason: reason}
}

func protocol(format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	return &AuthError{Code: wire.CodeProtocolViolation, Message: msg, Reason: msg}
}
