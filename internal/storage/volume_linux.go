package storage

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// mkfsArgs are the mkfs.ext4 flags before the image path.
//
//   - -q: quiet. No -F: the image was just created empty, so mke2fs has no
//     reason to ask, and it should refuse rather than force if it did.
//   - -b 4096: fixed block size. mke2fs picks 1 KiB blocks for "small"
//     images (< 512 MiB), and the block size cannot change when the volume
//     grows; 4 KiB equals the page size and the loop sector size below.
//   - -I 256: 256-byte inodes keep the 40-byte fscrypt context in the inode
//     instead of an extra xattr block per file (and give nanosecond, post-
//     2038 timestamps). mke2fs's default above 512 MiB anyway; explicit
//     because the "small" profile would pick 128.
//   - -i 16384: one inode per 16 KiB, the ext4 default, fixed for the same
//     reason as -b; PostgreSQL writes 1 GiB segment files, so plenty.
//   - -m 0: no blocks reserved for root. The volume is dedicated to
//     PostgreSQL, which runs unprivileged and could never use a reserve
//     (only CAP_SYS_RESOURCE may, which pgshield itself may lack). Headroom
//     comes from growing the volume (NeedsGrow) instead of 5% held back.
//   - -O encrypt: the fscrypt feature flag.
//   - -E lazy_itable_init=0,lazy_journal_init=0: initialize inode tables and
//     the journal now, so no ext4lazyinit thread writes behind our back after
//     mount. On a regular file mke2fs punches or zero-ranges instead of
//     writing, so this costs milliseconds and the image stays sparse.
//   - -L pgshield: a recognizable label.
//
// Left out on purpose: -O fast_commit (no measurable gain for PostgreSQL,
// whose WAL fdatasyncs overwrite allocated blocks, and the kernel falls back
// to full commits for names in encrypted directories anyway); any journal
// mode but the default data=ordered. Measured on a 2-core VM without AES-NI
// (2026-11-25, one option changed at a time): 512-byte loop sectors,
// fast_commit and PAD_4 names were within run-to-run noise; lazy init,
// relatime and IV_INO_LBLK_64 no better; loop direct I/O off slower. The
// cost there is the kernel's AES-XTS itself (README, "Storage: what
// encryption at rest costs").
var mkfsArgs = []string{
	"-q", "-b", "4096", "-I", "256", "-i", "16384", "-m", "0", "-O", "encrypt",
	"-E", "lazy_itable_init=0,lazy_journal_init=0", "-L", "pgshield",
}

// losetupAttachArgs are the losetup flags before the image path.
//
//   - --find --show: take the first free loop device and print its name.
//   - --nooverlap: reuse a loop device already backed by the same file
//     instead of creating a second one (two writers on one image would
//     corrupt it).
//   - --direct-io=on: the loop driver reads and writes the image with
//     O_DIRECT, so image blocks are not cached twice (once in the loop
//     device's and once in the image file's page cache). Measured: without
//     it the fscrypt bulk load (pgbench -i -s 20) took 9.3 s instead of
//     8.3 s (median of 5), the extra copy costing CPU.
//   - --sector-size 4096: loop direct I/O needs requests aligned to the
//     backing filesystem's logical block size, otherwise the kernel quietly
//     falls back to buffered I/O; 4 KiB satisfies every backing device and
//     equals the ext4 block size. (On a 512-byte backing device 512 measured
//     the same.)
var losetupAttachArgs = []string{"--find", "--show", "--nooverlap", "--direct-io=on", "--sector-size", "4096"}

// Mount flags: nothing on the volume is a device node, setuid binary or
// program; noatime saves a metadata write per read. Barriers stay on and the
// journal stays data=ordered (ext4's defaults): PostgreSQL's fsync must reach
// the disk as it would on plain ext4, so no nobarrier and no data=writeback,
// whatever they would gain.
const (
	mountFlags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC | unix.MS_NOATIME
	mountData  = "errors=remount-ro"
	// rootMode lets the unprivileged PostgreSQL user traverse to DataDir
	// (which the caller chowns) without listing the volume root.
	rootMode = 0o711
)

// cleanupTimeout bounds best-effort cleanup after a failed operation.
const cleanupTimeout = 30 * time.Second

// Provision creates the sparse image (refusing if it exists), makes an ext4
// filesystem with the encrypt feature in it, attaches and mounts it at Mount
// and creates the empty DataDir (0700). The volume stays mounted. DataDir is
// encrypted by the first Unlock. On failure Provision detaches and removes
// the image it created.
func (v *Volume) Provision(ctx context.Context) (err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.CheckAndSetDefaults(); err != nil {
		return err
	}
	if v.Path != "" {
		return v.provisionPathLocked(ctx)
	}
	if err := os.MkdirAll(filepath.Dir(v.Image), 0o700); err != nil {
		return fmt.Errorf("storage: image directory: %w", err)
	}
	f, err := os.OpenFile(v.Image, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%w: %s", ErrImageExists, v.Image)
	}
	if err != nil {
		return fmt.Errorf("storage: create image: %w", err)
	}
	defer func() {
		if err == nil {
			return
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		if derr := v.detachLocked(cctx); derr != nil {
			v.Log.ErrorContext(ctx, "Failed to detach volume after failed provisioning; image kept.", "image", v.Image, "error", derr)
			return
		}
		if rerr := os.Remove(v.Image); rerr != nil {
			v.Log.ErrorContext(ctx, "Failed to remove image after failed provisioning.", "image", v.Image, "error", rerr)
		}
	}()
	err = f.Truncate(v.Size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("storage: size image: %w", err)
	}
	if _, err := v.run(ctx, "mkfs.ext4", append(append([]string(nil), mkfsArgs...), v.Image)...); err != nil {
		return fmt.Errorf("storage: make filesystem: %w", err)
	}
	if err := v.attachLocked(ctx); err != nil {
		return err
	}
	if err := os.Chmod(v.Mount, rootMode); err != nil {
		return fmt.Errorf("storage: volume root: %w", err)
	}
	if err := os.Mkdir(v.DataDir(), 0o700); err != nil {
		return fmt.Errorf("storage: data directory: %w", err)
	}
	if err := syncPath(v.Mount); err != nil {
		return err
	}
	v.Log.InfoContext(ctx, "Provisioned volume.", "image", v.Image, "mount", v.Mount, "size", v.Size)
	return nil
}

// Attach attaches the existing image to a loop device (reusing one that
// already backs it) and mounts it at Mount. It is a no-op when the volume is
// already mounted there, and ErrMountBusy when something else is. Attach
// sets Size to the image's size. The key is not in the kernel after a fresh
// mount: call Unlock.
func (v *Volume) Attach(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.CheckAndSetDefaults(); err != nil {
		return err
	}
	if err := v.attachLocked(ctx); err != nil {
		return err
	}
	if v.Path != "" {
		return nil
	}
	fi, err := os.Stat(v.Image)
	if err != nil {
		return fmt.Errorf("storage: image: %w", err)
	}
	if checkSize(fi.Size()) == nil && fi.Size() != v.Size {
		v.Size = fi.Size()
	}
	return nil
}

func (v *Volume) attachLocked(ctx context.Context) error {
	if v.Path != "" {
		return v.bindLocked(ctx)
	}
	fi, err := os.Stat(v.Image)
	if err != nil {
		return fmt.Errorf("storage: image: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("storage: image %s is not a regular file", v.Image)
	}
	st, err := v.inspectLocked(ctx)
	if err != nil {
		return err
	}
	switch st.mount {
	case mountedOurs:
		return nil
	case mountedOther:
		return fmt.Errorf("%w: %s", ErrMountBusy, v.Mount)
	}
	dev, created := "", false
	if len(st.loops) > 0 {
		dev = st.loops[0]
	} else {
		out, err := v.run(ctx, "losetup", append(append([]string(nil), losetupAttachArgs...), v.Image)...)
		if err != nil {
			return fmt.Errorf("storage: attach loop device: %w", err)
		}
		dev, created = strings.TrimSpace(out), true
		if !strings.HasPrefix(dev, "/dev/loop") {
			return fmt.Errorf("storage: losetup printed %q, want a loop device", dev)
		}
	}
	if dio, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "dio")); err == nil && strings.TrimSpace(string(dio)) != "1" {
		v.Log.WarnContext(ctx, "Loop device runs without direct I/O; image data is cached twice.", "device", dev)
	}
	if err := v.mountLocked(dev); err != nil {
		if created {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
			defer cancel()
			if _, derr := v.run(cctx, "losetup", "--detach", dev); derr != nil {
				v.Log.ErrorContext(ctx, "Failed to detach loop device after failed mount.", "device", dev, "error", derr)
			}
		}
		return err
	}
	v.Log.InfoContext(ctx, "Attached volume.", "image", v.Image, "device", dev, "mount", v.Mount)
	return nil
}

func (v *Volume) mountLocked(dev string) error {
	if err := os.MkdirAll(v.Mount, 0o700); err != nil {
		return fmt.Errorf("storage: mount point: %w", err)
	}
	fi, err := os.Lstat(v.Mount)
	if err != nil {
		return fmt.Errorf("storage: mount point: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("storage: mount point %s is not a directory", v.Mount)
	}
	if err := unix.Mount(dev, v.Mount, "ext4", mountFlags, mountData); err != nil {
		return fmt.Errorf("storage: mount %s on %s: %w", dev, v.Mount, err)
	}
	return nil
}

// Detach unmounts the volume and detaches its loop devices. It is a no-op
// for a volume that is not attached. Unmounting drops the filesystem keyring
// with any key still in it. Open files make it fail with unix.EBUSY.
func (v *Volume) Detach(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.CheckAndSetDefaults(); err != nil {
		return err
	}
	return v.detachLocked(ctx)
}

func (v *Volume) detachLocked(ctx context.Context) error {
	st, err := v.inspectLocked(ctx)
	if err != nil {
		return err
	}
	switch st.mount {
	case mountedOther:
		return fmt.Errorf("%w: %s", ErrMountBusy, v.Mount)
	case mountedOurs:
		if err := unix.Unmount(v.Mount, unix.UMOUNT_NOFOLLOW); err != nil {
			return fmt.Errorf("storage: unmount %s: %w", v.Mount, err)
		}
	}
	for _, dev := range st.loops {
		if _, err := v.run(ctx, "losetup", "--detach", dev); err != nil {
			return fmt.Errorf("storage: detach loop device: %w", err)
		}
	}
	if st.mount == mountedOurs || len(st.loops) > 0 {
		v.Log.InfoContext(ctx, "Detached volume.", "image", v.Image, "devices", st.loops, "mount", v.Mount)
	}
	return nil
}

type mountState int

const (
	notMounted   mountState = iota // nothing is mounted at Mount
	mountedOurs                    // a loop device of Image is mounted at Mount
	mountedOther                   // something else is mounted at Mount
)

type volumeState struct {
	loops []string   // loop devices backed by Image
	mount mountState // what Mount holds
	dev   string     // the loop device mounted at Mount, if mountedOurs
}

// inspectLocked finds the loop devices backed by Image and what is mounted
// at Mount.
func (v *Volume) inspectLocked(ctx context.Context) (volumeState, error) {
	var st volumeState
	if v.Path != "" {
		return v.inspectPathLocked()
	}
	loops, err := v.findLoops(ctx)
	if err != nil {
		return st, err
	}
	st.loops = loops
	dev, isRoot, err := statMountRoot(v.Mount)
	if err != nil || !isRoot {
		return st, err
	}
	st.mount = mountedOther
	for _, l := range loops {
		var s unix.Stat_t
		if err := unix.Stat(l, &s); err != nil {
			return st, fmt.Errorf("storage: stat %s: %w", l, err)
		}
		if s.Mode&unix.S_IFMT == unix.S_IFBLK && s.Rdev == dev {
			st.mount, st.dev = mountedOurs, l
			break
		}
	}
	return st, nil
}

// findLoops returns the loop devices backed by Image, as `losetup -j` finds
// them (by device and inode, so path aliases do not matter).
func (v *Volume) findLoops(ctx context.Context) ([]string, error) {
	if _, err := os.Stat(v.Image); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	out, err := v.run(ctx, "losetup", "--noheadings", "--output", "NAME", "--associated", v.Image)
	if err != nil {
		return nil, fmt.Errorf("storage: find loop devices: %w", err)
	}
	var loops []string
	for _, l := range strings.Fields(out) {
		if strings.HasPrefix(l, "/dev/loop") {
			loops = append(loops, l)
		}
	}
	return loops, nil
}

// statMountRoot returns the device of the filesystem at path and whether
// path is the root of a mount; a path that does not exist is no mount root.
func statMountRoot(path string) (dev uint64, isRoot bool, err error) {
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_INO, &stx); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return 0, false, nil // no mount point: nothing mounted there
		}
		return 0, false, &fs.PathError{Op: "statx", Path: path, Err: err}
	}
	dev = unix.Mkdev(stx.Dev_major, stx.Dev_minor)
	if stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 {
		return dev, stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0, nil
	}
	// Kernels before 5.8: a mount root sits on another device than its
	// parent (bind mounts of the same filesystem are not detected).
	var parent unix.Stat_t
	if err := unix.Stat(filepath.Dir(path), &parent); err != nil {
		return 0, false, &fs.PathError{Op: "stat", Path: filepath.Dir(path), Err: err}
	}
	return dev, parent.Dev != dev, nil
}

// openMountRoot opens Mount after checking that it is the root of a mounted
// ext4 filesystem, so that keys and policies never land on whatever
// filesystem holds an empty mount point.
func (v *Volume) openMountRoot() (int, error) {
	_, isRoot, err := statMountRoot(v.Mount)
	if err == nil && !isRoot {
		return -1, fmt.Errorf("%w: %s", ErrNotMounted, v.Mount)
	}
	if err != nil {
		return -1, err
	}
	fd, err := unix.Open(v.Mount, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &fs.PathError{Op: "open", Path: v.Mount, Err: err}
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		unix.Close(fd)
		return -1, &fs.PathError{Op: "statfs", Path: v.Mount, Err: err}
	}
	if sfs.Type != unix.EXT4_SUPER_MAGIC {
		unix.Close(fd)
		return -1, fmt.Errorf("%w: %s is not ext4 (magic %#x)", ErrMountBusy, v.Mount, sfs.Type)
	}
	return fd, nil
}

// openDataDir opens DataDir relative to the mount root fd.
func (v *Volume) openDataDir(root int) (int, error) {
	fd, err := unix.Openat(root, DataDirName, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err == unix.ENOENT {
		return -1, fmt.Errorf("%w: %s", ErrNotProvisioned, v.DataDir())
	}
	if err != nil {
		return -1, &fs.PathError{Op: "open", Path: v.DataDir(), Err: err}
	}
	return fd, nil
}

// dataPolicy returns DataDir's policy; ok is false when it has none yet.
// The directory is closed again before returning: an open encrypted
// directory would keep Lock from evicting its inode.
func (v *Volume) dataPolicy(root int) (p unix.FscryptPolicyV2, ok bool, err error) {
	dir, err := v.openDataDir(root)
	if err != nil {
		return p, false, err
	}
	defer unix.Close(dir)
	p, ok, err = getPolicy(dir)
	if err != nil {
		return p, ok, fmt.Errorf("storage: %s: %w", v.DataDir(), err)
	}
	return p, ok, nil
}

// Unlock adds key, which must be KeySize bytes, to the filesystem keyring.
// On first use it encrypts the empty DataDir with a v2 policy for the key
// (AES-256-XTS contents, AES-256-CTS names, 32-byte name padding). Later it
// verifies that DataDir's policy has the same modes (else ErrPolicyMismatch)
// and names this key (else ErrWrongKey, after removing the key again, so a
// wrong key leaves the volume locked). Unlocking an unlocked volume with its
// key is a no-op.
//
// Unlock copies key only into the ioctl argument and wipes that copy; the
// caller owns key and should wipe it.
func (v *Volume) Unlock(key []byte) error {
	if len(key) != KeySize {
		return ErrKeySize
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.CheckAndSetDefaults(); err != nil {
		return err
	}
	root, err := v.openMountRoot()
	if err != nil {
		return err
	}
	defer unix.Close(root)
	old, has, err := v.dataPolicy(root)
	if err != nil {
		return err
	}
	if has {
		// Check the modes before the key goes anywhere.
		if err := checkPolicy(old, old.Master_key_identifier); err != nil {
			return fmt.Errorf("storage: %s: %w", v.DataDir(), err)
		}
	}
	id, err := addKey(root, key)
	if err != nil {
		return fmt.Errorf("storage: add key to %s: %w", v.Mount, err)
	}
	if has {
		if err := checkPolicy(old, id); err != nil {
			v.dropKey(root, id)
			return fmt.Errorf("storage: %s: %w", v.DataDir(), err)
		}
		v.Log.Info("Unlocked volume.", "mount", v.Mount, "key_identifier", id)
		return nil
	}
	if err := v.encryptDataDir(root, id); err != nil {
		v.dropKey(root, id)
		return err
	}
	v.Log.Info("Encrypted data directory and unlocked volume.", "data_dir", v.DataDir(), "key_identifier", id)
	return nil
}

func (v *Volume) encryptDataDir(root int, id keyIdentifier) error {
	dir, err := v.openDataDir(root)
	if err != nil {
		return err
	}
	defer unix.Close(dir)
	p := newPolicy(id)
	if err := setPolicy(dir, &p); err != nil {
		if errors.Is(err, unix.ENOTEMPTY) {
			return fmt.Errorf("storage: %s is not empty and not encrypted: %w", v.DataDir(), err)
		}
		return fmt.Errorf("storage: encrypt %s: %w", v.DataDir(), err)
	}
	got, ok, err := getPolicy(dir)
	if err == nil && !ok {
		err = errors.New("policy missing after set")
	}
	if err == nil {
		err = checkPolicy(got, id)
	}
	if err != nil {
		return fmt.Errorf("storage: verify policy of %s: %w", v.DataDir(), err)
	}
	return nil
}

// dropKey removes a key Unlock just added but cannot use.
func (v *Volume) dropKey(root int, id keyIdentifier) {
	if _, err := removeKey(root, id); err != nil && err != unix.ENOKEY {
		v.Log.Error("Failed to remove rejected key.", "mount", v.Mount, "key_identifier", id, "error", err)
	}
}

// Lock removes the volume's key from the kernel for all users. The kernel
// syncs the filesystem and evicts the decrypted inodes and their page
// cache, so afterwards even root sees only ciphertext: opening a file fails
// with ENOKEY and names are listed in encrypted form. If files are still
// open Lock returns ErrFilesBusy: the key is gone from the keyring but those
// files stay readable until closed; call Lock again after closing them.
// Locking a locked (or never unlocked) volume is a no-op.
func (v *Volume) Lock() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.CheckAndSetDefaults(); err != nil {
		return err
	}
	root, err := v.openMountRoot()
	if err != nil {
		return err
	}
	defer unix.Close(root)
	p, has, err := v.dataPolicy(root)
	if err != nil {
		return err
	}
	if !has {
		return nil // never unlocked: no key to remove
	}
	id := keyIdentifier(p.Master_key_identifier)
	flags, err := removeKey(root, id)
	if err == unix.ENOKEY {
		return nil
	}
	if err != nil {
		return fmt.Errorf("storage: remove key from %s: FS_IOC_REMOVE_ENCRYPTION_KEY: %w", v.Mount, err)
	}
	if flags&unix.FSCRYPT_KEY_REMOVAL_STATUS_FLAG_FILES_BUSY != 0 {
		v.Log.Warn("Volume key removed but files are still open.", "mount", v.Mount, "key_identifier", id)
		return ErrFilesBusy
	}
	if flags&unix.FSCRYPT_KEY_REMOVAL_STATUS_FLAG_OTHER_USERS != 0 {
		return ErrOtherUsers
	}
	v.Log.Info("Locked volume.", "mount", v.Mount, "key_identifier", id)
	return nil
}

// KeyStatus reports whether the volume's key is in the kernel. A key whose
// removal is incomplete because files are open (Lock returned ErrFilesBusy)
// counts as present: those files still decrypt. A volume that was never
// unlocked has no key.
func (v *Volume) KeyStatus() (present bool, err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.CheckAndSetDefaults(); err != nil {
		return false, err
	}
	root, err := v.openMountRoot()
	if err != nil {
		return false, err
	}
	defer unix.Close(root)
	p, has, err := v.dataPolicy(root)
	if err != nil || !has {
		return false, err
	}
	st, err := keyStatus(root, p.Master_key_identifier)
	if err != nil {
		return false, fmt.Errorf("storage: key status of %s: %w", v.Mount, err)
	}
	return st != unix.FSCRYPT_KEY_STATUS_ABSENT, nil
}

// Resize grows the volume to newSize bytes. A volume on a storage path is
// ErrNotResizable. A size below the current image size is ErrShrink; the current size repeats the device and filesystem
// steps, which completes an interrupted Resize.
//
// Mounted, the volume grows online: Resize extends the sparse image, tells
// the loop device its new capacity (LOOP_SET_CAPACITY) and runs resize2fs on
// the mounted device. The kernel allows online resizing only with
// CAP_SYS_RESOURCE; without it Resize returns ErrOnlineResizeNotPermitted
// before changing anything.
//
// Not mounted, the volume grows offline: after extending the image (and the
// capacity of a loop device still attached) Resize checks the filesystem
// with `e2fsck -f -p`, which resize2fs insists on, and runs resize2fs on it.
func (v *Volume) Resize(ctx context.Context, newSize int64) error {
	if err := checkSize(newSize); err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.CheckAndSetDefaults(); err != nil {
		return err
	}
	if v.Path != "" {
		return ErrNotResizable
	}
	fi, err := os.Stat(v.Image)
	if err != nil {
		return fmt.Errorf("storage: image: %w", err)
	}
	if newSize < fi.Size() {
		return fmt.Errorf("%w: %d bytes requested, image has %d", ErrShrink, newSize, fi.Size())
	}
	st, err := v.inspectLocked(ctx)
	if err != nil {
		return err
	}
	online := st.mount == mountedOurs
	switch st.mount {
	case mountedOther:
		return fmt.Errorf("%w: %s", ErrMountBusy, v.Mount)
	case mountedOurs:
		ok, err := haveCapability(unix.CAP_SYS_RESOURCE)
		if err != nil {
			return fmt.Errorf("storage: read capabilities: %w", err)
		}
		if !ok {
			return ErrOnlineResizeNotPermitted
		}
	}
	if newSize > fi.Size() {
		if err := os.Truncate(v.Image, newSize); err != nil {
			return fmt.Errorf("storage: grow image: %w", err)
		}
	}
	target := v.Image
	if online {
		target = st.dev
	} else if len(st.loops) > 0 {
		target = st.loops[0]
	}
	if target != v.Image {
		if _, err := v.run(ctx, "losetup", "--set-capacity", target); err != nil {
			return fmt.Errorf("storage: loop capacity: %w", err)
		}
	}
	if !online {
		// -f: resize2fs refuses a filesystem not checked since its last
		// mount; -p: repair only what is safe without questions. Exit
		// status 1 means errors were corrected.
		if _, err := v.run(ctx, "e2fsck", "-f", "-p", target); err != nil && exitCode(err) != 1 {
			return fmt.Errorf("storage: check filesystem before resize: %w", err)
		}
	}
	if _, err := v.run(ctx, "resize2fs", target); err != nil {
		return fmt.Errorf("storage: grow filesystem: %w", err)
	}
	v.Size = newSize
	v.Log.InfoContext(ctx, "Resized volume.", "image", v.Image, "target", target, "online", online, "old_size", fi.Size(), "size", newSize)
	return nil
}

// haveCapability reports whether the calling thread has capability c in its
// effective set.
func haveCapability(c int) (bool, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false, err
	}
	return data[c/32].Effective&(1<<(c%32)) != 0, nil
}

// Usage returns the filesystem's size and the space available to
// unprivileged users (PostgreSQL), in bytes.
func (v *Volume) Usage() (total, free uint64, err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.CheckAndSetDefaults(); err != nil {
		return 0, 0, err
	}
	root, err := v.openMountRoot()
	if err != nil {
		return 0, 0, err
	}
	defer unix.Close(root)
	var s unix.Statfs_t
	if err := unix.Fstatfs(root, &s); err != nil {
		return 0, 0, &fs.PathError{Op: "statfs", Path: v.Mount, Err: err}
	}
	bs := uint64(s.Bsize)
	return s.Blocks * bs, s.Bavail * bs, nil
}

// NeedsGrow reports whether less than threshold (a fraction, e.g. 0.10) of
// the volume is free; a threshold outside (0, 1) means DefaultGrowThreshold.
// It is false when usage cannot be read (the error is logged).
func (v *Volume) NeedsGrow(threshold float64) bool {
	total, free, err := v.Usage()
	if err != nil {
		v.Log.Warn("Failed to read volume usage.", "mount", v.Mount, "error", err)
		return false
	}
	return needsGrow(total, free, threshold)
}

// syncPath flushes the filesystem that holds path.
func syncPath(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return &fs.PathError{Op: "syncfs", Path: path, Err: err}
	}
	return nil
}

// LoopDevice returns the loop device mounted at Mount, or "" when the
// volume is not mounted or lives on a storage path.
func (v *Volume) LoopDevice(ctx context.Context) (string, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.CheckAndSetDefaults(); err != nil {
		return "", err
	}
	if v.Path != "" {
		return "", nil
	}
	st, err := v.inspectLocked(ctx)
	if err != nil {
		return "", err
	}
	return st.dev, nil
}
