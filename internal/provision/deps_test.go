package provision

import (
	"testing"

	"github.com/pgshield/pgshield/internal/testutil/deptest"
)

// TestDeps: provisioning builds a server's files from the controllers'
// packages (volume, network, backup), not from the running daemon, which
// it must never need.
func TestDeps(t *testing.T) {
	deptest.DepChecker{
		Pkg: ".",
		BadPrefixes: []string{
			"github.com/pgshield/pgshield/internal/daemon",
			"github.com/pgshield/pgshield/internal/gateway",
		},
	}.Check(t)
}
