package storage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
)

// Backend is one server's encrypted volume, mounted at one mount point,
// whichever way it is kept: fscrypt on an image pgshield made, fscrypt on a
// storage path, or gocryptfs. New chooses the implementation once; callers
// never ask which one they hold, only what it can do (CanResize, Exited).
//
// Lifecycle (the caller unwraps the data key and wipes it after the call):
//
//	Create(key) → (PostgreSQL runs) → Lock → Detach
//	Attach → Unlocked? → Unlock(key) → ...
//
// Implementations are safe for concurrent use.
type Backend interface {
	// Kind is the backend's configuration name: BackendFscrypt or
	// BackendGocryptfs.
	Kind() string
	// Description names the cryptography (and the storage path), for `key
	// show` and `storage show`.
	Description() string

	// Create makes a new volume and leaves it open with key (KeySize
	// bytes). It never overwrites an existing volume.
	Create(ctx context.Context, key []byte) error
	// Attach makes an existing volume's filesystem reachable at the mount
	// point, still locked (loop device and mount, or bind mount). It is a
	// no-op when attached already, and for gocryptfs, whose mount is Unlock.
	Attach(ctx context.Context) error
	// Unlocked reports whether the data is readable: the fscrypt key is in
	// the kernel, or a gocryptfs process of ours serves the mount.
	Unlocked() (bool, error)
	// Unlock opens an attached volume with key: it goes into the kernel's
	// keyring (fscrypt) or gocryptfs mounts the cipher directory with it.
	Unlock(ctx context.Context, key []byte) error
	// Lock makes the data unreadable, even to root: the key leaves the
	// kernel, or gocryptfs unmounts and exits (killed, when it had died).
	// ErrFilesBusy means files are still open: close them and call again.
	// ErrNotMounted means there is no volume to lock.
	Lock(ctx context.Context) error
	// Detach undoes Attach once the volume is locked; a no-op for
	// gocryptfs, which Lock unmounted.
	Detach(ctx context.Context) error

	// Ready returns nil when PostgreSQL may use the volume (mounted, data
	// readable); otherwise an error for the operator that says why not.
	Ready() error
	// Exited delivers a notice when the process serving the volume dies
	// unasked (gocryptfs); the mount is then dead until Unlock. It is nil,
	// never ready, when the kernel serves the volume.
	Exited() <-chan error
	// Usage returns the mounted filesystem's size and the space available
	// to PostgreSQL (with gocryptfs: the host filesystem's).
	Usage() (total, free uint64, err error)
	// Status describes the volume for `storage show`.
	Status(ctx context.Context) Status

	// CanResize returns nil when Resize can grow the volume. Otherwise its
	// error matches ErrNotResizable and tells the operator why.
	CanResize() error
	// Size returns the volume's size in bytes and what the host filesystem
	// has allocated for it (an image is sparse). ErrNotResizable for a
	// volume without a size of its own.
	Size() (size, allocated int64, err error)
	// HostSpace returns the size of the host filesystem that holds the
	// ciphertext (the image or the cipher directory) and what it has
	// available to unprivileged writers. Both are 0 for a storage path,
	// whose filesystem is the volume itself.
	HostSpace() (total, avail int64, err error)
	// Resize grows the volume to size bytes: online while it is mounted
	// (ErrOnlineResizeNotPermitted without CAP_SYS_RESOURCE, before
	// anything changed), offline once it is detached.
	Resize(ctx context.Context, size int64) error
}

// Status describes a volume for `storage show`. Fields that do not apply
// to the backend are empty.
type Status struct {
	// Image and LoopDevice describe fscrypt on an image; LoopDevice is ""
	// while detached.
	Image      string
	LoopDevice string
	// Path is the storage path of fscrypt on an existing filesystem.
	Path string
	// CipherDir and PID describe gocryptfs; PID is 0 while no live process
	// of ours serves the mount.
	CipherDir string
	PID       int
	// FixedSize says why the volume has no size pgshield manages; "" when
	// it has one (CanResize returns nil).
	FixedSize string
}

// Options place a server's volume; New reads them once.
type Options struct {
	// Kind is BackendFscrypt ("" means it) or BackendGocryptfs.
	Kind string
	// Mount is where the volume's plaintext view is mounted.
	Mount string
	// Image is the fscrypt image file, used unless Path is set.
	Image string
	// Path is a directory on an existing ext4 filesystem with the encrypt
	// feature (see CheckStoragePath) that holds an fscrypt volume instead of
	// an image.
	Path string
	// Size is the image's size for Create (default DefaultSize).
	Size int64
	// CipherDir is the gocryptfs cipher directory.
	CipherDir string
	// Log receives lifecycle events, never key material.
	Log *slog.Logger
}

// New returns the backend o selects: gocryptfs for BackendGocryptfs,
// otherwise fscrypt on o.Path when set, or on o.Image. It validates the
// paths and the size but touches nothing on disk.
func New(o Options) (Backend, error) {
	switch o.Kind {
	case BackendGocryptfs:
		if o.Path != "" {
			return nil, errors.New("storage: gocryptfs takes no storage path")
		}
		g := &Gocryptfs{CipherDir: o.CipherDir, Mount: o.Mount, Log: o.Log}
		if err := g.CheckAndSetDefaults(); err != nil {
			return nil, err
		}
		return &gocryptfsBackend{g: g}, nil
	case "", BackendFscrypt:
		v := &Volume{Mount: o.Mount, Size: o.Size, Log: o.Log}
		if o.Path != "" {
			v.Path = o.Path
		} else {
			v.Image = o.Image
		}
		if err := v.CheckAndSetDefaults(); err != nil {
			return nil, err
		}
		if v.Path != "" {
			return &pathBackend{fscryptBackend{v: v}}, nil
		}
		return &imageBackend{fscryptBackend{v: v}}, nil
	default:
		return nil, fmt.Errorf("storage: backend %q is not %s or %s", o.Kind, BackendFscrypt, BackendGocryptfs)
	}
}

// fscryptDescription names fscrypt's cryptography.
const fscryptDescription = "fscrypt (AES-256-XTS contents, AES-256-CTS names)"

// notResizable is CanResize's refusal: its text is for the operator, and
// it matches ErrNotResizable.
type notResizable struct{ msg string }

func (e *notResizable) Error() string        { return e.msg }
func (e *notResizable) Is(target error) bool { return target == ErrNotResizable }

// readyError is Ready's answer from a key status: nil when the data is
// readable, otherwise an error naming the state (locked says how the locked
// state reads for this backend).
func readyError(present bool, err error, locked string) error {
	if err != nil {
		return fmt.Errorf("encrypted volume is not available: %w", err)
	}
	if !present {
		return errors.New(locked)
	}
	return nil
}

// fscryptBackend is what fscrypt volumes share, whether on an image or a
// storage path (Volume tells them apart internally).
type fscryptBackend struct{ v *Volume }

func (b *fscryptBackend) Kind() string { return BackendFscrypt }

// Create provisions the volume (image or storage path) and unlocks it.
func (b *fscryptBackend) Create(ctx context.Context, key []byte) error {
	if err := b.v.Provision(ctx); err != nil {
		return err
	}
	return b.v.Unlock(key)
}

func (b *fscryptBackend) Attach(ctx context.Context) error { return b.v.Attach(ctx) }
func (b *fscryptBackend) Unlocked() (bool, error)          { return b.v.KeyStatus() }
func (b *fscryptBackend) Unlock(_ context.Context, key []byte) error {
	return b.v.Unlock(key)
}
func (b *fscryptBackend) Lock(context.Context) error             { return b.v.Lock() }
func (b *fscryptBackend) Detach(ctx context.Context) error       { return b.v.Detach(ctx) }
func (b *fscryptBackend) Exited() <-chan error                   { return nil }
func (b *fscryptBackend) Usage() (total, free uint64, err error) { return b.v.Usage() }

func (b *fscryptBackend) Ready() error {
	present, err := b.v.KeyStatus()
	return readyError(present, err, "encrypted volume is locked")
}

// imageBackend is fscrypt on an ext4 image pgshield made and attaches
// through a loop device: the one backend that can grow.
type imageBackend struct{ fscryptBackend }

func (b *imageBackend) Description() string { return fscryptDescription }

func (b *imageBackend) Status(ctx context.Context) Status {
	dev, _ := b.v.LoopDevice(ctx)
	return Status{Image: b.v.Image, LoopDevice: dev}
}

func (b *imageBackend) CanResize() error { return nil }

func (b *imageBackend) Size() (size, allocated int64, err error) { return fileSize(b.v.Image) }

func (b *imageBackend) HostSpace() (total, avail int64, err error) { return fsSpace(b.v.Image) }

func (b *imageBackend) Resize(ctx context.Context, size int64) error { return b.v.Resize(ctx, size) }

// pathBackend is fscrypt on a directory of an existing ext4 filesystem,
// bind-mounted: pgshield neither makes nor resizes that filesystem.
type pathBackend struct{ fscryptBackend }

func (b *pathBackend) Description() string { return fscryptDescription + " on " + b.v.Path }

func (b *pathBackend) Status(context.Context) Status {
	return Status{Path: b.v.Path, FixedSize: "the storage path's filesystem is managed outside pgshield"}
}

func (b *pathBackend) CanResize() error {
	return &notResizable{fmt.Sprintf("the volume is the filesystem of the storage path %s, which pgshield does not manage: grow that filesystem with the tools that made it (e.g. resize2fs)", b.v.Path)}
}

func (b *pathBackend) Size() (size, allocated int64, err error) { return 0, 0, b.CanResize() }

func (b *pathBackend) HostSpace() (total, avail int64, err error) { return 0, 0, nil }

func (b *pathBackend) Resize(context.Context, int64) error { return b.CanResize() }

// gocryptfsBackend is gocryptfs over FUSE, a process this package starts
// and watches: unlocking mounts, locking unmounts.
type gocryptfsBackend struct{ g *Gocryptfs }

func (b *gocryptfsBackend) Kind() string        { return BackendGocryptfs }
func (b *gocryptfsBackend) Description() string { return GocryptfsDescription }

func (b *gocryptfsBackend) Create(ctx context.Context, key []byte) error { return b.g.Create(ctx, key) }

// Attach has nothing to do: gocryptfs has no device, and mounting needs
// the key (Unlock).
func (b *gocryptfsBackend) Attach(context.Context) error { return nil }

func (b *gocryptfsBackend) Unlocked() (bool, error) { return b.g.Alive() }

// Unlock mounts the cipher directory (clearing a dead or left-over mount
// first).
func (b *gocryptfsBackend) Unlock(ctx context.Context, key []byte) error {
	if err := b.g.Open(ctx, key); err != nil {
		return fmt.Errorf("mounting the encrypted volume: %w", err)
	}
	return nil
}

// Lock unmounts and waits for gocryptfs to exit, taking the key with it. A
// process that died (or never started) took the key already; what is left
// is a dead mount, which files may still pin, so it is detached by force.
func (b *gocryptfsBackend) Lock(ctx context.Context) error {
	if alive, _ := b.g.Alive(); !alive {
		return b.g.ForceUnmount(ctx)
	}
	return b.g.Unmount(ctx)
}

// Detach has nothing to do: Lock unmounted.
func (b *gocryptfsBackend) Detach(context.Context) error { return nil }

func (b *gocryptfsBackend) Ready() error {
	alive, err := b.g.Alive()
	return readyError(alive, err, "encrypted volume is not mounted (gocryptfs is not running)")
}

func (b *gocryptfsBackend) Exited() <-chan error                   { return b.g.Exited() }
func (b *gocryptfsBackend) Usage() (total, free uint64, err error) { return b.g.Usage() }

func (b *gocryptfsBackend) Status(context.Context) Status {
	st := Status{CipherDir: b.g.CipherDir,
		FixedSize: "gocryptfs keeps its ciphertext as files on the host filesystem, which grow with the data"}
	if alive, _ := b.g.Alive(); alive {
		st.PID = b.g.PID()
	}
	return st
}

func (b *gocryptfsBackend) CanResize() error {
	return &notResizable{fmt.Sprintf("a gocryptfs volume has no size to change: its ciphertext is files in %s, which use the host filesystem's free space", b.g.CipherDir)}
}

func (b *gocryptfsBackend) Size() (size, allocated int64, err error) { return 0, 0, b.CanResize() }

func (b *gocryptfsBackend) HostSpace() (total, avail int64, err error) { return fsSpace(b.g.CipherDir) }

func (b *gocryptfsBackend) Resize(context.Context, int64) error { return b.CanResize() }

// Compile-time checks.
var (
	_ Backend = (*imageBackend)(nil)
	_ Backend = (*pathBackend)(nil)
	_ Backend = (*gocryptfsBackend)(nil)
)
