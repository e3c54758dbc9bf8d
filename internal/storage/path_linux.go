package storage

import (
	"bufio"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A storage path is a directory on an ext4 filesystem someone else made and
// mounted (a dedicated disk, say) with the encrypt feature. pgshield puts
// DataDir in it and bind-mounts the directory at Mount, so every other path
// stays what it is with an image; it never creates, attaches or detaches a
// loop device for such a volume.

// Filesystem magic numbers (statfs f_type) named in refusals.
var fsNames = map[int64]string{
	unix.EXT4_SUPER_MAGIC:      "ext2/3/4",
	unix.TMPFS_MAGIC:           "tmpfs",
	unix.XFS_SUPER_MAGIC:       "xfs",
	unix.BTRFS_SUPER_MAGIC:     "btrfs",
	unix.NFS_SUPER_MAGIC:       "nfs",
	unix.OVERLAYFS_SUPER_MAGIC: "overlayfs",
	unix.FUSE_SUPER_MAGIC:      "fuse",
	unix.F2FS_SUPER_MAGIC:      "f2fs",
}

func fsName(magic int64) string {
	if n, ok := fsNames[magic]; ok {
		return n
	}
	return fmt.Sprintf("filesystem type %#x", magic)
}

// CheckStoragePath checks that path can hold a new volume: an existing
// directory (not a symbolic link) on a mounted ext4 filesystem that has the
// encrypt feature, not itself inside an fscrypt-encrypted directory, and
// without a DataDir yet. It returns the absolute path. The feature is what
// the kernel answers for FS_IOC_GET_ENCRYPTION_POLICY_EX: EOPNOTSUPP on a
// filesystem made without it (what `tune2fs -l` lists as "encrypt").
func CheckStoragePath(path string) (string, error) {
	abs, err := checkStorageFS(path)
	if err != nil {
		return "", err
	}
	if _, err := os.Lstat(filepath.Join(abs, DataDirName)); err == nil {
		return "", fmt.Errorf("storage: storage path %s already holds %s (another server's volume?); give an empty directory", abs, DataDirName)
	}
	return abs, nil
}

// checkStorageFS is CheckStoragePath without the check for DataDir: the
// test a volume in use must still pass.
func checkStorageFS(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("storage: storage path: %w", err)
	}
	fi, err := os.Lstat(abs)
	if err != nil {
		return "", fmt.Errorf("storage: storage path: %w", err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("storage: storage path %s is not a directory", abs)
	}
	fd, err := unix.Open(abs, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", &fs.PathError{Op: "open", Path: abs, Err: err}
	}
	defer unix.Close(fd)
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return "", &fs.PathError{Op: "statfs", Path: abs, Err: err}
	}
	dev := describeDevice(abs)
	if sfs.Type != unix.EXT4_SUPER_MAGIC {
		return "", fmt.Errorf("%w: storage path %s is on %s%s; give a directory on an ext4 filesystem with the encrypt feature",
			ErrNotExt4, abs, fsName(sfs.Type), dev)
	}
	// ext2 and ext3 share the magic number; mountinfo tells them apart.
	if e, ok := mountOf(abs); ok && e.fstype != "ext4" {
		return "", fmt.Errorf("%w: storage path %s is on %s%s; give a directory on an ext4 filesystem with the encrypt feature",
			ErrNotExt4, abs, e.fstype, dev)
	}
	var arg unix.FscryptGetPolicyExArg
	arg.Size = uint64(len(arg.Policy))
	switch err := ioctlPtr(fd, unix.FS_IOC_GET_ENCRYPTION_POLICY_EX, unsafe.Pointer(&arg)); err {
	case unix.ENODATA: // encryption supported, this directory not encrypted
	case nil:
		return "", fmt.Errorf("storage: storage path %s is itself encrypted with fscrypt; give a directory outside any encrypted directory", abs)
	case unix.EOPNOTSUPP:
		return "", fmt.Errorf("%w: storage path %s%s; enable it with `tune2fs -O encrypt DEVICE` while the filesystem is unmounted, or make it with `mkfs.ext4 -O encrypt`",
			ErrNoEncryptFeature, abs, dev)
	case unix.ENOTTY:
		return "", fmt.Errorf("%w: this kernel has no fscrypt support (storage path %s)", ErrNoEncryptFeature, abs)
	default:
		return "", fmt.Errorf("storage: storage path %s: FS_IOC_GET_ENCRYPTION_POLICY_EX: %w", abs, err)
	}
	return abs, nil
}

// describeDevice returns " (device D mounted at M)" for the filesystem
// holding path, or "" if /proc/self/mountinfo does not say.
func describeDevice(path string) string {
	e, ok := mountOf(path)
	if !ok {
		return ""
	}
	return fmt.Sprintf(" (%s mounted at %s)", e.source, e.mountPoint)
}

// provisionPathLocked makes DataDir in Path and bind-mounts Path at Mount.
// The root of the volume gets the same 0711 as an image's, so that the
// PostgreSQL user can traverse it.
func (v *Volume) provisionPathLocked(ctx context.Context) (err error) {
	if _, err := CheckStoragePath(v.Path); err != nil {
		return err
	}
	if err := os.Chmod(v.Path, rootMode); err != nil {
		return fmt.Errorf("storage: storage path: %w", err)
	}
	if err := os.Mkdir(filepath.Join(v.Path, DataDirName), 0o700); err != nil {
		return fmt.Errorf("storage: data directory: %w", err)
	}
	defer func() {
		if err != nil { // bindLocked mounts nothing when it fails
			_ = os.Remove(filepath.Join(v.Path, DataDirName))
		}
	}()
	if err := syncPath(v.Path); err != nil {
		return err
	}
	if err := v.bindLocked(ctx); err != nil {
		return err
	}
	v.Log.InfoContext(ctx, "Provisioned volume on a storage path.", "path", v.Path, "mount", v.Mount)
	return nil
}

// bindLocked bind-mounts Path at Mount with the volume's mount flags. It is
// a no-op when already done.
func (v *Volume) bindLocked(ctx context.Context) error {
	st, err := v.inspectPathLocked()
	if err != nil {
		return err
	}
	switch st.mount {
	case mountedOurs:
		return nil
	case mountedOther:
		return fmt.Errorf("%w: %s", ErrMountBusy, v.Mount)
	}
	if _, err := checkStorageFS(v.Path); err != nil {
		return err
	}
	if err := os.MkdirAll(v.Mount, 0o700); err != nil {
		return fmt.Errorf("storage: mount point: %w", err)
	}
	if err := unix.Mount(v.Path, v.Mount, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("storage: bind %s on %s: %w", v.Path, v.Mount, err)
	}
	// Bind mounts take their flags only from a remount.
	if err := unix.Mount("", v.Mount, "", unix.MS_REMOUNT|unix.MS_BIND|mountFlags, ""); err != nil {
		_ = unix.Unmount(v.Mount, unix.UMOUNT_NOFOLLOW)
		return fmt.Errorf("storage: set mount flags on %s: %w", v.Mount, err)
	}
	v.Log.InfoContext(ctx, "Attached volume.", "path", v.Path, "mount", v.Mount)
	return nil
}

// inspectPathLocked reports whether Mount is the root of a mount of Path
// (same device and inode).
func (v *Volume) inspectPathLocked() (volumeState, error) {
	var st volumeState
	dev, isRoot, err := statMountRoot(v.Mount)
	if err != nil || !isRoot {
		return st, err
	}
	st.mount = mountedOther
	var m, p unix.Stat_t
	if err := unix.Stat(v.Mount, &m); err != nil {
		return st, &fs.PathError{Op: "stat", Path: v.Mount, Err: err}
	}
	if err := unix.Stat(v.Path, &p); err != nil {
		return st, &fs.PathError{Op: "stat", Path: v.Path, Err: err}
	}
	if uint64(m.Dev) == dev && m.Dev == p.Dev && m.Ino == p.Ino {
		st.mount = mountedOurs
	}
	return st, nil
}

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	devMajor, devMinor uint32
	root               string // path of the mount's root within its filesystem
	mountPoint         string
	fstype             string
	source             string
}

// readMountInfo parses /proc/self/mountinfo (proc(5)); bounded by the file.
func readMountInfo() ([]mountEntry, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mountEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if e, ok := parseMountInfoLine(sc.Text()); ok {
			out = append(out, e)
		}
	}
	return out, sc.Err()
}

// parseMountInfoLine parses "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw".
func parseMountInfoLine(line string) (mountEntry, bool) {
	var e mountEntry
	pre, post, ok := strings.Cut(line, " - ")
	if !ok {
		return e, false
	}
	f := strings.Fields(pre)
	g := strings.Fields(post)
	if len(f) < 5 || len(g) < 2 {
		return e, false
	}
	maj, min, ok := strings.Cut(f[2], ":")
	if !ok {
		return e, false
	}
	a, err1 := strconv.ParseUint(maj, 10, 32)
	b, err2 := strconv.ParseUint(min, 10, 32)
	if err1 != nil || err2 != nil {
		return e, false
	}
	e.devMajor, e.devMinor = uint32(a), uint32(b)
	e.root, e.mountPoint = UnescapeMountInfo(f[3]), UnescapeMountInfo(f[4])
	e.fstype, e.source = g[0], UnescapeMountInfo(g[1])
	return e, true
}

// UnescapeMountInfo undoes the kernel's octal escapes (\040 for space, ...) in
// a path field of /proc/*/mountinfo or /proc/self/mounts.
func UnescapeMountInfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// mountAt returns the topmost mount whose mount point is exactly path.
func mountAt(path string) (mountEntry, bool) {
	entries, err := readMountInfo()
	if err != nil {
		return mountEntry{}, false
	}
	var found mountEntry
	ok := false
	for _, e := range entries {
		if e.mountPoint == path {
			found, ok = e, true // later lines are mounted on top
		}
	}
	return found, ok
}

// mountOf returns the mount holding path: the entry with the device of
// path whose mount point is the longest prefix of it.
func mountOf(path string) (mountEntry, bool) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return mountEntry{}, false
	}
	entries, err := readMountInfo()
	if err != nil {
		return mountEntry{}, false
	}
	var best mountEntry
	ok := false
	for _, e := range entries {
		if unix.Mkdev(e.devMajor, e.devMinor) != uint64(st.Dev) {
			continue
		}
		if e.mountPoint == path || e.mountPoint == "/" || strings.HasPrefix(path, e.mountPoint+"/") {
			if !ok || len(e.mountPoint) >= len(best.mountPoint) {
				best, ok = e, true
			}
		}
	}
	return best, ok
}
