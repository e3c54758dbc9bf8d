package tlsconf

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// ReadKeyFile reads a private key file after the checks CheckKeyFile
// documents, from the one descriptor it checked (fstat), so the file
// checked is the file read. Before opening, every directory from / to
// the file, through every symbolic link on the way (certbot's live/ links
// into archive/), must be owned by root or this process's user and not
// writable by group or others, bar a root-owned sticky directory such as
// /tmp: otherwise someone else could swap a link or a directory between
// the check and the read. At most max bytes are read.
func ReadKeyFile(path string, max int) ([]byte, error) {
	real, err := trustedPath(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	dir := filepath.Dir(real)
	di, err := os.Lstat(dir)
	if err != nil {
		return nil, fmt.Errorf("key file directory: %w", err)
	}
	if di.Mode()&fs.ModeSymlink != 0 || !di.IsDir() {
		return nil, fmt.Errorf("key file directory %s is not a plain directory", dir)
	}
	if perm := di.Mode().Perm(); perm&^0o700 != 0 {
		return nil, fmt.Errorf("key file directory %s has mode %04o, wider than 0700; refusing it (chmod 700 it)", dir, perm)
	}
	if err := checkOwner(dir, di); err != nil {
		return nil, err
	}
	// O_NONBLOCK: a FIFO put there must not block the open.
	f, err := os.OpenFile(real, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("key file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&^0o600 != 0 {
		return nil, fmt.Errorf("key file %s has mode %04o, wider than 0600; refusing it (chmod 600 it after checking who may have read it)", path, perm)
	}
	if err := checkOwner(path, fi); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(f, int64(max)+1))
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	if len(b) > max {
		return nil, fmt.Errorf("key file %s is over %d bytes", path, max)
	}
	return b, nil
}

// trustedPath resolves path component by component, requiring each
// directory it passes through to be one only root or this user can
// change, and returns the path without symbolic links.
func trustedPath(path string) (string, error) {
	if !filepath.IsAbs(path) {
		return "", fmt.Errorf("%s is not an absolute path", path)
	}
	const maxLinks = 40 // the kernel's limit in one lookup
	links := 0
	done, rest := "/", strings.Split(filepath.Clean(path), "/")
	if err := trustedDir("/"); err != nil {
		return "", err
	}
	for len(rest) > 0 {
		name := rest[0]
		rest = rest[1:]
		switch name {
		case "", ".":
			continue
		case "..":
			done = filepath.Dir(done)
			continue
		}
		p := filepath.Join(done, name)
		fi, err := os.Lstat(p)
		if err != nil {
			return "", err
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			if links++; links > maxLinks {
				return "", fmt.Errorf("%s: too many symbolic links", path)
			}
			target, err := os.Readlink(p)
			if err != nil {
				return "", err
			}
			if filepath.IsAbs(target) {
				done = "/"
			}
			rest = append(strings.Split(target, "/"), rest...)
			continue
		case len(rest) == 0:
			return p, nil // the file itself: the caller checks it
		case !fi.IsDir():
			return "", fmt.Errorf("%s is not a directory", p)
		}
		if err := trustedDir(p); err != nil {
			return "", err
		}
		done = p
	}
	return "", errors.New("the path names no file")
}

func trustedDir(p string) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: no owner information", p)
	}
	if st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("directory %s is owned by uid %d: its owner could swap the key file; refusing it", p, st.Uid)
	}
	if perm := fi.Mode(); perm.Perm()&0o022 != 0 && !(perm&fs.ModeSticky != 0 && st.Uid == 0) {
		return fmt.Errorf("directory %s has mode %04o: group or others could swap the key file; refusing it (chmod go-w it)", p, perm.Perm())
	}
	return nil
}
