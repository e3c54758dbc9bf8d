package cli

import (
	"errors"
	"fmt"
	"testing"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/provision"
)

func TestExitCode(t *testing.T) {
	opt := &provision.OptionError{Err: errors.New("invalid --listen")}
	for _, tc := range []struct {
		name string
		err  error
		want int
	}{
		{"usage", usageError{errors.New("x")}, exitUsage},
		{"provision option", opt, exitUsage},
		{"provision option, wrapped", fmt.Errorf("init: %w", opt), exitUsage},
		// A failed provisioning run whose cleanup failed too keeps the
		// failed step's code.
		{"coded, joined with an undo error", errors.Join(clienterr.New(apitype.CodeNotFound, "no backup"), errors.New("cleanup")), exitNotFound},
		{"plain", errors.New("x"), exitError},
	} {
		if got := exitCode(tc.err); got != tc.want {
			t.Errorf("%s: exitCode(%v) = %d; want %d", tc.name, tc.err, got, tc.want)
		}
	}
}
