package gateway

import (
	"strings"

	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/pgbackend"
)

// codeInsufficientPrivilege is PostgreSQL's 42501.
const codeInsufficientPrivilege = "42501"

// reservedParamPrefixes are the settings only pgshield may send to
// PostgreSQL: pgshield_guard.client carries the real client, and nothing
// a client names under these prefixes is ever passed on. PostgreSQL folds
// the case of setting names, so the check does too.
var reservedParamPrefixes = []string{"pgshield.", "pgshield_guard."}

func reservedParam(name string) bool {
	name = strings.ToLower(name)
	for _, p := range reservedParamPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// optionsNameReserved reports whether an options value ("-c name=value",
// "--name=value") mentions a reserved setting. PostgreSQL's pg_split_opts
// drops a backslash before any character, and ParseLongOption reads '-' in
// a name as '_' ("-c pgshield-guard.client=..."), so both are undone
// first; any mention is refused, wherever it is.
func optionsNameReserved(opts string) bool {
	o := strings.ToLower(strings.ReplaceAll(strings.ReplaceAll(opts, `\`, ""), "-", "_"))
	for _, p := range reservedParamPrefixes {
		if strings.Contains(o, p) {
			return true
		}
	}
	return false
}

// checkParams refuses a startup packet that names one of pgshield's own
// settings, before any authentication or backend: only the gateway tells
// PostgreSQL who the client is (connectBackend).
func (c *clientConn) checkParams() error {
	for _, p := range c.startup.Params {
		if reservedParam(p.Key) || (strings.EqualFold(p.Key, "options") && optionsNameReserved(p.Value)) {
			c.srv.logClient(c.log, "Refused a startup packet that sets one of pgshield's parameters.", "parameter", p.Key)
			c.srv.cfg.Audit(audit.Event{Type: "connection.refused", Outcome: audit.OutcomeFailure, Client: c.src.String(),
				User: c.user, Database: c.db, Rule: c.rule,
				Reason: "startup packet sets a pgshield parameter (" + p.Key + ")"})
			return clienterr.New(codeInsufficientPrivilege,
				"permission denied to set parameter %q: parameters under \"pgshield.\" and \"pgshield_guard.\" are set by pgshield only", p.Key)
		}
	}
	return nil
}

// clientMethod names a login method as pgshield_guard shows it.
func clientMethod(method string) string {
	switch method {
	case "SCRAM-SHA-256":
		return pgbackend.ClientMethodSCRAM
	case "SCRAM-SHA-256-PLUS":
		return pgbackend.ClientMethodSCRAMPlus
	case MethodToken:
		return pgbackend.ClientMethodToken
	}
	return pgbackend.ClientMethodPassword
}

// clientIdentity is what PostgreSQL is told about this session.
func (c *clientConn) clientIdentity(login loginResult) pgbackend.ClientIdentity {
	id := pgbackend.ClientIdentity{Addr: c.srcAddrPort(), Method: clientMethod(login.method),
		PrincipalObjectID: login.principal, Issuer: login.issuer, TokenExpiry: login.expiry}
	id.SetTLS(c.tls)
	// Transaction pooling hands the backend over without asking whether
	// it needs DISCARD ALL: pgshield_guard says so by itself (txhandover.go).
	id.Report = c.poolMode() == "transaction"
	return id
}
