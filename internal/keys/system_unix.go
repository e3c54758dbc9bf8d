//go:build unix

package keys

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// openNoFollow opens path for reading, refusing a symbolic link.
func openNoFollow(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("%s is a symbolic link: %w", path, ErrInsecurePermissions)
	}
	return f, err
}

// checkOwner requires fi, the result of a stat of path, to be owned by this
// process's effective user.
func checkOwner(path string, fi fs.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if euid := os.Geteuid(); int(st.Uid) != euid {
		return fmt.Errorf("keys: %s is owned by uid %d, not by this process's uid %d: %w", path, st.Uid, euid, ErrInsecurePermissions)
	}
	return nil
}
