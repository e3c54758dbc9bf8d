package provision

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/ctl/volume"
	"github.com/pgshield/pgshield/internal/storage"
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

// quarantineDirName is the directory (0700, in the key directory) that
// RemoveOrphanedKeys moves keys to: evidence can be wrong, and a key
// deleted is every byte of its server and its backups lost.
const quarantineDirName = "quarantine"

// KeyScan is what OrphanedKeys found in the system key directory.
type KeyScan struct {
	Orphans []OrphanKey `json:"orphans"`
	// Unverified are keys whose data directory cannot be seen from here:
	// deleted, or in another mount namespace, on an unmounted filesystem,
	// moved. Nothing says their server is gone: never removed.
	Unverified []OrphanKey `json:"unverified,omitempty"`
	// Quarantine is where removed keys were moved.
	Quarantine string `json:"quarantine,omitempty"`
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
		o := OrphanKey{Path: path, ServerID: id, DataDir: root}
		switch {
		case orphaned(root, id) && !attached(id):
			scan.Orphans = append(scan.Orphans, o)
		case unseen(root):
			scan.Unverified = append(scan.Unverified, o)
		default:
			scan.InUse++
		}
	}
	return scan, nil
}

// orphaned reports whether there is positive evidence that the server id
// is gone: its data directory root holds another server's configuration.
// A directory that cannot be seen proves nothing (another mount namespace,
// an unmounted filesystem, a moved directory), and one without a
// configuration is an init or restore under way.
func orphaned(root, id string) bool {
	if !filepath.IsAbs(root) {
		return false // not written by writeOwner: leave it
	}
	cfg, err := config.Load(config.Layout{Root: root})
	return err == nil && serverIDPattern.MatchString(cfg.ServerID) && cfg.ServerID != id
}

// attached reports whether a volume of server id is attached anywhere: a
// loop device backed by an image, or a mount (in any process's mount
// namespace) of a data directory, whose configuration names id: a server
// moved since init is then in use, wherever its directory is now. When
// that cannot be found out, it says yes.
func attached(id string) bool {
	holds := func(root string) bool {
		cfg, err := config.Load(config.Layout{Root: root})
		return err == nil && cfg.ServerID == id
	}
	out, err := exec.Command("losetup", "--noheadings", "--list", "--output", "BACK-FILE").Output()
	if err != nil {
		return true
	}
	for _, f := range strings.Split(string(out), "\n") {
		// DATA-DIR/storage/volume.img
		if f = strings.TrimSpace(f); strings.HasSuffix(f, "/storage/volume.img") && holds(filepath.Dir(filepath.Dir(f))) {
			return true
		}
	}
	infos, err := filepath.Glob("/proc/[0-9]*/mountinfo")
	if err != nil || len(infos) == 0 {
		return true
	}
	seen := map[string]bool{}
	for _, mi := range infos {
		b, err := os.ReadFile(mi)
		if err != nil {
			continue // the process has exited
		}
		// Paths are as that process sees them: read them through its root.
		proot := filepath.Join(filepath.Dir(mi), "root")
		for _, l := range strings.Split(string(b), "\n") {
			// Field 5 is the mount point: DATA-DIR/volume.
			f := strings.Fields(l)
			if len(f) < 5 || !strings.HasSuffix(f[4], "/volume") {
				continue
			}
			root := proot + filepath.Dir(storage.UnescapeMountInfo(f[4]))
			if !seen[root] {
				seen[root] = true
				if holds(root) {
					return true
				}
			}
		}
	}
	return false
}

// unseen reports whether the data directory root cannot be found.
func unseen(root string) bool {
	_, err := os.Stat(root)
	return errors.Is(err, fs.ErrNotExist)
}

// RemoveOrphanedKeys moves the key files (and owner files) of the servers
// that are gone into the quarantine directory, checking each again first.
func RemoveOrphanedKeys(dir string) (KeyScan, error) {
	scan, err := OrphanedKeys(dir)
	if err != nil {
		return scan, err
	}
	if len(scan.Orphans) == 0 {
		return scan, nil
	}
	q := filepath.Join(dir, quarantineDirName)
	if err := os.Mkdir(q, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return scan, err
	}
	if st, err := os.Lstat(q); err != nil || !st.IsDir() || st.Mode().Perm() != 0o700 {
		return scan, fmt.Errorf("the quarantine %s is not a directory with mode 0700: nothing was moved", q)
	}
	scan.Quarantine = q
	var errs []error
	for _, o := range scan.Orphans {
		if !orphaned(o.DataDir, o.ServerID) || attached(o.ServerID) {
			continue
		}
		// Owner first: a key in quarantine never lacks its owner file.
		owner := ownerPath(dir, o.ServerID)
		if err := os.Rename(owner, filepath.Join(q, filepath.Base(owner))); err != nil {
			errs = append(errs, fmt.Errorf("moving %s: %w", owner, err))
			continue
		}
		if err := os.Rename(o.Path, filepath.Join(q, filepath.Base(o.Path))); err != nil {
			errs = append(errs, fmt.Errorf("moving %s: %w", o.Path, err))
			continue
		}
		errs = append(errs, syncDir(q), syncDir(dir))
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

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
