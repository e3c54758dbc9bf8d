package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/auth/oidc"
	"github.com/pgshield/pgshield/internal/auth/scram"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/pgbackend"
	"github.com/pgshield/pgshield/internal/wire"
)

// loginResult is the outcome of an authentication: the messages that end a
// successful one once the backend is up, and what the audit record says
// about it. method is set for a refused login too.
type loginResult struct {
	method string
	done   []pgproto3.BackendMessage
	// expiry, principal and issuer are set for token logins.
	expiry    time.Time
	principal string
	issuer    string
}

// Login methods in the log and audit records, next to the SCRAM mechanism
// names: a token principal's access token, or a password role's password
// sent in the clear inside TLS (a quoted name while token authentication is
// on; see firstRequest).
const (
	MethodToken    = "oidc-access-token"
	MethodPassword = "password"
)

// login authenticates the client as the role it named, with the first
// request firstRequest decides. A refused login is a *clienterr.Error, the
// same 28P01 whatever the reason; the reason goes to the log and the audit
// record only.
func (c *clientConn) login(ctx context.Context) (loginResult, error) {
	role, err := c.srv.cfg.Roles.LookupRole(ctx, c.user)
	if err != nil {
		c.log.Error("Role lookup failed.", "error", err)
		return loginResult{}, errUnavailable()
	}
	if !role.Exists || !role.CanLogin || (role.ValidUntil != nil && !role.ValidUntil.After(c.srv.cfg.Now())) {
		// The catalog says so, not the client: pooled backends of a role
		// that was dropped or may no longer log in are closed.
		c.srv.pool.DrainRole(c.user)
	}
	var res loginResult
	if firstRequest(c.tls != nil, c.rt.params, c.user) == askPassword {
		res, err = c.srv.cleartextLogin(ctx, c.admitted, c.rt, role)
	} else {
		res, err = c.srv.scramLogin(c.admitted, c.rt, role)
	}
	if ce, ok := clienterr.As(err); ok {
		c.srv.logClient(c.log, "Authentication failed.", "reason", ce.Reason, "code", ce.Code)
		c.srv.cfg.Audit(audit.Event{Type: "auth.failure", Outcome: audit.OutcomeFailure, Client: c.src.String(),
			User: c.user, Database: c.db, Rule: c.rule, Reason: ce.Reason,
			Fields: c.clientFacts(map[string]any{"method": res.method, "sqlstate": ce.Code, "role_exists": role.Exists})})
	}
	return res, err
}

// authRequest is the first authentication request a connection gets.
type authRequest int

const (
	// askSCRAM sends AuthenticationSASL (SCRAM-SHA-256[-PLUS]).
	askSCRAM authRequest = iota
	// askPassword sends AuthenticationCleartextPassword, inside TLS only:
	// a principal answers with an access token, a password role with its
	// password.
	askPassword
)

// firstRequest decides the first authentication request from the transport,
// the parameters and the role name alone, never from the catalog, so that
// it does not reveal whether a name is a token principal, a password role or
// no role at all:
//   - plaintext: SCRAM for every name; a password is never asked for in the
//     clear, so a principal fails (mock exchange) like an unknown name;
//   - TLS, token authentication off (no pgshield.oidc_issuer): SCRAM;
//   - TLS, pgshield.password_auth = off: a token for every name;
//   - TLS, both on: a token for names SQL must quote, the shape of
//     identity-provider names, which principals are required to have
//     (postgres.CheckPrincipal); SCRAM for plain lower-case identifiers. A
//     password role with a quoted name then logs in with its password in
//     the clear inside TLS, checked against its SCRAM verifier, and so
//     without channel binding.
func firstRequest(tls bool, p config.Params, user string) authRequest {
	switch {
	case !tls, p.OIDC.Issuer == "":
		return askSCRAM
	case !p.PasswordAuth, pgbackend.TokenShapedName(user):
		return askPassword
	}
	return askSCRAM
}

// refusal says why role may not log in at all, whatever its credentials;
// "" if it may.
func (s *Server) refusal(role pgbackend.Role) string {
	switch {
	case !role.Exists:
		return "role does not exist"
	case s.cfg.IsReserved(role.Name):
		return "reserved role"
	case role.Superuser:
		return "superuser roles may not log in through the gateway"
	case !role.CanLogin:
		return "role is not permitted to log in"
	case role.ValidUntil != nil && !role.ValidUntil.After(s.cfg.Now()):
		return "password has expired"
	}
	return ""
}

// scramExchange prepares the SCRAM exchange for role; cleartextLogin uses
// its credentials too. Every reason to refuse (unknown, reserved, superuser,
// NOLOGIN, expired, token principal, no SCRAM secret, password logins off)
// still runs the full exchange with mock credentials and ends in the same
// 28P01.
func (s *Server) scramExchange(role pgbackend.Role, cs *tls.ConnectionState, rt *runtime) *scram.Exchange {
	p := rt.params
	x := &scram.Exchange{User: role.Name}
	if cs != nil {
		x.Binding = &rt.cert.EndPoint
	}
	x.Why = s.refusal(role)
	switch {
	case x.Why != "":
	case role.Principal != nil && cs == nil:
		x.Why = "token principals log in over TLS only; no token was asked for"
	case role.Principal != nil && p.OIDC.Issuer == "":
		x.Why = "token principal, but token authentication is off (pgshield.oidc_issuer is not set)"
	case role.Principal != nil:
		// Only a principal made before names had to need quoting.
		x.Why = "token principal with a plain lower-case name: such names get SCRAM, never a token request; recreate it under a name SQL must quote"
	case !p.PasswordAuth:
		x.Why = "password authentication is off (pgshield.password_auth = off)"
	}
	if x.Why == "" {
		creds, err := scram.ParseVerifier(role.Password)
		if err != nil {
			x.Why = "role has no SCRAM-SHA-256 password"
		} else {
			x.Creds, x.Valid = creds, true
		}
	}
	if !x.Valid {
		x.Creds = scram.MockCredentials(s.cfg.MockSecret, role.Name)
	}
	return x
}

// scramLogin authenticates a password role with SCRAM-SHA-256[-PLUS]. It
// converts scram's AuthError, which internal/auth/scram keeps as its own
// type, into the gateway's clienterr.Error here, at the edge.
func (s *Server) scramLogin(a admitted, rt *runtime, role pgbackend.Role) (loginResult, error) {
	x := s.scramExchange(role, a.tls, rt)
	final, err := x.Run(a.conn)
	if err != nil {
		var ae *scram.AuthError
		if errors.As(err, &ae) {
			return loginResult{method: x.Mechanism}, &clienterr.Error{Code: ae.Code, Message: ae.Message, Reason: ae.Reason}
		}
		return loginResult{}, err
	}
	return loginResult{method: x.Mechanism,
		done: []pgproto3.BackendMessage{&pgproto3.AuthenticationSASLFinal{Data: final}, &pgproto3.AuthenticationOk{}}}, nil
}

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

// verify checks token, within verifyTimeout; with no verifier it fails
// with the reason there is none.
func (t *tokenVerifier) verify(ctx context.Context, token string) (oidc.Identity, error) {
	if t.v == nil {
		return oidc.Identity{}, t.err
	}
	vctx, cancel := context.WithTimeout(ctx, verifyTimeout)
	defer cancel()
	return t.v.Verify(vctx, token)
}

// refusal says why id, as t verified it (err), may not log in as the
// principal p; "" if it may.
func (t *tokenVerifier) refusal(p *pgbackend.TokenPrincipal, id oidc.Identity, err error) string {
	var oe *oidc.Error
	switch {
	case t.v == nil:
		return fmt.Sprint(t.err)
	case errors.As(err, &oe):
		return oe.Reason
	case err != nil:
		return "token check failed"
	case p.Kind == pgbackend.PrincipalGroup:
		if !id.InGroup(p.ObjectID) {
			return fmt.Sprintf("token of principal %q does not list group %q in its groups claim", id.Principal, p.ObjectID)
		}
	case id.Principal != p.ObjectID:
		return fmt.Sprintf("token is for principal %q, not the role's object ID %q", id.Principal, p.ObjectID)
	}
	return ""
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
		return loginResult{method: method}, &clienterr.Error{Code: wire.CodeInvalidPassword,
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
	secret, tooLong, err := readSecret(a.conn)
	if tooLong > 0 {
		return fail("%s of %d bytes is over the %d-byte limit", what, tooLong, oidc.MaxTokenLen)
	}
	if err != nil {
		return loginResult{}, err
	}

	// Both checks run for every name, so the time to the answer depends on
	// the mode only; each verdict counts only for the kind of role it is for.
	id, tokenErr := rt.tokens.verify(ctx, secret)
	x := s.scramExchange(role, a.tls, rt)
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
	if why := rt.tokens.refusal(p, id, tokenErr); why != "" {
		return fail("%s", why)
	}
	return loginResult{method: MethodToken, done: []pgproto3.BackendMessage{&pgproto3.AuthenticationOk{}},
		expiry: id.Expiry, principal: id.Principal, issuer: rt.params.OIDC.Issuer}, nil
}

// readSecret reads the PasswordMessage that answers
// AuthenticationCleartextPassword. One over oidc.MaxTokenLen but within
// maxDrain is read to its end and discarded (under the auth timeout), so
// the client gets the refusal instead of a reset while it is still writing;
// tooLong is then its length. A hangup comes back as it is: libpq hangs up
// to prompt for a password it does not have.
func readSecret(conn net.Conn) (secret string, tooLong int, err error) {
	body, err := wire.ReadExpected(conn, 'p', oidc.MaxTokenLen+1)
	var le *wire.LengthError
	switch {
	case errors.As(err, &le) && le.Len > 4 && le.Len-4 <= maxDrain:
		if _, err := io.CopyN(io.Discard, conn, int64(le.Len-4)); err != nil {
			return "", 0, err
		}
		return "", int(le.Len - 5), nil
	case err != nil:
		return "", 0, err
	}
	if len(body) == 0 || body[len(body)-1] != 0 || bytes.IndexByte(body, 0) != len(body)-1 {
		return "", 0, fmt.Errorf("%w: malformed password message", wire.ErrProtocolError)
	}
	return string(body[:len(body)-1]), 0, nil
}
