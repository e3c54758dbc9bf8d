package provision

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/backup"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/storage"
)

// OptionError is an option given wrongly (a malformed address, a reserved
// name, flags that exclude each other): the command line reports it as a
// usage mistake. Its message names the command's flag.
type OptionError struct{ Err error }

func (e *OptionError) Error() string { return e.Err.Error() }
func (e *OptionError) Unwrap() error { return e.Err }

func optionErrorf(format string, a ...any) error {
	return &OptionError{fmt.Errorf(format, a...)}
}

// checkListen validates a --listen address (an IP address or localhost, and
// a port) and returns its host.
func checkListen(listen string) (string, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", optionErrorf("invalid --listen %q: %v", listen, err)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return "", optionErrorf("invalid --listen %q: bad port", listen)
	}
	if host != "" && host != "localhost" && net.ParseIP(host) == nil {
		return "", optionErrorf("invalid --listen %q: the host must be an IP address", listen)
	}
	return host, nil
}

// checkBackupPath validates init's --backup-path: absolute, outside the
// encrypted volume (a lost volume must leave the backups), and new or
// empty. It returns the cleaned path, or "" for the default.
func checkBackupPath(l config.Layout, p string) (string, error) {
	if p == "" {
		return "", nil
	}
	if !filepath.IsAbs(p) {
		return "", optionErrorf("invalid --backup-path %q: use an absolute path", p)
	}
	p = filepath.Clean(p)
	root, _ := filepath.Abs(l.Root)
	if p == root || within(p, filepath.Join(root, "volume")) || within(root, p) {
		return "", optionErrorf("invalid --backup-path %q: it must be outside the encrypted volume and not contain the data directory", p)
	}
	if strings.ContainsAny(p, "\n\r\x00") {
		return "", optionErrorf("invalid --backup-path %q", p)
	}
	if entries, err := os.ReadDir(p); err == nil && len(entries) > 0 {
		return "", optionErrorf("invalid --backup-path %s: not empty", p)
	}
	return p, nil
}

// checkStorage validates init's --storage, --storage-path and
// --storage-size (sizeSet: given explicitly) together, before anything is
// created, and returns the storage path made absolute.
func checkStorage(l config.Layout, backend, path string, sizeSet bool) (string, error) {
	switch backend {
	case config.StorageFscrypt:
	case config.StorageGocryptfs:
		if path != "" {
			return "", &OptionError{errors.New("--storage-path is for the fscrypt backend: gocryptfs keeps its cipher directory in <data-dir>/storage")}
		}
		if sizeSet {
			return "", &OptionError{errors.New("--storage-size does not apply to gocryptfs: its ciphertext is files on the host filesystem, with no volume size")}
		}
		if _, err := exec.LookPath("gocryptfs"); err != nil {
			if _, serr := os.Stat("/usr/bin/gocryptfs"); serr != nil {
				return "", errors.New("gocryptfs is not installed: apt-get install -y gocryptfs")
			}
		}
		if _, err := os.Stat("/dev/fuse"); err != nil {
			return "", fmt.Errorf("gocryptfs needs FUSE, and /dev/fuse is missing: %v", err)
		}
		return "", nil
	default:
		return "", optionErrorf("invalid --storage %q: use fscrypt or gocryptfs", backend)
	}
	if path == "" {
		return "", nil
	}
	if sizeSet {
		return "", &OptionError{errors.New("--storage-size does not apply with --storage-path: the volume is that filesystem")}
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	root, err := filepath.Abs(l.Root)
	if err != nil {
		return "", err
	}
	if abs == root || strings.HasPrefix(abs, root+string(filepath.Separator)) || strings.HasPrefix(root, abs+string(filepath.Separator)) {
		return "", optionErrorf("--storage-path %s and the data directory %s must not contain each other", abs, root)
	}
	abs, err = storage.CheckStoragePath(abs)
	if err != nil {
		return "", fmt.Errorf("--storage-path: %w", err)
	}
	return abs, nil
}

// readSecretFile reads a password from a file: secrets never come on the
// command line, where other users see them.
func readSecretFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading password file: %w", err)
	}
	s := strings.TrimRight(string(b), "\r\n")
	if s == "" {
		return "", errors.New("password file is empty")
	}
	return s, nil
}

func abs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	return a
}

// within reports whether p is dir or below it.
func within(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

func freePort(host string) (int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// targetLayouts are the --to-time formats accepted; those without a zone
// are local time.
var targetLayouts = []struct {
	layout string
	zone   bool
}{
	{time.RFC3339Nano, true},
	{"2006-01-02 15:04:05.999999999Z07:00", true},
	{"2006-01-02 15:04:05.999999999Z07", true}, // PostgreSQL: 2026-11-25 14:36:36.25765+00
	{"2006-01-02 15:04:05.999999999 MST", true},
	{"2006-01-02T15:04:05.999999999", false},
	{"2006-01-02 15:04:05.999999999", false},
	{"2006-01-02 15:04", false},
}

func parseTargetTime(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	for _, l := range targetLayouts {
		var t time.Time
		var err error
		if l.zone {
			t, err = time.Parse(l.layout, s)
		} else {
			t, err = time.ParseInLocation(l.layout, s, time.Local)
		}
		if err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("invalid --to-time %q: use RFC 3339 (2026-11-25T14:36:36Z) or 2026-11-25 14:36:36[.ffffff][+00]", s)
}

// planError turns ChooseBackup's errors into coded errors (the command
// line's exit codes).
func planError(err error) error {
	switch {
	case errors.Is(err, backup.ErrUnknownLabel), errors.Is(err, backup.ErrNoBackups):
		return clienterr.New(apitype.CodeNotFound, "%v", err)
	case errors.Is(err, backup.ErrTargetTooEarly):
		return clienterr.New(apitype.CodeInvalid, "%v", err)
	}
	return err
}
