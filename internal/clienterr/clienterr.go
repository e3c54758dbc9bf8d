// Package clienterr is the one error type for what reaches a client: a
// PostgreSQL client of the gateway (Code is a SQLSTATE, sent in an
// ErrorResponse) or the CLI through the management API (Code is an API
// code such as "invalid"). Its Message and Detail are what the client is
// shown and must be safe to show; Reason is for the log and the audit record
// only (why a login really failed, while the client sees one 28P01) and
// never leaves pgshield.
package clienterr

import (
	"errors"
	"fmt"
)

// Error is an error a client is shown as it is.
//
// Message comes before Code so that the management API's error body keeps
// its key order, {"error": ..., "code": ...}.
type Error struct {
	// Message is the primary, client-facing text.
	Message string `json:"error"`
	// Code is a SQLSTATE (gateway) or an API code (management API).
	Code string `json:"code"`
	// Detail is optional client-facing detail.
	Detail string `json:"detail,omitempty"`
	// Reason is the precise cause, for pgshield's log and audit only.
	Reason string `json:"-"`
}

func (e *Error) Error() string {
	if e.Reason != "" {
		return e.Message + ": " + e.Reason
	}
	return e.Message
}

// New makes an Error with a formatted message.
func New(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// As returns the Error in err's chain, if any.
func As(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}
