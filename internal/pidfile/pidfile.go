// Package pidfile is the daemon's pid file: written by the daemon so that
// it refuses to run twice on one data directory, read by the CLI (`up`,
// `down`) to find the daemon without asking it.
package pidfile

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/pgshield/pgshield/internal/config"
)

// Write records this process in the pid file at path, unless the pid it
// holds is another live process.
func Write(path string) error {
	if pid, alive := Read(path); alive && pid != os.Getpid() {
		return fmt.Errorf("pgshield is already running on this data directory (pid %d)", pid)
	}
	return config.WriteFileAtomic(path, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644)
}

// Read returns the pid recorded at path, and whether that process lives.
// A zombie does not: a daemon killed -9 stays one until its parent (init,
// once `up` has exited) reaps it, and `up` right after must not refuse.
func Read(path string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, Alive(pid)
}

// Alive reports whether process pid exists and has not exited: a zombie
// (exited, not yet reaped by its parent) is not alive.
func Alive(pid int) bool {
	return pid > 0 && syscall.Kill(pid, 0) == nil && !zombie(pid)
}

// zombie reports whether pid has exited and awaits reaping.
func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses and may
	// hold any byte.
	i := strings.LastIndexByte(string(b), ')')
	return i >= 0 && i+2 < len(b) && (b[i+2] == 'Z' || b[i+2] == 'X')
}
