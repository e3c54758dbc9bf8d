package apiclient

import (
	"testing"

	"github.com/pgshield/pgshield/internal/testutil/deptest"
)

// TestDeps: the client knows the API by its types alone, not by the
// daemon that serves it.
func TestDeps(t *testing.T) {
	deptest.DepChecker{
		Pkg: ".",
		BadPrefixes: append([]string{
			"github.com/pgshield/pgshield/internal/daemon",
			"github.com/pgshield/pgshield/internal/mgmt",
			"github.com/pgshield/pgshield/internal/gateway",
			"github.com/pgshield/pgshield/internal/postgres",
			"github.com/pgshield/pgshield/internal/keys",
			"github.com/pgshield/pgshield/internal/storage",
		}, deptest.CloudSDKs...),
	}.Check(t)
}
