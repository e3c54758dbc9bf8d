package volume

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/keys"
	"github.com/pgshield/pgshield/internal/storage"
)

// SystemKeyDir holds the system-managed key-encryption keys, outside any
// data directory, so a copy of the data directory (or of a backup) is not
// enough to read it.
const SystemKeyDir = "/etc/pgshield/keys"

// AtRest is the encrypted volume of one server and the keys that open it.
type AtRest struct {
	Layout config.Layout
	Cfg    *config.Config
	Log    *slog.Logger
	// vol is the volume: the backend Cfg names, made at first use (see
	// backend) unless a test set a fake.
	vol     storage.Backend
	volOnce sync.Once
	volErr  error
}

// NewBackend returns the storage backend a configuration names, placed in
// its layout: the one place that reads which kind of volume a server has.
func NewBackend(l config.Layout, c *config.Config, log *slog.Logger) (storage.Backend, error) {
	return storage.New(storage.Options{
		Kind:      c.StorageBackend(),
		Mount:     l.VolumeMount(),
		Image:     l.VolumeImage(),
		Path:      c.StoragePath,
		Size:      c.StorageSize,
		CipherDir: l.GocryptfsDir(),
		Log:       log,
	})
}

// backend returns the volume's backend, made from Cfg once: Cfg may be
// replaced later (a key change, a resize) while other goroutines ask.
func (a *AtRest) backend() (storage.Backend, error) {
	a.volOnce.Do(func() {
		if a.vol == nil {
			a.vol, a.volErr = NewBackend(a.Layout, a.Cfg, a.Log)
		}
	})
	return a.vol, a.volErr
}

// volume is the backend of a running daemon. The daemon's first step,
// Open, made it; it does not run when that failed, so this is never nil
// there.
func (a *AtRest) volume() storage.Backend {
	b, _ := a.backend()
	return b
}

// SystemKEKPath is where the system-managed key-encryption key of a server lives.
func SystemKEKPath(serverID string) string { return filepath.Join(SystemKeyDir, serverID+".key") }

// Create makes the key hierarchy and the volume at init: a new random data
// key, wrapped by the key-encryption key (created here when system-managed),
// and a new encrypted volume opened with it.
func (a *AtRest) Create(ctx context.Context) error {
	if a.Cfg.KeyURI == "" {
		path := SystemKEKPath(a.Cfg.ServerID)
		if err := keys.CreateSystemKEK(path); err != nil {
			return fmt.Errorf("creating the system-managed key: %w", err)
		}
		a.Cfg.KeyURI = keys.SystemKeyURI(path)
	}
	k, err := keys.Open(ctx, a.Cfg.KeyURI)
	if err != nil {
		return err
	}
	defer k.Close()
	dataKey, err := keys.NewDataKey(storage.KeySize)
	if err != nil {
		return err
	}
	defer keys.Wipe(dataKey)
	w, err := k.WrapKey(ctx, keys.PurposeVolume, dataKey)
	if err != nil {
		return fmt.Errorf("wrapping the data key: %w", err)
	}
	if err := os.MkdirAll(a.Layout.SecretsDir(), 0o700); err != nil {
		return err
	}
	if err := w.Save(a.Layout.WrappedDataKey()); err != nil {
		return err
	}
	if err := os.MkdirAll(a.Layout.StorageDir(), 0o700); err != nil {
		return err
	}
	b, err := a.backend()
	if err != nil {
		return err
	}
	if err := b.Create(ctx, dataKey); err != nil {
		return fmt.Errorf("creating the encrypted volume: %w", err)
	}
	return nil
}

// Open attaches the volume and unlocks it with the unwrapped data key; the
// key is unwrapped only when the volume is not unlocked already.
func (a *AtRest) Open(ctx context.Context) error {
	b, err := a.backend()
	if err != nil {
		return err
	}
	if err := b.Attach(ctx); err != nil {
		return fmt.Errorf("attaching the encrypted volume: %w", err)
	}
	if present, err := b.Unlocked(); err == nil && present {
		return nil
	}
	dataKey, err := a.unwrapDataKey(ctx)
	if err != nil {
		return err
	}
	defer keys.Wipe(dataKey)
	return b.Unlock(ctx, dataKey)
}

// unwrapDataKey returns the data key unwrapped by the current key-encryption
// key; the caller wipes it. Key failures come back as *KeyError.
func (a *AtRest) unwrapDataKey(ctx context.Context) ([]byte, error) {
	w, err := keys.LoadWrapped(a.Layout.WrappedDataKey())
	if err != nil {
		return nil, err
	}
	k, err := keys.Open(ctx, a.Cfg.KeyURI)
	if err != nil {
		return nil, &KeyError{Kind: keys.ErrorKind(err), Err: err}
	}
	defer k.Close()
	dataKey, err := k.UnwrapKey(ctx, w)
	if err != nil {
		return nil, &KeyError{Kind: keys.ErrorKind(err), Err: err}
	}
	return dataKey, nil
}

// Lock removes the key from the kernel (with gocryptfs: unmounts, and the
// key leaves with the process): every file on the volume becomes
// unreadable, even to root. PostgreSQL must be stopped first; processes
// that just exited may still hold files for a moment, so a busy volume is
// retried for up to 10 s.
func (a *AtRest) Lock() error {
	b, err := a.backend()
	if err != nil {
		return err
	}
	for i := 0; i < 50; i++ {
		if err = lockOnce(b); !errors.Is(err, storage.ErrFilesBusy) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
	return err
}

// lockOnce gives one Lock a minute: a gocryptfs that hangs is killed.
func lockOnce(b storage.Backend) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return b.Lock(ctx)
}

// Close locks and detaches the volume.
func (a *AtRest) Close(ctx context.Context) error {
	b, err := a.backend()
	if err != nil {
		return err
	}
	err = a.Lock()
	if errors.Is(err, storage.ErrNotMounted) {
		err = nil
	}
	return errors.Join(err, b.Detach(ctx))
}

// KeyError is a failure to unwrap the data key, classified.
type KeyError struct {
	Kind keys.Kind
	Err  error
}

func (e *KeyError) Error() string {
	return "unwrapping the data key (" + e.Kind.String() + "): " + e.Err.Error()
}
func (e *KeyError) Unwrap() error { return e.Err }

// Guard refuses to let PostgreSQL touch its directories unless the volume
// is mounted and its data readable.
func (a *AtRest) Guard() error {
	b, err := a.backend()
	if err != nil {
		return err
	}
	return b.Ready()
}

// Check proves the key-encryption key still unwraps the data key, without
// touching the volume.
func (a *AtRest) Check(ctx context.Context) error {
	dataKey, err := a.unwrapDataKey(ctx)
	if err != nil {
		return err
	}
	keys.Wipe(dataKey)
	return nil
}

// Rewrap unwraps the data key with the current key-encryption key and
// wraps it with the one at newURI (the same URI re-wraps with the KMS key's
// newest version). The volume is untouched: the data key does not change,
// so this is online and takes one KMS round trip each way.
func (a *AtRest) Rewrap(ctx context.Context, newURI string) error {
	dataKey, err := a.unwrapDataKey(ctx)
	if err != nil {
		return err
	}
	defer keys.Wipe(dataKey)
	newK, err := keys.Open(ctx, newURI)
	if err != nil {
		return err
	}
	defer newK.Close()
	nw, err := newK.WrapKey(ctx, keys.PurposeVolume, dataKey)
	if err != nil {
		return fmt.Errorf("wrapping with the new key: %w", err)
	}
	// Prove the new wrapping opens before it replaces the old one.
	check, err := newK.UnwrapKey(ctx, nw)
	if err != nil {
		return fmt.Errorf("the new key cannot unwrap what it wrapped: %w", err)
	}
	keys.Wipe(check)
	return nw.Save(a.Layout.WrappedDataKey())
}

// Description describes the volume's backend, for key show and status.
func (a *AtRest) Description() string { return a.volume().Description() }

// Usage is the volume's size and free space; an error while it is locked.
func (a *AtRest) Usage() (total, free uint64, err error) { return a.volume().Usage() }

// SetConfig replaces the configuration the keys are read from (after a
// key change); callers hold the key lock, under which every other use of
// Cfg runs once the server is up.
func (a *AtRest) SetConfig(c *config.Config) { a.Cfg = c }
