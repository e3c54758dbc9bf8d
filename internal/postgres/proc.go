package postgres

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"syscall"
)

// OSUser is the unprivileged account PostgreSQL runs as.
type OSUser struct {
	Name     string
	UID, GID uint32
	Home     string
}

// LookupOSUser resolves the account PostgreSQL runs as.
func LookupOSUser(name string) (OSUser, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return OSUser{}, fmt.Errorf("PostgreSQL OS user %q: %w (is postgresql-15 installed?)", name, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return OSUser{}, fmt.Errorf("PostgreSQL OS user %q has a non-numeric uid/gid", name)
	}
	return OSUser{Name: name, UID: uint32(uid), GID: uint32(gid), Home: u.HomeDir}, nil
}

// Command prepares a child that runs as u with a minimal environment: no
// secret of pgshield's reaches a child through its environment or argv.
func (u OSUser) Command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LANG=C.UTF-8", "LC_ALL=C.UTF-8", "HOME=" + u.Home}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: u.UID, Gid: u.GID, NoSetGroups: true},
		Setpgid:    true, // keep terminal signals aimed at pgshield away from it
	}
	return cmd
}

// Chown makes path owned by u.
func (u OSUser) Chown(path string) error {
	return os.Chown(path, int(u.UID), int(u.GID))
}
