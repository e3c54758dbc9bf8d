package storage

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
)

const (
	// KeySize is the length of the volume's master key in bytes: fscrypt v2
	// with AES-256-XTS contents encryption takes a 64-byte master key.
	KeySize = 64

	// DefaultSize is the image size Provision uses when Volume.Size is 0
	// (the `--storage-size` default of `pgshield init`).
	DefaultSize int64 = 20 << 30

	// MinSize is the smallest image Provision accepts. ext4 with a journal
	// needs a few MiB; anything below this is a configuration mistake.
	MinSize int64 = 32 << 20

	// SizeAlign is the granularity of image sizes: the ext4 block size and
	// the loop device's logical sector size.
	SizeAlign int64 = 4096

	// DataDirName is the name of the encrypted directory under the mount
	// point. fscrypt cannot encrypt a filesystem root that already holds
	// lost+found, so the policy goes on this directory instead.
	DataDirName = "data"

	// maxToolOutput bounds how much of a tool's output goes into an error
	// or a log line.
	maxToolOutput = 1024

	// DefaultGrowThreshold is the free-space fraction under which NeedsGrow
	// reports true when called with a threshold outside (0, 1).
	DefaultGrowThreshold = 0.10
)

// Errors callers branch on. Wrapped errors carry context (paths, devices)
// but never key material.
var (
	// ErrImageExists is returned by Provision when the image file already
	// exists; Provision never overwrites data.
	ErrImageExists = errors.New("storage: image already exists")
	// ErrNotMounted means the mount point does not hold a mounted volume.
	ErrNotMounted = errors.New("storage: volume is not mounted")
	// ErrMountBusy means the mount point holds a filesystem that is not
	// this volume's image.
	ErrMountBusy = errors.New("storage: mount point holds another filesystem")
	// ErrNotProvisioned means the mounted filesystem has no DataDir.
	ErrNotProvisioned = errors.New("storage: volume has no data directory")
	// ErrKeySize is returned by Unlock for a key that is not KeySize bytes.
	ErrKeySize = errors.New("storage: key must be 64 bytes")
	// ErrWrongKey is returned by Unlock when the key's identifier differs
	// from the one in DataDir's encryption policy. The key is removed from
	// the kernel again before Unlock returns.
	ErrWrongKey = errors.New("storage: key does not match the volume's encryption policy")
	// ErrPolicyMismatch means DataDir carries an encryption policy whose
	// version, modes or flags differ from the ones this package sets.
	ErrPolicyMismatch = errors.New("storage: data directory has an unexpected encryption policy")
	// ErrFilesBusy is returned by Lock when the kernel removed the key from
	// the keyring but files using it are still open: they stay readable
	// until closed, new opens fail. Close them (stop PostgreSQL) and call
	// Lock again to finish.
	ErrFilesBusy = errors.New("storage: key removal incomplete: files still in use")
	// ErrOtherUsers is returned by Lock when other users still hold a
	// claim on the key.
	ErrOtherUsers = errors.New("storage: key still added by other users")
	// ErrShrink is returned by Resize for a size below the current one.
	ErrShrink = errors.New("storage: refusing to shrink volume")
	// ErrOnlineResizeNotPermitted is returned by Resize for a mounted
	// volume when the process lacks CAP_SYS_RESOURCE, which the kernel
	// requires for online ext4 resizing. Detach, Resize, Attach instead.
	ErrOnlineResizeNotPermitted = errors.New("storage: online resize needs CAP_SYS_RESOURCE; resize the detached volume instead")
	// ErrUnsupported is returned on platforms without fscrypt.
	ErrUnsupported = errors.New("storage: fscrypt volumes need Linux")
	// ErrNotResizable is returned by Resize for a volume on a storage path:
	// pgshield does not own that filesystem and cannot grow it.
	ErrNotResizable = errors.New("storage: the volume is a filesystem pgshield does not manage; grow it with the tools that made it")
	// ErrNotExt4 means a storage path is not on an ext4 filesystem.
	ErrNotExt4 = errors.New("storage: not an ext4 filesystem")
	// ErrNoEncryptFeature means a storage path's ext4 filesystem was made
	// without the encrypt feature.
	ErrNoEncryptFeature = errors.New("storage: the ext4 filesystem lacks the encrypt feature")
)

// Backend names, as the configuration, `key show` and `storage show` spell
// them.
const (
	// BackendFscrypt is the kernel's native file encryption on ext4 (an
	// image on a loop device, or an existing filesystem).
	BackendFscrypt = "fscrypt"
	// BackendGocryptfs is gocryptfs, a FUSE filesystem, for kernels
	// without fscrypt.
	BackendGocryptfs = "gocryptfs"
)

// Volume is an ext4 filesystem in a sparse image file, attached through a
// loop device and mounted at Mount, whose DataDir is encrypted with fscrypt.
// With Path set instead of Image, the filesystem is an existing ext4 mount
// with the encrypt feature: the directory Path is bind-mounted at Mount and
// no image or loop device is ever made.
//
// Methods serialize on an internal mutex, so a Volume must not be copied
// after first use. Call CheckAndSetDefaults (every method does too) before
// sharing a Volume between goroutines.
type Volume struct {
	// Image is the path of the sparse image file.
	Image string
	// Path, instead of Image, is a directory on an existing ext4
	// filesystem with the encrypt feature (see CheckStoragePath).
	Path string
	// Mount is the mount point; it is created 0700 when missing.
	Mount string
	// Size is the image size in bytes for Provision (default DefaultSize,
	// a multiple of SizeAlign, at least MinSize). Attach and Resize set it
	// to the image's size.
	Size int64
	// Log receives lifecycle events. It never receives key material.
	Log *slog.Logger

	mu sync.Mutex
}

// CheckAndSetDefaults validates the paths and size and fills in defaults.
// It is idempotent.
func (v *Volume) CheckAndSetDefaults() error {
	if v.Image == "" && v.Path == "" {
		return errors.New("storage: Image is required")
	}
	if v.Image != "" && v.Path != "" {
		return errors.New("storage: Image and Path exclude each other")
	}
	if v.Mount == "" {
		return errors.New("storage: Mount is required")
	}
	backing, what := v.Image, "image"
	if v.Path != "" {
		backing, what = v.Path, "storage path"
	}
	img, err := filepath.Abs(backing)
	if err != nil {
		return fmt.Errorf("storage: %s: %w", what, err)
	}
	mnt, err := filepath.Abs(v.Mount)
	if err != nil {
		return fmt.Errorf("storage: mount path: %w", err)
	}
	if mnt == "/" {
		return errors.New("storage: Mount must not be /")
	}
	if img == mnt || strings.HasPrefix(img, mnt+string(filepath.Separator)) {
		return fmt.Errorf("storage: %s %s must not live under the mount point %s", what, img, mnt)
	}
	if v.Path != "" && strings.HasPrefix(mnt, img+string(filepath.Separator)) {
		return fmt.Errorf("storage: the mount point %s must not live under the storage path %s", mnt, img)
	}
	// Assign only on change so that repeated calls do not write shared
	// fields (DataDir reads Mount without the lock).
	if v.Path != "" {
		if v.Path != img {
			v.Path = img
		}
	} else if v.Image != img {
		v.Image = img
	}
	if v.Mount != mnt {
		v.Mount = mnt
	}
	if v.Size == 0 {
		v.Size = DefaultSize
	}
	if err := checkSize(v.Size); err != nil {
		return err
	}
	if v.Log == nil {
		v.Log = slog.New(slog.DiscardHandler)
	}
	return nil
}

func checkSize(n int64) error {
	if n < MinSize {
		return fmt.Errorf("storage: size %d is below the minimum %d", n, MinSize)
	}
	if n%SizeAlign != 0 {
		return fmt.Errorf("storage: size %d is not a multiple of %d", n, SizeAlign)
	}
	return nil
}

// DataDir returns the encrypted directory, Mount/data. Everything that holds
// customer data goes under it.
func (v *Volume) DataDir() string {
	return filepath.Join(v.Mount, DataDirName)
}

// needsGrow reports whether free is below threshold of total. A threshold
// outside (0, 1) means DefaultGrowThreshold.
func needsGrow(total, free uint64, threshold float64) bool {
	if !(threshold > 0 && threshold < 1) { // also catches NaN
		threshold = DefaultGrowThreshold
	}
	if total == 0 {
		return false
	}
	return float64(free) < threshold*float64(total)
}
