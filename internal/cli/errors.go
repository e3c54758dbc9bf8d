package cli

import (
	"errors"
	"strings"

	"github.com/pgshield/pgshield/internal/apiclient"
	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/provision"
)

// Exit codes. Numbers are never reused for another meaning.
const (
	exitOK             = 0
	exitError          = 1 // anything not listed below
	exitUsage          = 2 // bad flags or arguments
	exitNotInitialized = 3 // no server in the data directory
	exitNotRunning     = 4 // the daemon is not running
	exitInvalid        = 5 // the server refused a value (bad parameter, bad name)
	exitNotFound       = 6 // no such parameter or object
	exitUnavailable    = 7 // the server is up but PostgreSQL is not available
	exitNotRoot        = 8 // the command needs root
)

// usageError marks a mistake in how the command was called.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

var errNotRoot = errors.New("this command must run as root")

func exitCode(err error) int {
	var ae *apitype.Error
	var ue usageError
	var oe *provision.OptionError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ue), errors.As(err, &oe), strings.HasPrefix(err.Error(), "required flag"),
		strings.HasPrefix(err.Error(), "unknown command"):
		return exitUsage
	case errors.Is(err, errNotRoot):
		return exitNotRoot
	case errors.Is(err, config.ErrNotInitialized):
		return exitNotInitialized
	case errors.Is(err, apiclient.ErrNotRunning):
		return exitNotRunning
	case errors.As(err, &ae):
		switch ae.Code {
		case apitype.CodeInvalid:
			return exitInvalid
		case apitype.CodeNotFound:
			return exitNotFound
		case apitype.CodeUnavailable:
			return exitUnavailable
		}
	}
	return exitError
}
