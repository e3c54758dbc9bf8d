package pgbackend

import (
	"testing"

	"github.com/pgshield/pgshield/internal/testutil/deptest"
)

// TestDeps keeps pgbackend to the wire codec and pgx: the gateway imports
// it, and what it imports the data path links.
func TestDeps(t *testing.T) {
	deptest.DepChecker{
		Pkg: ".",
		BadPrefixes: append([]string{
			"github.com/pgshield/pgshield/internal/postgres",
			"github.com/pgshield/pgshield/internal/keys",
			"github.com/pgshield/pgshield/internal/backup",
			"github.com/pgshield/pgshield/internal/storage",
			"github.com/pgshield/pgshield/internal/audit",
		}, deptest.CloudSDKs...),
	}.Check(t)
}
