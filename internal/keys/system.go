package keys

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"

	"gocloud.dev/secrets"
)

// KEKSize is the size in bytes of a system-managed key-encryption key: an
// AES-256 key (and, for keys wrapped before AES-256-GCM, a NaCl secretbox key).
const KEKSize = 32

// DefaultSystemKeyDir is the directory that holds system-managed KEKs, one
// file <server-id>.key per server.
const DefaultSystemKeyDir = "/etc/pgshield/keys"

// Modes of the system KEK file and of its directory. Open refuses anything
// wider.
const (
	kekFileMode fs.FileMode = 0o600
	kekDirMode  fs.FileMode = 0o700
)

// ErrInsecurePermissions is wrapped by errors from Open and CreateSystemKEK
// when a system KEK file, or its directory, is readable or writable by
// others than its owner, is not owned by this process's user, or is a
// symbolic link.
var ErrInsecurePermissions = errors.New("insecure permissions")

// SystemKeyURI returns the key URI of the system-managed KEK in the file at
// path, an absolute path: pgshield-local:///path.
func SystemKeyURI(path string) string {
	return (&url.URL{Scheme: SchemeSystem, Path: path}).String()
}

// CreateSystemKEK creates a new random system KEK in the file at path (an
// absolute path) with mode 0600, creating its directory with mode 0700 if
// needed. It refuses to replace an existing file (the error wraps
// fs.ErrExist): every key wrapped by the old KEK would be lost. It refuses a
// directory that exists with a mode wider than 0700. The file appears whole
// or not at all: it is written to a temporary file, synced, and then linked
// into place.
func CreateSystemKEK(path string) (err error) {
	if err := checkKEKPath(path); err != nil {
		return err
	}
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("keys: create KEK %s: %w; refusing to replace a key-encryption key", path, fs.ErrExist)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("keys: create KEK: %w", err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, kekDirMode); err != nil {
		return fmt.Errorf("keys: create KEK: %w", err)
	}
	if err := checkKEKDir(dir); err != nil {
		return err
	}

	var kek [KEKSize]byte
	defer Wipe(kek[:])
	if _, err := io.ReadFull(rand.Reader, kek[:]); err != nil {
		return fmt.Errorf("keys: create KEK: reading randomness: %w", err)
	}

	tmp, err := os.CreateTemp(dir, ".kek-*.tmp") // mode 0600
	if err != nil {
		return fmt.Errorf("keys: create KEK: %w", err)
	}
	tmpName := tmp.Name()
	defer func() {
		// On success the KEK is also linked at path; the temporary name
		// goes either way.
		if rerr := os.Remove(tmpName); rerr != nil && err == nil && !errors.Is(rerr, fs.ErrNotExist) {
			err = fmt.Errorf("keys: create KEK: %w", rerr)
		}
	}()
	if err := tmp.Chmod(kekFileMode); err != nil {
		tmp.Close()
		return fmt.Errorf("keys: create KEK: %w", err)
	}
	if _, err := tmp.Write(kek[:]); err != nil {
		tmp.Close()
		return fmt.Errorf("keys: create KEK: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("keys: create KEK: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("keys: create KEK: %w", err)
	}
	// link(2), unlike rename(2), fails if path exists: a KEK created
	// concurrently is never replaced.
	if err := os.Link(tmpName, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("keys: create KEK %s: %w; refusing to replace a key-encryption key", path, fs.ErrExist)
		}
		return fmt.Errorf("keys: create KEK: %w", err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("keys: create KEK: %w", err)
	}
	return nil
}

// openSystemKeeper opens the system keeper (see gcm.go) over the KEK file named by
// a pgshield-local URL.
func openSystemKeeper(u *url.URL) (*secrets.Keeper, error) {
	red := RedactURI(u.String())
	if u.Opaque != "" || u.User != nil || (u.Host != "" && u.Host != "localhost") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("keys: open %s: want %s:///absolute/path/to/kek with no host, query or fragment", red, SchemeSystem)
	}
	var kek [KEKSize]byte
	defer Wipe(kek[:])
	if err := readKEK(u.Path, &kek); err != nil {
		return nil, err
	}
	return newSystemKeeper(kek) // it keeps its own copies
}

// readKEK reads the KEK file at path into kek after checking the modes and
// owner of the file and of its directory.
func readKEK(path string, kek *[KEKSize]byte) error {
	if err := checkKEKPath(path); err != nil {
		return err
	}
	if err := checkKEKDir(filepath.Dir(path)); err != nil {
		return err
	}
	f, err := openNoFollow(path)
	if err != nil {
		return fmt.Errorf("keys: open KEK: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("keys: open KEK: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("keys: KEK %s is not a regular file (%v)", path, fi.Mode().Type())
	}
	if perm := fi.Mode().Perm(); perm&^kekFileMode != 0 {
		return fmt.Errorf("keys: KEK file %s has mode %04o, wider than %04o: %w; refusing to use it (chmod 600 it after checking who may have read it)",
			path, perm, kekFileMode, ErrInsecurePermissions)
	}
	if err := checkOwner(path, fi); err != nil {
		return err
	}
	if fi.Size() != KEKSize {
		return fmt.Errorf("keys: KEK file %s has %d bytes, want %d", path, fi.Size(), KEKSize)
	}
	if _, err := io.ReadFull(f, kek[:]); err != nil {
		return fmt.Errorf("keys: read KEK %s: %w", path, err)
	}
	var extra [1]byte
	if n, _ := f.Read(extra[:]); n != 0 {
		return fmt.Errorf("keys: KEK file %s is longer than %d bytes", path, KEKSize)
	}
	return nil
}

// checkKEKPath requires an absolute, clean path.
func checkKEKPath(path string) error {
	if path == "" || !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return fmt.Errorf("keys: KEK path %q must be absolute and clean", path)
	}
	return nil
}

// checkKEKDir requires dir to be a real directory (not a symbolic link) of
// mode 0700 or narrower, owned by this process's user.
func checkKEKDir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("keys: KEK directory: %w", err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("keys: KEK directory %s is a symbolic link: %w", dir, ErrInsecurePermissions)
	}
	if !fi.IsDir() {
		return fmt.Errorf("keys: KEK directory %s is not a directory", dir)
	}
	if perm := fi.Mode().Perm(); perm&^kekDirMode != 0 {
		return fmt.Errorf("keys: KEK directory %s has mode %04o, wider than %04o: %w; refusing to use it (chmod 700 it after checking who may have read its keys)",
			dir, perm, kekDirMode, ErrInsecurePermissions)
	}
	return checkOwner(dir, fi)
}

// syncDir fsyncs a directory so that a new name in it survives a crash.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
