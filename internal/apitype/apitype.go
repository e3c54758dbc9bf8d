// Package apitype holds every request and response type and every error
// code of pgshield's management API, the JSON the daemon (internal/mgmt)
// and its client (internal/apiclient) exchange over the root-only Unix
// socket. It imports nothing of pgshield's but clienterr, so that the wire
// format is defined in one place and the CLI need not link the daemon's
// internals to speak it. Field names and tags are the wire format: change
// them only with the routes' compatibility in mind.
package apitype

import "github.com/pgshield/pgshield/internal/clienterr"

// Error is the body of every non-2xx answer: {"error": message, "code":
// code}. Its Code is one of the codes below; its Reason never leaves the
// daemon.
type Error = clienterr.Error

// Error codes: what kind of failure an answer reports. The CLI maps each to
// an exit code, and the daemon to an HTTP status.
const (
	// CodeInvalid: the request was refused (a bad value, a rule that
	// already exists); HTTP 400.
	CodeInvalid = "invalid"
	// CodeNotFound: no such parameter, rule, principal or job; HTTP 404.
	CodeNotFound = "not_found"
	// CodeUnavailable: the daemon runs but cannot do it now (PostgreSQL
	// down, the key locked); HTTP 503.
	CodeUnavailable = "unavailable"
	// CodeInternal: anything else; HTTP 500.
	CodeInternal = "internal"
)

// IsCode reports whether code is one of the API's error codes. A
// clienterr.Error with another code (a SQLSTATE from the gateway's side)
// is not an API answer.
func IsCode(code string) bool {
	switch code {
	case CodeInvalid, CodeNotFound, CodeUnavailable, CodeInternal:
		return true
	}
	return false
}

// ShutdownResult is the answer of POST /v1/shutdown.
type ShutdownResult struct {
	Result string `json:"result"` // "shutting down"
}

// DeleteResult is the answer of DELETE /v1/firewall-rules/{name} and
// /v1/network-rules/{name}.
type DeleteResult struct {
	Deleted string `json:"deleted"` // the name asked for
}
