package apitype

import (
	"testing"

	"github.com/pgshield/pgshield/internal/testutil/deptest"
)

// TestDeps keeps the API's types a leaf: a client speaks the API without
// linking the daemon, PostgreSQL's driver or a cloud SDK through them.
func TestDeps(t *testing.T) {
	deptest.DepChecker{
		Pkg: ".",
		BadPrefixes: append([]string{
			"github.com/pgshield/pgshield/internal/daemon",
			"github.com/pgshield/pgshield/internal/mgmt",
			"github.com/pgshield/pgshield/internal/gateway",
			"github.com/pgshield/pgshield/internal/postgres",
			"github.com/pgshield/pgshield/internal/pgbackend",
			"github.com/pgshield/pgshield/internal/backup",
			"github.com/pgshield/pgshield/internal/keys",
			"github.com/pgshield/pgshield/internal/storage",
			"github.com/pgshield/pgshield/internal/config",
			"github.com/jackc/pgx",
		}, deptest.CloudSDKs...),
	}.Check(t)
}
