package volume

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/keys"
	"github.com/pgshield/pgshield/internal/storage"
)

// fakeBackend is a storage.Backend in memory. It records the calls it gets
// and answers from its fields; the zero value is a locked, detached,
// resizable image of size 0.
type fakeBackend struct {
	mu    sync.Mutex
	calls []string
	// Answers.
	unlocked    bool
	fixed       string  // non-empty: not resizable, for this reason
	lockErrs    []error // Lock's answers, one per call, then nil
	attachErr   error
	detachErr   error
	resizeErr   error
	usageErr    error
	total, free uint64
	size, alloc int64
	hostTotal   int64
	hostAvail   int64
	image       string
	exited      chan error
	key         []byte // what Create or Unlock got last
	onDetach    func() // run by Detach, if set
	resizedTo   int64
}

var _ storage.Backend = (*fakeBackend)(nil)

func (f *fakeBackend) record(call string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
}

func (f *fakeBackend) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeBackend) Kind() string        { return "fake" }
func (f *fakeBackend) Description() string { return "fake volume" }

func (f *fakeBackend) Create(_ context.Context, key []byte) error {
	f.record("Create")
	f.key, f.unlocked = bytes.Clone(key), true
	return nil
}

func (f *fakeBackend) Attach(context.Context) error { f.record("Attach"); return f.attachErr }

func (f *fakeBackend) Unlocked() (bool, error) { f.record("Unlocked"); return f.unlocked, nil }

func (f *fakeBackend) Unlock(_ context.Context, key []byte) error {
	f.record("Unlock")
	f.key, f.unlocked = bytes.Clone(key), true
	return nil
}

func (f *fakeBackend) Lock(context.Context) error {
	f.record("Lock")
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.lockErrs) > 0 {
		err := f.lockErrs[0]
		f.lockErrs = f.lockErrs[1:]
		return err
	}
	f.unlocked = false
	return nil
}

func (f *fakeBackend) Detach(context.Context) error {
	f.record("Detach")
	if f.onDetach != nil {
		f.onDetach()
	}
	return f.detachErr
}

func (f *fakeBackend) Ready() error {
	if !f.unlocked {
		return errors.New("fake volume is locked")
	}
	return nil
}

func (f *fakeBackend) Exited() <-chan error { return f.exited }

func (f *fakeBackend) Usage() (total, free uint64, err error) {
	f.record("Usage")
	return f.total, f.free, f.usageErr
}

func (f *fakeBackend) Status(context.Context) storage.Status {
	return storage.Status{Image: f.image, LoopDevice: "/dev/loop9", FixedSize: f.fixed}
}

func (f *fakeBackend) CanResize() error {
	if f.fixed != "" {
		return errors.New("cannot resize: " + f.fixed)
	}
	return nil
}

func (f *fakeBackend) Size() (size, allocated int64, err error) {
	if err := f.CanResize(); err != nil {
		return 0, 0, err
	}
	return f.size, f.alloc, nil
}

func (f *fakeBackend) HostSpace() (total, avail int64, err error) {
	return f.hostTotal, f.hostAvail, nil
}

func (f *fakeBackend) Resize(_ context.Context, size int64) error {
	f.record("Resize")
	if f.resizeErr != nil {
		return f.resizeErr
	}
	f.resizedTo, f.size = size, size
	return nil
}

// testAtRest returns an AtRest over fake in a temporary layout whose
// system-managed key-encryption key lives in the temporary directory too.
func testAtRest(t *testing.T, fake storage.Backend) *AtRest {
	t.Helper()
	root := t.TempDir()
	kek := filepath.Join(root, "keys", "kek.key")
	if err := keys.CreateSystemKEK(kek); err != nil {
		t.Fatal(err)
	}
	l := config.Layout{Root: filepath.Join(root, "data")}
	if err := os.MkdirAll(l.Root, 0o700); err != nil {
		t.Fatal(err)
	}
	return &AtRest{Layout: l, Cfg: &config.Config{ServerID: "test", KeyURI: keys.SystemKeyURI(kek)}, vol: fake}
}

func TestNewBackend(t *testing.T) {
	l := config.Layout{Root: t.TempDir()}
	tests := []struct {
		name      string
		cfg       config.Config
		kind      string
		desc      string
		resizable bool
	}{
		{name: "default: fscrypt on an image", cfg: config.Config{StorageSize: 64 << 20}, kind: storage.BackendFscrypt,
			desc: "fscrypt (AES-256-XTS contents, AES-256-CTS names)", resizable: true},
		{name: "fscrypt on a storage path", cfg: config.Config{Storage: config.StorageFscrypt, StoragePath: "/mnt/pgdisk"}, kind: storage.BackendFscrypt,
			desc: "fscrypt (AES-256-XTS contents, AES-256-CTS names) on /mnt/pgdisk"},
		{name: "gocryptfs", cfg: config.Config{Storage: config.StorageGocryptfs}, kind: storage.BackendGocryptfs,
			desc: storage.GocryptfsDescription},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := NewBackend(l, &tt.cfg, nil)
			if err != nil {
				t.Fatalf("NewBackend(%+v) error = %v", tt.cfg, err)
			}
			if b.Kind() != tt.kind || b.Description() != tt.desc || (b.CanResize() == nil) != tt.resizable {
				t.Errorf("NewBackend(%+v) = %s %q resizable %v; want %s %q resizable %v",
					tt.cfg, b.Kind(), b.Description(), b.CanResize() == nil, tt.kind, tt.desc, tt.resizable)
			}
			if st := b.Status(context.Background()); st.Image != "" && st.Image != l.VolumeImage() {
				t.Errorf("Status().Image = %q; want %q", st.Image, l.VolumeImage())
			}
		})
	}
	// A configuration no backend matches fails the first step, and every
	// later one, before any key is touched.
	a := &AtRest{Layout: l, Cfg: &config.Config{Storage: "zfs"}}
	if err := a.Open(context.Background()); err == nil || !strings.Contains(err.Error(), `"zfs"`) {
		t.Errorf("Open() with storage zfs error = %v; want the backend refused", err)
	}
	if err := a.Guard(); err == nil {
		t.Error("Guard() with storage zfs = nil; want an error")
	}
}

func TestAtRestCreateOpen(t *testing.T) {
	fake := &fakeBackend{}
	a := testAtRest(t, fake)
	ctx := context.Background()
	if err := a.Create(ctx); err != nil {
		t.Fatalf("Create() error = %v", err)
	}
	created := fake.key
	if len(created) != storage.KeySize {
		t.Fatalf("Create() handed the backend a %d-byte key; want %d", len(created), storage.KeySize)
	}
	if _, err := os.Stat(a.Layout.WrappedDataKey()); err != nil {
		t.Fatalf("wrapped data key: %v", err)
	}
	if err := a.Guard(); err != nil {
		t.Errorf("Guard() after Create = %v; want nil", err)
	}

	// Unlocked already: attached, and no key unwrapped or handed over.
	fake.calls = nil
	if err := a.Open(ctx); err != nil {
		t.Fatalf("Open() error = %v", err)
	}
	if got, want := fake.Calls(), []string{"Attach", "Unlocked"}; !slices.Equal(got, want) {
		t.Errorf("Open() of an unlocked volume called %v; want %v", got, want)
	}

	// Locked: the data key is unwrapped and unlocks it.
	if err := a.Lock(); err != nil {
		t.Fatal(err)
	}
	if err := a.Guard(); err == nil {
		t.Error("Guard() after Lock = nil; want an error")
	}
	fake.calls, fake.key = nil, nil
	if err := a.Open(ctx); err != nil {
		t.Fatalf("Open() error = %v", err)
	}
	if got, want := fake.Calls(), []string{"Attach", "Unlocked", "Unlock"}; !slices.Equal(got, want) {
		t.Errorf("Open() of a locked volume called %v; want %v", got, want)
	}
	if !bytes.Equal(fake.key, created) {
		t.Error("Open() unlocked with a key other than the one Create made")
	}

	// Attach fails: said so, nothing unlocked.
	fake.attachErr, fake.calls, fake.unlocked = errors.New("no loop device"), nil, false
	if err := a.Open(ctx); err == nil || !strings.HasPrefix(err.Error(), "attaching the encrypted volume: ") {
		t.Errorf("Open() with Attach failing error = %v; want it to say attaching", err)
	}
	if slices.Contains(fake.Calls(), "Unlock") {
		t.Error("Open() unlocked after Attach failed")
	}
}

// TestAtRestOpenKeyError: a key-encryption key that cannot unwrap the data
// key comes back as *KeyError (the daemon starts Inaccessible on it), and
// the volume is not unlocked.
func TestAtRestOpenKeyError(t *testing.T) {
	fake := &fakeBackend{}
	a := testAtRest(t, fake)
	if err := a.Create(context.Background()); err != nil {
		t.Fatal(err)
	}
	fake.unlocked, fake.calls = false, nil
	other := filepath.Join(t.TempDir(), "keys", "other.key")
	if err := keys.CreateSystemKEK(other); err != nil {
		t.Fatal(err)
	}
	a.Cfg.KeyURI = keys.SystemKeyURI(other)
	var ke *KeyError
	if err := a.Open(context.Background()); !errors.As(err, &ke) {
		t.Fatalf("Open() with another KEK error = %v; want a *KeyError", err)
	}
	if slices.Contains(fake.Calls(), "Unlock") {
		t.Error("Open() unlocked without the data key")
	}
}

func TestAtRestLockClose(t *testing.T) {
	ctx := context.Background()
	t.Run("busy files are retried", func(t *testing.T) {
		fake := &fakeBackend{unlocked: true, lockErrs: []error{storage.ErrFilesBusy, storage.ErrFilesBusy}}
		a := testAtRest(t, fake)
		if err := a.Lock(); err != nil {
			t.Fatalf("Lock() error = %v; want nil after the files closed", err)
		}
		if got := fake.Calls(); len(got) != 3 {
			t.Errorf("Lock() called %v; want three tries", got)
		}
	})
	t.Run("other errors are not", func(t *testing.T) {
		boom := errors.New("boom")
		fake := &fakeBackend{lockErrs: []error{boom}}
		a := testAtRest(t, fake)
		if err := a.Lock(); !errors.Is(err, boom) {
			t.Fatalf("Lock() error = %v; want %v", err, boom)
		}
		if got := fake.Calls(); len(got) != 1 {
			t.Errorf("Lock() called %v; want one try", got)
		}
	})
	t.Run("close of an unmounted volume detaches", func(t *testing.T) {
		fake := &fakeBackend{lockErrs: []error{storage.ErrNotMounted}}
		a := testAtRest(t, fake)
		if err := a.Close(ctx); err != nil {
			t.Fatalf("Close() error = %v; want nil", err)
		}
		if got, want := fake.Calls(), []string{"Lock", "Detach"}; !slices.Equal(got, want) {
			t.Errorf("Close() called %v; want %v", got, want)
		}
	})
	t.Run("close reports both failures", func(t *testing.T) {
		lockErr, detachErr := errors.New("lock failed"), errors.New("detach failed")
		fake := &fakeBackend{lockErrs: []error{lockErr}, detachErr: detachErr}
		a := testAtRest(t, fake)
		if err := a.Close(ctx); !errors.Is(err, lockErr) || !errors.Is(err, detachErr) {
			t.Fatalf("Close() error = %v; want both", err)
		}
	})
}
