package cli

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// checkRootOnly refuses a binary that systemd would run as root at every
// start when anyone but root could replace it: the file, every directory
// on its path and every directory a symbolic link on the way leads
// through must be owned by root and not writable by group or others (a
// sticky /tmp is refused too: the unit's own /tmp is private anyway).
func checkRootOnly(path string) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("%s is not an absolute path", path)
	}
	const maxLinks = 40 // as the kernel's limit on symbolic links in a lookup
	links := 0
	done, rest := "/", strings.Split(strings.TrimPrefix(filepath.Clean(path), "/"), "/")
	if err := rootOnly("/", nil); err != nil {
		return err
	}
	for len(rest) > 0 {
		name := rest[0]
		rest = rest[1:]
		if name == "" || name == "." {
			continue
		}
		if name == ".." {
			done = filepath.Dir(done)
			continue
		}
		p := filepath.Join(done, name)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			// The link's own directory was checked; where it leads is
			// checked from its start.
			if links++; links > maxLinks {
				return fmt.Errorf("%s: too many symbolic links", path)
			}
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if filepath.IsAbs(target) {
				done = "/"
			}
			rest = append(strings.Split(target, "/"), rest...)
			continue
		}
		if err := rootOnly(p, fi); err != nil {
			return err
		}
		if len(rest) > 0 && !fi.IsDir() {
			return fmt.Errorf("%s is not a directory", p)
		}
		if len(rest) == 0 && !fi.Mode().IsRegular() {
			return fmt.Errorf("%s is not a regular file", p)
		}
		done = p
	}
	return nil
}

// rootOnly requires p (fi, or stat'd when nil) to be root's and not
// writable by group or others.
func rootOnly(p string, fi fs.FileInfo) error {
	if fi == nil {
		var err error
		if fi, err = os.Lstat(p); err != nil {
			return err
		}
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: no owner information", p)
	}
	if st.Uid != 0 {
		return fmt.Errorf("%s is owned by uid %d, not root: whoever owns it could replace what the service runs as root", p, st.Uid)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("%s has mode %04o: group or others could replace what the service runs as root (chmod go-w it)", p, perm)
	}
	return nil
}
