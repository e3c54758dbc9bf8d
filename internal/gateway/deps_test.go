package gateway

import (
	"testing"

	"github.com/pgshield/pgshield/internal/testutil/deptest"
)

// TestDeps keeps the data path lean: the gateway reaches PostgreSQL through
// internal/pgbackend, never through the instance's lifecycle, keys,
// storage or backups, and so never links a cloud SDK.
func TestDeps(t *testing.T) {
	deptest.DepChecker{
		Pkg: ".",
		BadPrefixes: append([]string{
			"github.com/pgshield/pgshield/internal/postgres",
			"github.com/pgshield/pgshield/internal/keys",
			"github.com/pgshield/pgshield/internal/backup",
			"github.com/pgshield/pgshield/internal/storage",
		}, deptest.CloudSDKs...),
	}.Check(t)
}
