package backup

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/keys"
)

// Bin is Debian's pgbackrest.
const Bin = "/usr/bin/pgbackrest"

// CipherType is the repository encryption pgBackRest applies.
const CipherType = "aes-256-cbc"

// passphraseBytes of randomness make a passphrase of 64 base64 characters
// (384 bits): far above what AES-256 needs, and only printable characters,
// which pgBackRest's configuration format requires.
const passphraseBytes = 48

// NewPassphrase returns a new random repository passphrase (crypto/rand,
// URL-safe base64). The caller owns it and should keys.Wipe it.
func NewPassphrase() ([]byte, error) {
	raw, err := keys.NewDataKey(passphraseBytes)
	if err != nil {
		return nil, err
	}
	defer keys.Wipe(raw)
	out := make([]byte, base64.RawURLEncoding.EncodedLen(len(raw)))
	base64.RawURLEncoding.Encode(out, raw)
	return out, nil
}

// CreateWrappedPassphrase makes a new passphrase, wraps it with k and saves
// the envelope at path (0600). The plaintext is wiped before returning.
func CreateWrappedPassphrase(ctx context.Context, k *keys.Keeper, path string) error {
	pass, err := NewPassphrase()
	if err != nil {
		return err
	}
	defer keys.Wipe(pass)
	w, err := k.WrapKey(ctx, keys.PurposeBackup, pass)
	if err != nil {
		return fmt.Errorf("wrapping the backup passphrase: %w", err)
	}
	return w.Save(path)
}

// UnwrapPassphrase loads the envelope at path and unwraps it with k. The
// caller wipes the result. A missing file gives an error wrapping
// os.ErrNotExist.
func UnwrapPassphrase(ctx context.Context, k *keys.Keeper, path string) ([]byte, error) {
	w, err := keys.LoadWrapped(path)
	if err != nil {
		return nil, err
	}
	if w.Purpose != keys.PurposeBackup {
		return nil, fmt.Errorf("%s does not hold a backup passphrase (purpose %q)", path, w.Purpose)
	}
	pass, err := k.UnwrapKey(ctx, w)
	if err != nil {
		return nil, err
	}
	if err := checkPassphrase(pass); err != nil {
		keys.Wipe(pass)
		return nil, err
	}
	return pass, nil
}

func checkPassphrase(p []byte) error {
	if len(p) < 16 || len(p) > 1024 {
		return errors.New("backup passphrase has a bad length")
	}
	for _, c := range p {
		if c <= ' ' || c > '~' {
			return errors.New("backup passphrase holds a character pgBackRest's configuration cannot carry")
		}
	}
	return nil
}

// Settings are the values of one pgBackRest configuration file.
type Settings struct {
	// RepoPath is the repository (repo1-path).
	RepoPath string
	// PGData, SocketDir and PGPort locate the cluster (pg1-*); pgBackRest
	// connects over the Unix socket as the postgres superuser.
	PGData    string
	SocketDir string
	PGPort    int
	// WorkDir holds lock/, log/ and spool/; it must be on the encrypted
	// volume: the spool holds WAL fetched ahead during a restore.
	WorkDir string
	// ProcessMax is how many processes copy and compress in parallel.
	ProcessMax int
}

func (s Settings) check() error {
	for name, p := range map[string]string{"repository": s.RepoPath, "data directory": s.PGData,
		"socket directory": s.SocketDir, "work directory": s.WorkDir} {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p {
			return fmt.Errorf("backup configuration: %s %q must be a clean absolute path", name, p)
		}
		// One option per line, value to the end of the line: a path with
		// a newline would smuggle in another option.
		if strings.ContainsAny(p, "\n\r\x00") || strings.TrimSpace(p) != p {
			return fmt.Errorf("backup configuration: %s %q holds a character pgBackRest's configuration cannot carry", name, p)
		}
	}
	if s.PGPort < 1 || s.PGPort > 65535 {
		return fmt.Errorf("backup configuration: bad port %d", s.PGPort)
	}
	if s.ProcessMax < 1 || s.ProcessMax > 64 {
		return fmt.Errorf("backup configuration: process-max %d out of range", s.ProcessMax)
	}
	return nil
}

// Render returns the configuration file for s with the repository
// passphrase. The result holds the passphrase: the caller wipes it once
// written, and writes it only to the encrypted volume (WriteConfig).
func Render(s Settings, passphrase []byte) ([]byte, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if err := checkPassphrase(passphrase); err != nil {
		return nil, err
	}
	var b []byte
	add := func(parts ...string) {
		for _, p := range parts {
			b = append(b, p...)
		}
		b = append(b, '\n')
	}
	add("# Written by pgshield at each start; do not edit. It holds the repository")
	add("# passphrase, so it lives only on the encrypted volume (0600, postgres).")
	add("[global]")
	add("repo1-path=", s.RepoPath)
	add("repo1-cipher-type=", CipherType)
	b = append(b, "repo1-cipher-pass="...)
	b = append(b, passphrase...)
	b = append(b, '\n')
	add("compress-type=lz4")
	add("process-max=", strconv.Itoa(s.ProcessMax))
	// A backup asked for now starts now, not at the next checkpoint.
	add("start-fast=y")
	// archive-push returns once the segment is safely in the repository;
	// the asynchronous mode batches segments and, during a restore, fetches
	// ahead into the spool on the volume.
	add("archive-async=y")
	add("spool-path=", filepath.Join(s.WorkDir, "spool"))
	add("lock-path=", filepath.Join(s.WorkDir, "lock"))
	add("log-path=", filepath.Join(s.WorkDir, "log"))
	add("log-level-console=warn")
	add("log-level-file=info")
	add("")
	add("[", Stanza, "]")
	add("pg1-path=", s.PGData)
	add("pg1-socket-path=", s.SocketDir)
	add("pg1-port=", strconv.Itoa(s.PGPort))
	add("pg1-user=", config.SuperuserRole)
	return b, nil
}

// PrepareWorkDir creates dir and its lock/, log/ and spool/ with mode 0700,
// owned by uid:gid (the postgres OS user).
func PrepareWorkDir(dir string, uid, gid int) error {
	for _, d := range []string{dir, filepath.Join(dir, "lock"), filepath.Join(dir, "log"), filepath.Join(dir, "spool")} {
		if err := PrepareDir(d, uid, gid); err != nil {
			return err
		}
	}
	return nil
}

// PrepareDir creates dir (and its parents) and gives it mode 0700 and the
// owner uid:gid.
func PrepareDir(dir string, uid, gid int) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	return os.Chown(dir, uid, gid)
}

// WriteConfig writes a rendered configuration to path atomically, 0600 and
// owned by uid:gid. path must be on the encrypted volume.
func WriteConfig(path string, data []byte, uid, gid int) error {
	if err := config.WriteFileAtomic(path, data, 0o600); err != nil {
		return fmt.Errorf("writing the backup configuration: %w", err)
	}
	if err := os.Chown(path, uid, gid); err != nil {
		return fmt.Errorf("writing the backup configuration: %w", err)
	}
	return nil
}

// ArchiveCommand is the archive_command PostgreSQL runs (through /bin/sh)
// to archive one WAL segment with the configuration at conf: quoted for the
// shell here; the caller quotes it again for postgresql.conf.
func ArchiveCommand(conf string) string {
	// PostgreSQL replaces %p and %f in the command and reads %% as one %.
	conf = strings.ReplaceAll(conf, "%", "%%")
	return Bin + " " + shellQuote("--config="+conf) + " --stanza=" + Stanza + " archive-push %p"
}

// shellQuote quotes s for /bin/sh.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
