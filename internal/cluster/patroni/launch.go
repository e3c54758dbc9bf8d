package patroni

import (
	_ "embed"

	"github.com/pgshield/pgshield/internal/config"
)

// Launcher is the Python program pgshield starts Patroni with (launch.py):
// Patroni's own entry point, after an upstream fix Debian 12's 3.0.2
// lacks (a paused leader must not take the leader key back from the node
// promoted meanwhile; patroni/patroni#2689, in 3.0.3).
//
//go:embed launch.py
var Launcher []byte

// WriteLauncher writes Launcher to path, root's and readable by gid
// (Patroni's group): Patroni's user can run it, not change it.
func WriteLauncher(path string, gid int) error {
	return config.WriteFileAtomicOwned(path, Launcher, 0o640, 0, gid)
}
