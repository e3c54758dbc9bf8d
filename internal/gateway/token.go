package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/auth/oidc"
	"github.com/pgshield/pgshield/internal/auth/scram"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/pgbackend"
	"github.com/pgshield/pgshield/internal/wire"
)

// loginResult is a successful authentication: the messages that end it once
// the backend is up, and what the audit record says about it.
type loginResult struct {
	method string
	done   []pgproto3.BackendMessage
	// expiry and principal are set for token logins.
	expiry    time.Time
	principal string
}

// loginError is a refused login: Code and Message go to the client, Reason
// only to the log and audit record.
type loginError struct {
	Code, Message, Reason, Method string
}

func (e *loginError) Error() string { return e.Message + ": " + e.Reason }

// Login methods in the log and audit records, next to the SCRAM mechanism
// names: a token principal's access token, or a password role's password
// sent in the clear inside TLS (a quoted name while token authentication is
// on; see firstRequest).
const (
	MethodToken    = "oidc-access-token"
	MethodPassword = "password"
)

// tokenVerifier is built from the OIDC parameters; err says why token
// logins cannot work (e.g. no issuer configured).
type tokenVerifier struct {
	v   *oidc.Verifier
	err error
}

// newTokenVerifier builds the verifier for p, or keeps old when the
// parameters did not change, so its key cache survives unrelated changes.
func newTokenVerifier(p config.OIDCParams, old *runtime) *tokenVerifier {
	if old != nil && old.params.OIDC == p {
		return old.tokens
	}
	if p.Issuer == "" {
		return &tokenVerifier{err: errors.New("token authentication is off (pgshield.oidc_issuer is not set)")}
	}
	client, err := oidc.NewHTTPClient(p.CAFile)
	if err != nil {
		return &tokenVerifier{err: err}
	}
	v, err := oidc.NewVerifier(oidc.Config{Issuer: p.Issuer, Audience: p.Audience, PrincipalClaim: p.PrincipalClaim,
		GroupsClaim: p.GroupsClaim, Tenant: p.Tenant, RefreshInterval: p.JWKSRefresh, Client: client})
	if err != nil {
		return &tokenVerifier{err: fmt.Errorf("token authentication is not configured: %w", err)}
	}
	return &tokenVerifier{v: v}
}

// maxDrain is the largest oversized password message read and discarded
// before answering; anything larger is a protocol violation.
const maxDrain = 1 << 20

// verifyTimeout bounds a token check, including a discovery or key fetch.
const verifyTimeout = 15 * time.Second

// verifyPassword is scram.VerifyPassword; tests watch which credentials
// it is given.
var verifyPassword = scram.VerifyPassword

// cleartextLogin answers askPassword (see firstRequest): it asks for a
// password, only ever inside TLS, and checks what arrives as an access token
// for a token principal, or against the SCRAM verifier for a password role.
// Both checks run whatever the name turns out to be (the token one while
// token authentication is configured, the password one while
// pgshield.password_auth is on, against mock credentials unless the role
// may log in with its own), and every refusal is the same 28P01: neither the
// answer nor the work before it tells principals, password roles and
// unknown names apart.
func (s *Server) cleartextLogin(ctx context.Context, a admitted, rt *runtime, role pgbackend.Role) (loginResult, error) {
	p := role.Principal
	method, what := MethodPassword, "password"
	if p != nil {
		method, what = MethodToken, "token"
	}
	fail := func(format string, args ...any) (loginResult, error) {
		return loginResult{}, &loginError{Code: wire.CodeInvalidPassword, Method: method,
			Message: fmt.Sprintf("password authentication failed for user %q", role.Name),
			Reason:  fmt.Sprintf(format, args...)}
	}
	if a.tls == nil {
		// firstRequest never gets here without TLS; this keeps it so.
		return fail("a password or token is asked for over TLS only")
	}
	if err := wire.Send(a.conn, &pgproto3.AuthenticationCleartextPassword{}); err != nil {
		return loginResult{}, err
	}
	body, err := wire.ReadExpected(a.conn, 'p', oidc.MaxTokenLen+1)
	var le *wire.LengthError
	switch {
	case errors.As(err, &le) && le.Len > 4 && le.Len-4 <= maxDrain:
		// Read the rest (bounded, under the auth timeout) so the client
		// gets the answer instead of a reset while it is still writing.
		if _, err := io.CopyN(io.Discard, a.conn, int64(le.Len-4)); err != nil {
			return loginResult{}, err
		}
		return fail("%s of %d bytes is over the %d-byte limit", what, le.Len-5, oidc.MaxTokenLen)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		// libpq hangs up to prompt for a password it does not have.
		return loginResult{}, err
	case err != nil:
		return loginResult{}, err
	}
	if len(body) == 0 || body[len(body)-1] != 0 || bytes.IndexByte(body, 0) != len(body)-1 {
		return loginResult{}, fmt.Errorf("%w: malformed password message", wire.ErrProtocolError)
	}
	secret := string(body[:len(body)-1])

	// Both checks run for every name, so the time to the answer depends on
	// the mode only; each verdict counts only for the kind of role it is for.
	id, tokenErr := oidc.Identity{}, rt.tokens.err
	if rt.tokens.v != nil {
		vctx, cancel := context.WithTimeout(ctx, verifyTimeout)
		id, tokenErr = rt.tokens.v.Verify(vctx, secret)
		cancel()
	}
	x := s.scramExchange(role, a.tls, rt.params)
	match := rt.params.PasswordAuth && verifyPassword(x.Creds, secret)

	if why := s.refusal(role); why != "" {
		return fail("%s", why)
	}
	if p == nil {
		switch {
		case !x.Valid:
			return fail("%s", x.Why)
		case !match:
			return fail("wrong password")
		}
		return loginResult{method: MethodPassword, done: []pgproto3.BackendMessage{&pgproto3.AuthenticationOk{}}}, nil
	}
	if rt.tokens.v == nil {
		return fail("%v", rt.tokens.err)
	}
	if tokenErr != nil {
		var oe *oidc.Error
		if errors.As(tokenErr, &oe) {
			return fail("%s", oe.Reason)
		}
		return fail("token check failed")
	}
	switch p.Kind {
	case pgbackend.PrincipalGroup:
		if !id.InGroup(p.ObjectID) {
			return fail("token of principal %q does not list group %q in its groups claim", id.Principal, p.ObjectID)
		}
	default:
		if id.Principal != p.ObjectID {
			return fail("token is for principal %q, not the role's object ID %q", id.Principal, p.ObjectID)
		}
	}
	return loginResult{method: MethodToken, done: []pgproto3.BackendMessage{&pgproto3.AuthenticationOk{}},
		expiry: id.Expiry, principal: id.Principal}, nil
}

// endAtExpiry ends sess when its token expires; the returned func cancels.
func (s *Server) endAtExpiry(sess *session, expiry time.Time, audit func()) (stop func()) {
	t := time.AfterFunc(expiry.Sub(s.cfg.Now()), func() {
		audit()
		sess.terminate(wire.ErrorMessage(wire.CodeAdminShutdown,
			"terminating connection because its access token expired"))
	})
	return func() { t.Stop() }
}
