package ctl

import (
	"testing"

	"github.com/pgshield/pgshield/internal/testutil/deptest"
)

// TestDeps keeps the controllers apart from the composition root and the
// data path: a controller reaches another only through what its Config
// names, never by importing the daemon, and the gateway's sessions are
// reached through the daemon's Quiesce, so no controller links the
// gateway.
func TestDeps(t *testing.T) {
	deptest.DepChecker{
		Pkg: "./...",
		BadPrefixes: []string{
			"github.com/pgshield/pgshield/internal/daemon",
			"github.com/pgshield/pgshield/internal/gateway",
			"github.com/pgshield/pgshield/internal/cli",
			"github.com/pgshield/pgshield/internal/provision",
		},
	}.Check(t)
}

// TestConfDeps: the configuration store is a leaf every controller
// imports; it must stay one.
func TestConfDeps(t *testing.T) {
	deptest.DepChecker{
		Pkg:         "./conf",
		BadPrefixes: append([]string{"github.com/pgshield/pgshield/internal/ctl/keys", "github.com/pgshield/pgshield/internal/postgres"}, deptest.CloudSDKs...),
	}.Check(t)
}
