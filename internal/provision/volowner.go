package provision

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/pgshield/pgshield/internal/storage"
)

// A --storage-path outlives the servers that use it: a deleted server's
// kept pgshield.json still names it after another server took it. The
// owner mark (storageOwnerName in the storage path, 0600, the server id,
// written exclusively before the volume is made) is the positive evidence
// that its volume is this server's, required before delete or init's undo
// locks or removes anything there.
const storageOwnerName = "pgshield-owner"

// claimStoragePath writes the owner mark for id, refusing a path that
// already has one or already holds a volume.
func claimStoragePath(path, id string) error {
	mark := filepath.Join(path, storageOwnerName)
	f, err := os.OpenFile(mark, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if errors.Is(err, fs.ErrExist) {
		owner, _ := storageOwner(path)
		return fmt.Errorf("the storage path %s belongs to server %q (%s): give another directory", path, owner, mark)
	}
	if err != nil {
		return err
	}
	_, werr := f.WriteString(id + "\n")
	if err := errors.Join(werr, f.Sync(), f.Close()); err != nil {
		_ = os.Remove(mark)
		return err
	}
	return nil
}

// storageOwner returns the server id in path's owner mark ("" if none).
func storageOwner(path string) (string, error) {
	f, err := os.OpenFile(filepath.Join(path, storageOwnerName), os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b := make([]byte, 64)
	n, _ := f.Read(b)
	return strings.TrimSpace(string(b[:n])), nil
}

// checkStorageOwner refuses a storage path whose owner mark does not name id.
func checkStorageOwner(path, id string) error {
	owner, err := storageOwner(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if owner == id {
		return nil
	}
	what := "carries no owner mark"
	if owner != "" {
		what = fmt.Sprintf("belongs to server %q", owner)
	}
	return fmt.Errorf("the storage path %s %s, not to this server (%s): refusing to lock or remove a volume that may be another server's; "+
		"if %s is this server's, write %s into %s and run delete again",
		path, what, id, filepath.Join(path, storage.DataDirName), id, filepath.Join(path, storageOwnerName))
}
