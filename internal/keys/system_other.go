//go:build !unix

package keys

import (
	"fmt"
	"io/fs"
	"os"
)

// openNoFollow opens path for reading, refusing a symbolic link. Outside
// Unix the check and the open are two steps.
func openNoFollow(path string) (*os.File, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return nil, fmt.Errorf("%s is a symbolic link: %w", path, ErrInsecurePermissions)
	}
	return os.Open(path)
}

// checkOwner is a no-op outside Unix.
func checkOwner(string, fs.FileInfo) error { return nil }
