package provision

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/backup"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/postgres"
)

// hostCheck is what init needs from this machine, checked before anything
// is created, so that a run that cannot succeed fails with every reason at
// once and not deep inside initdb or mkfs.
type hostCheck struct {
	Root string // the data directory, absolute
	// StoragePath and BackupPath are the --storage-path and --backup-path
	// directories ("" for none).
	StoragePath, BackupPath string
	// Storage is the backend; ImageSize the image to make (0: no image).
	Storage   string
	ImageSize int64
	// SizeAsked: ImageSize was asked for with --storage-size. The default
	// image is sparse and is not held to the free space.
	SizeAsked bool
	Listen    string
	PGBinDir  string
	User      postgres.OSUser
}

// host is the machine as the checks see it; tests replace parts of it.
type host struct {
	stat     func(string) (fs.FileInfo, error)
	readDir  func(string) ([]fs.DirEntry, error)
	statfs   func(string) (avail int64, err error)
	lookPath func(string) (string, error)
	listen   func(addr string) error
	// freeLoop finds an unused loop device (losetup --find, which
	// attaches nothing).
	freeLoop func() error
}

var realHost = host{
	stat:    os.Stat,
	readDir: os.ReadDir,
	statfs: func(p string) (int64, error) {
		var s unix.Statfs_t
		if err := unix.Statfs(p, &s); err != nil {
			return 0, err
		}
		return int64(s.Bavail) * s.Bsize, nil
	},
	lookPath: exec.LookPath,
	freeLoop: func() error {
		out, err := exec.Command("losetup", "--find").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
		}
		return nil
	},
	listen: func(addr string) error {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		return ln.Close()
	},
}

// PreconditionError lists what keeps init from running on this machine,
// each with what to change. Nothing was created.
type PreconditionError struct {
	Dir      string
	Problems []string
}

func (e *PreconditionError) Error() string {
	return fmt.Sprintf("cannot create a server in %s (nothing was created):\n  - %s", e.Dir, strings.Join(e.Problems, "\n  - "))
}

// asClientError gives the command line its exit code: 5, the values given
// (paths, port, size) or the machine must change.
func (e *PreconditionError) asClientError() error {
	return &clienterr.Error{Code: apitype.CodeInvalid, Message: e.Error()}
}

// check returns a *PreconditionError naming every problem, or nil.
func (h host) check(c hostCheck) *PreconditionError {
	var p []string
	add := func(format string, a ...any) { p = append(p, fmt.Sprintf(format, a...)) }

	// The data directory: new, or an empty directory (so that a failed
	// run can remove all it holds).
	if fi, err := h.stat(c.Root); err == nil {
		if !fi.IsDir() {
			add("%s exists and is not a directory: choose another --data-dir", c.Root)
		} else if entries, err := h.readDir(c.Root); err != nil {
			add("cannot read %s: %v", c.Root, err)
		} else if len(entries) > 0 {
			add("%s is not empty (%d entries, e.g. %s): choose a new or empty --data-dir", c.Root, len(entries), entries[0].Name())
		}
	}
	// PostgreSQL and pgBackRest run as postgres and must traverse every
	// directory above the data directory and the backup repository. Not
	// above --storage-path: PostgreSQL reaches it through its bind mount
	// in the data directory.
	for _, d := range []struct{ what, path string }{
		{"the data directory", c.Root}, {"--backup-path", c.BackupPath},
	} {
		if d.path == "" {
			continue
		}
		if dir, fi := h.untraversable(d.path, c.User); dir != "" {
			add("the %s user cannot reach %s %s: %s is %s (uid %d, gid %d); choose a path under directories it may traverse (e.g. /var/lib/pgshield), or give it search permission (chmod o+x %s)",
				c.User.Name, d.what, d.path, dir, fi.Mode(), owner(fi), group(fi), dir)
		}
	}
	// Programs.
	for _, b := range []string{"initdb", "postgres"} {
		if _, err := h.stat(filepath.Join(c.PGBinDir, b)); err != nil {
			add("%s is missing from --pg-bin-dir %s: apt-get install -y postgresql-15", b, c.PGBinDir)
		}
	}
	if _, err := h.stat(backup.Bin); err != nil {
		add("%s is missing (backups and WAL archiving need it): apt-get install -y pgbackrest", backup.Bin)
	}
	// The volume.
	switch c.Storage {
	case config.StorageFscrypt:
		if _, err := h.stat("/sys/fs/ext4/features/encryption"); err != nil {
			add("this kernel's ext4 has no encryption feature (no /sys/fs/ext4/features/encryption): use --storage gocryptfs")
		}
		if c.StoragePath == "" {
			for _, b := range []string{"mkfs.ext4", "losetup"} {
				if _, err := h.lookPath(b); err != nil {
					add("%s is missing (the fscrypt image needs it): apt-get install -y e2fsprogs mount", b)
				}
			}
			if _, err := h.stat("/dev/loop-control"); err != nil {
				add("no loop devices (/dev/loop-control is missing; in a container, pass --device /dev/loop-control): use --storage-path DIR on an ext4 filesystem with the encrypt feature, or --storage gocryptfs")
			} else if err := h.freeLoop(); err != nil {
				add("no free loop device (losetup --find: %v): detach unused ones (losetup -a lists them), or use --storage-path DIR or --storage gocryptfs", err)
			}
		}
	case config.StorageGocryptfs:
		// checkStorage has looked for the program and /dev/fuse.
	}
	if c.ImageSize > 0 && c.SizeAsked {
		dir := existingAncestor(h.stat, filepath.Join(c.Root, "storage"))
		if avail, err := h.statfs(dir); err != nil {
			add("cannot read the free space of %s: %v", dir, err)
		} else if avail < c.ImageSize {
			add("--storage-size %s does not fit: the filesystem of %s has %s free; give a smaller --storage-size or free space",
				sizeText(c.ImageSize), dir, sizeText(avail))
		}
	}
	// The gateway's port. An address this host does not have yet (a
	// private network address) is not refused here.
	if err := h.listen(c.Listen); errors.Is(err, syscall.EADDRINUSE) {
		add("--listen %s is in use by another program: choose a free port", c.Listen)
	}
	if len(p) == 0 {
		return nil
	}
	return &PreconditionError{Dir: c.Root, Problems: p}
}

// untraversable returns the first existing directory above path (path
// itself excluded: init sets its mode) that u may not search, with its
// FileInfo; "" when there is none. PostgreSQL's children run with u's
// primary group only (no supplementary groups), so those are not counted.
func (h host) untraversable(path string, u postgres.OSUser) (string, fs.FileInfo) {
	var dirs []string
	for d := filepath.Dir(path); ; d = filepath.Dir(d) {
		dirs = append(dirs, d)
		if d == filepath.Dir(d) {
			break
		}
	}
	// From / down, so the message names the outermost obstacle.
	for i := len(dirs) - 1; i >= 0; i-- {
		fi, err := h.stat(dirs[i])
		if err != nil {
			continue // made by init, searchable (see createLayout)
		}
		if !canSearch(fi, u) {
			return dirs[i], fi
		}
	}
	return "", nil
}

func canSearch(fi fs.FileInfo, u postgres.OSUser) bool {
	m := fi.Mode().Perm()
	switch {
	case u.UID == 0:
		return true
	case owner(fi) == u.UID:
		return m&0o100 != 0
	case group(fi) == u.GID:
		return m&0o010 != 0
	}
	return m&0o001 != 0
}

func owner(fi fs.FileInfo) uint32 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Uid
	}
	return 0
}

func group(fi fs.FileInfo) uint32 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Gid
	}
	return 0
}

// existingAncestor returns path or its nearest ancestor that exists.
func existingAncestor(stat func(string) (fs.FileInfo, error), path string) string {
	for d := path; ; d = filepath.Dir(d) {
		if _, err := stat(d); err == nil || d == filepath.Dir(d) {
			return d
		}
	}
}

func sizeText(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d bytes", n)
}
