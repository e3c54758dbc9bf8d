// Package api is what is left of the management API's first package: the
// names internal/daemon's storage and key files still use until they move
// to internal/mgmt and internal/apitype. New code uses those packages; this
// one goes when nothing imports it.
package api

import (
	"net/http"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/mgmt"
)

// Error is apitype.Error.
type Error = apitype.Error

// Error codes, as in apitype.
const (
	CodeInvalid     = apitype.CodeInvalid
	CodeNotFound    = apitype.CodeNotFound
	CodeUnavailable = apitype.CodeUnavailable
	CodeInternal    = apitype.CodeInternal
)

// Errorf is clienterr.New.
func Errorf(code, format string, args ...any) *Error { return clienterr.New(code, format, args...) }

// DecodeBody is mgmt.DecodeBody.
func DecodeBody(r *http.Request, v any) error { return mgmt.DecodeBody(r, v) }

// HandlerFunc is mgmt.HandlerFunc.
type HandlerFunc = mgmt.HandlerFunc

// Route is an entry of a route table the daemon no longer serves: the
// routes are mgmt.Routes.
type Route struct {
	Method, Pattern string
	Write           bool
	Handler         HandlerFunc
	Raw             http.Handler
}
