package gateway

import (
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/pgbackend"
)

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
