package provision

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/ctl/volume"
)

// A system-managed key file names its server by id only; beside it,
// ID.owner (0600, no secret) names the data directory that made it, so
// that a key whose server is gone can be told from one in use.

func ownerPath(dir, serverID string) string { return filepath.Join(dir, serverID+".owner") }

func writeOwner(serverID, root string) error {
	abs, err := filepath.Abs(root)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(volume.SystemKeyDir, 0o700); err != nil {
		return err
	}
	return os.WriteFile(ownerPath(volume.SystemKeyDir, serverID), []byte(abs+"\n"), 0o600)
}

func removeOwner(dir, serverID string) error {
	if err := os.Remove(ownerPath(dir, serverID)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// OrphanKey is a system-managed key file whose server is gone: its data
// directory holds no configuration with its id.
type OrphanKey struct {
	Path     string `json:"path"`
	ServerID string `json:"server_id"`
	DataDir  string `json:"data_dir"`
}

// KeyScan is what OrphanedKeys found in the system key directory.
type KeyScan struct {
	Orphans []OrphanKey `json:"orphans"`
	// Unknown are key files with no owner file (made before owners were
	// recorded): never removed, as nothing says their server is gone.
	Unknown []string `json:"unknown,omitempty"`
	InUse   int      `json:"in_use"`
}

// OrphanedKeys scans dir (volume.SystemKeyDir) for key files whose data
// directory is gone or now holds another server.
func OrphanedKeys(dir string) (KeyScan, error) {
	var scan KeyScan
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return scan, nil
	}
	if err != nil {
		return scan, err
	}
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".key")
		if !ok || !e.Type().IsRegular() {
			continue
		}
		path := filepath.Join(dir, e.Name())
		if !serverIDPattern.MatchString(id) {
			scan.Unknown = append(scan.Unknown, path)
			continue
		}
		b, err := os.ReadFile(ownerPath(dir, id))
		if err != nil {
			scan.Unknown = append(scan.Unknown, path)
			continue
		}
		root := strings.TrimSpace(string(b))
		if orphaned(root, id) {
			scan.Orphans = append(scan.Orphans, OrphanKey{Path: path, ServerID: id, DataDir: root})
		} else {
			scan.InUse++
		}
	}
	return scan, nil
}

// orphaned reports whether the data directory root no longer holds the
// server id: it is gone, or holds another server's configuration. A
// directory without one is an init or restore under way (the
// configuration is its last step): not an orphan.
func orphaned(root, id string) bool {
	if !filepath.IsAbs(root) {
		return false // not written by writeOwner: leave it
	}
	cfg, err := config.Load(config.Layout{Root: root})
	if errors.Is(err, config.ErrNotInitialized) {
		_, serr := os.Stat(root)
		return errors.Is(serr, fs.ErrNotExist)
	}
	return err == nil && cfg.ServerID != id
}

// RemoveOrphanedKeys removes the key files (and owner files) of the
// servers that are gone, checking each again first.
func RemoveOrphanedKeys(dir string) (KeyScan, error) {
	scan, err := OrphanedKeys(dir)
	if err != nil {
		return scan, err
	}
	var errs []error
	for _, o := range scan.Orphans {
		if !orphaned(o.DataDir, o.ServerID) {
			continue
		}
		if err := removeSynced(o.Path); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", o.Path, err))
			continue
		}
		errs = append(errs, removeOwner(dir, o.ServerID))
	}
	// Owner files whose key went another way say nothing any more.
	owners, _ := filepath.Glob(filepath.Join(dir, "*.owner"))
	for _, o := range owners {
		if _, err := os.Stat(strings.TrimSuffix(o, ".owner") + ".key"); errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, os.Remove(o))
		}
	}
	return scan, errors.Join(errs...)
}
