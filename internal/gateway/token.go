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
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/postgres"
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

// MethodToken names token logins in the log and audit records.
const MethodToken = "oidc-access-token"

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

// tokenLogin authenticates a token principal: the access token arrives as
// the password, so it is asked for only inside TLS, whatever
// require_secure_transport says. Every refusal is the same 28P01.
func (s *Server) tokenLogin(ctx context.Context, a admitted, rt *runtime, role postgres.Role) (loginResult, error) {
	p := role.Principal
	fail := func(format string, args ...any) (loginResult, error) {
		return loginResult{}, &loginError{Code: wire.CodeInvalidPassword, Method: MethodToken,
			Message: fmt.Sprintf("password authentication failed for user %q", role.Name),
			Reason:  fmt.Sprintf(format, args...)}
	}
	if a.tls == nil {
		return fail("token principals log in over TLS only; no password was asked for")
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
		return fail("token of %d bytes is over the %d-byte limit", le.Len-5, oidc.MaxTokenLen)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		// libpq hangs up to prompt for a password it does not have.
		return loginResult{}, err
	case err != nil:
		return loginResult{}, err
	}
	if len(body) == 0 || body[len(body)-1] != 0 || bytes.IndexByte(body, 0) != len(body)-1 {
		return loginResult{}, fmt.Errorf("%w: malformed password message", wire.ErrProtocolError)
	}
	token := string(body[:len(body)-1])
	if why := s.refusal(role); why != "" {
		return fail("%s", why)
	}
	if rt.tokens.v == nil {
		return fail("%v", rt.tokens.err)
	}
	vctx, cancel := context.WithTimeout(ctx, verifyTimeout)
	id, err := rt.tokens.v.Verify(vctx, token)
	cancel()
	if err != nil {
		var oe *oidc.Error
		if errors.As(err, &oe) {
			return fail("%s", oe.Reason)
		}
		return fail("token check failed")
	}
	switch p.Kind {
	case postgres.PrincipalGroup:
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
