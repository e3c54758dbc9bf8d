// Package keys is the controller of a running server's data key: its state
// (Available, Locked, Inaccessible), lock and unlock, the periodic
// revalidation against the key-encryption key with a grace period for
// transient failures, and the online re-wrap under another key.
//
// Lock order: mu (every transition of the volume, including the volume
// controller's grow and remount, through Locked) is taken first; inside it
// the configuration store's lock (a key change saves the new URI) and
// revalMu. revalMu is a leaf: nothing is called while it is held.
package keys

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/ctl/conf"
	"github.com/pgshield/pgshield/internal/ctl/volume"
	"github.com/pgshield/pgshield/internal/keys"
)

// Volume is the encrypted volume as the keys see it (volume.AtRest).
type Volume interface {
	// Open attaches and unlocks the volume; key failures are
	// *volume.KeyError.
	Open(ctx context.Context) error
	// Lock removes the key from the kernel.
	Lock() error
	// Check proves the key-encryption key still unwraps the data key.
	Check(ctx context.Context) error
	// Rewrap wraps the data key under the key at newURI.
	Rewrap(ctx context.Context, newURI string) error
	SetConfig(*config.Config)
	Description() string
	Usage() (total, free uint64, err error)
}

// Server is the rest of the server as the keys see it: what stops before
// the data is shut away and starts when it is back.
type Server interface {
	// Quiesce ends every session with clientMsg, stops backups and
	// PostgreSQL, records last and closes the audit log on the volume.
	Quiesce(clientMsg string, last *audit.Event)
	// Resume reopens the audit log and starts PostgreSQL.
	Resume(ctx context.Context) error
}

// Metrics is what the controller reports.
type Metrics interface {
	KeyState(from, to string, since time.Time)
	Revalidation(result string)
}

// Config is what the controller needs.
type Config struct {
	Log     *slog.Logger
	Conf    *conf.Store
	Volume  Volume
	Audit   func(audit.Event)
	Metrics Metrics
	// RewrapBackupKey prepares the backup passphrase wrapped under newURI
	// and returns the function that saves it (the backup controller's).
	RewrapBackupKey func(ctx context.Context, oldURI, newURI string) (save func() error, err error)
	// Changed, if set, is called (outside mu) after a revalidation moved
	// the key's state to Inaccessible or back to Available: a cluster node
	// asks the others to check their key now.
	Changed func(state string)
	// Now is the clock; time.Now if nil. For tests.
	Now func() time.Time
}

// Controller is the data key of one server.
type Controller struct {
	c      Config
	server Server
	// mu serializes lock, unlock, rewrap and revalidation, and the volume
	// controller's grow and remount (Locked); state is read without it.
	mu    sync.Mutex
	state atomic.Pointer[apitype.KeyState] // set through setState
	// revalMu guards reval; a leaf lock.
	revalMu sync.Mutex
	reval   struct {
		lastOK     time.Time
		lastErr    string
		graceStart time.Time // zero unless the KMS is unreachable right now
	}
}

// New makes the controller; it has no state until Open (and counts as
// Available, as a server that has not opened its volume refuses nothing
// yet: there is nothing to serve). Bind gives it the server.
func New(c Config) *Controller {
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Audit == nil {
		c.Audit = func(audit.Event) {}
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.RewrapBackupKey == nil {
		c.RewrapBackupKey = func(context.Context, string, string) (func() error, error) { return func() error { return nil }, nil }
	}
	return &Controller{c: c}
}

// Bind wires the controller to the rest of the server. Call it once,
// before anything that changes the state.
func (k *Controller) Bind(s Server) { k.server = s }

// Open opens the volume at start. A key that cannot unwrap the data key
// (revoked, or a KMS that cannot be reached) does not stop the daemon: it
// starts Inaccessible, refusing sessions with a clear message, and
// revalidation brings it back. open reports whether the volume is open;
// err is what must stop the start.
func (k *Controller) Open(ctx context.Context) (open bool, err error) {
	err = k.c.Volume.Open(ctx)
	var ke *volume.KeyError
	switch {
	case errors.As(err, &ke):
		k.c.Log.Error("The data key cannot be unwrapped; starting Inaccessible.", "error", err)
		k.setState(&apitype.KeyState{State: apitype.KeyInaccessible, Since: k.c.Now(), Reason: err.Error()})
		if k.c.Changed != nil {
			k.c.Changed(apitype.KeyInaccessible) // the others may not know yet
		}
		return false, nil
	case err != nil:
		return false, err
	}
	k.setState(&apitype.KeyState{State: apitype.KeyAvailable, Since: k.c.Now()})
	return true, nil
}

// State is the data key's state (apitype.Key*).
func (k *Controller) State() string { return k.load().State }

// load is the state, Available before Open.
func (k *Controller) load() *apitype.KeyState {
	if st := k.state.Load(); st != nil {
		return st
	}
	return &apitype.KeyState{State: apitype.KeyAvailable}
}

// setState sets the data key's state and records the transition.
func (k *Controller) setState(ks *apitype.KeyState) {
	from := ""
	if cur := k.state.Load(); cur != nil {
		from = cur.State
	}
	k.state.Store(ks)
	if k.c.Metrics != nil {
		k.c.Metrics.KeyState(from, ks.State, ks.Since)
	}
}

// Locked runs fn holding the lock that serializes every transition of the
// volume.
func (k *Controller) Locked(fn func() error) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return fn()
}

// SetInaccessibleLocked records that the data key cannot be unwrapped
// (found while reopening the volume); callers hold the lock (Locked).
func (k *Controller) SetInaccessibleLocked(reason string) {
	k.setState(&apitype.KeyState{State: apitype.KeyInaccessible, Since: k.c.Now(), Reason: reason})
}

// SessionsAllowed refuses new sessions while the key is not usable.
func (k *Controller) SessionsAllowed() error {
	switch k.State() {
	case apitype.KeyAvailable:
		return nil
	case apitype.KeyInaccessible:
		return errors.New("server is inaccessible: its customer-managed key is unavailable")
	default:
		return errors.New("server is locked: its data key was removed from the kernel (run 'pgshield key unlock')")
	}
}

// GraceRemaining is what is left of the grace period, in seconds; zero
// when none runs.
func (k *Controller) GraceRemaining() float64 {
	k.revalMu.Lock()
	start := k.reval.graceStart
	k.revalMu.Unlock()
	if start.IsZero() {
		return 0
	}
	return max(0, (k.c.Conf.Params().KeyGrace - k.c.Now().Sub(start)).Seconds())
}

// Info reports the data key's state, source and backend for `key show` and
// `status`.
func (k *Controller) Info() apitype.KeyInfo {
	cfg := k.c.Conf.Get()
	ki := apitype.KeyInfo{KeyState: *k.load(), Backend: k.c.Volume.Description(),
		KeySource: "customer-managed", KeyURI: keys.RedactURI(cfg.KeyURI)}
	if cfg.KeyURI == keys.SystemKeyURI(volume.SystemKEKPath(cfg.ServerID)) {
		ki.KeySource = "system-managed"
	}
	k.revalMu.Lock()
	ki.LastValidated, ki.LastError, ki.GraceSince = timePtr(k.reval.lastOK), k.reval.lastErr, timePtr(k.reval.graceStart)
	k.revalMu.Unlock()
	if ki.State == apitype.KeyAvailable {
		ki.TotalBytes, ki.FreeBytes, _ = k.c.Volume.Usage()
	}
	return ki
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// Lock ends every session, stops PostgreSQL cleanly and removes the key
// from the kernel, after which even root reads only ciphertext.
func (k *Controller) Lock() (apitype.KeyInfo, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.State() == apitype.KeyLocked {
		return k.Info(), nil
	}
	if err := k.shutAwayLocked(apitype.KeyLocked, "locked by the operator",
		"terminating connection because the server is being locked"); err != nil {
		return apitype.KeyInfo{}, err
	}
	return k.Info(), nil
}

// shutAwayLocked moves the server to a state where its data cannot be read:
// new sessions are refused, open ones ended, PostgreSQL stopped, the key
// removed from the kernel. Callers hold mu.
func (k *Controller) shutAwayLocked(state, reason, clientMsg string) error {
	if cur := k.load(); cur.State != apitype.KeyAvailable {
		if cur.State == apitype.KeyLocked && state != apitype.KeyLocked {
			return nil // the operator's lock is undone only by the operator
		}
		// Already shut away; only the state and reason change.
		k.setState(&apitype.KeyState{State: state, Since: cur.Since, Reason: reason})
		return nil
	}
	k.setState(&apitype.KeyState{State: state, Since: k.c.Now(), Reason: reason})
	// Stopping PostgreSQL also drains its last log lines into the stream;
	// the state change is recorded on the volume before it is locked, and
	// later events (refused logins) wait in memory for the unlock.
	k.server.Quiesce(clientMsg, &audit.Event{Type: "key.state", Outcome: audit.OutcomeSuccess, Reason: reason,
		Fields: map[string]any{"state": state}})
	if err := k.c.Volume.Lock(); err != nil {
		k.c.Audit(audit.Event{Type: "key.state", Outcome: audit.OutcomeFailure, Reason: "removing the key from the kernel failed: " + err.Error(),
			Fields: map[string]any{"state": state}})
		return fmt.Errorf("removing the key from the kernel: %w", err)
	}
	k.c.Log.Warn("Server data shut away.", "state", state, "reason", reason)
	return nil
}

// Unlock unwraps the data key again, unlocks the volume and starts
// PostgreSQL.
func (k *Controller) Unlock() (apitype.KeyInfo, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.restoreLocked(); err != nil {
		var ke *volume.KeyError
		if errors.As(err, &ke) {
			return apitype.KeyInfo{}, clienterr.New(apitype.CodeUnavailable, "%v", err)
		}
		return apitype.KeyInfo{}, err
	}
	return k.Info(), nil
}

// restoreLocked brings a shut-away server back. Callers hold mu.
func (k *Controller) restoreLocked() error {
	if k.State() == apitype.KeyAvailable {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := k.c.Volume.Open(ctx); err != nil {
		return err
	}
	// What happened while locked is written now, in order.
	if err := k.server.Resume(ctx); err != nil {
		return err
	}
	k.setState(&apitype.KeyState{State: apitype.KeyAvailable, Since: k.c.Now()})
	k.c.Log.Info("Server data available again.")
	k.c.Audit(audit.Event{Type: "key.state", Outcome: audit.OutcomeSuccess, Fields: map[string]any{"state": apitype.KeyAvailable}})
	return nil
}

// Change re-wraps the data key under another key-encryption key (`key set
// --key-uri`), or under the same key's newest version (`key rotate`, keyURI
// empty) or another (`key rotate --key-uri`), online. The config is saved
// only after the new wrapping is.
func (k *Controller) Change(ctx context.Context, keyURI string, rotate bool) (apitype.KeyInfo, error) {
	if keyURI == "" && !rotate {
		return apitype.KeyInfo{}, clienterr.New(apitype.CodeInvalid, "key_uri is required")
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if st := k.State(); st != apitype.KeyAvailable {
		return apitype.KeyInfo{}, clienterr.New(apitype.CodeUnavailable, "the key can be changed only while the server is Available (it is %s)", st)
	}
	if err := k.rewrapLocked(ctx, keyURI); err != nil {
		return apitype.KeyInfo{}, err
	}
	uri := keys.RedactURI(k.c.Conf.Get().KeyURI)
	k.c.Log.Info("Data key re-wrapped.", "key_uri", uri, "rotate", rotate)
	k.c.Audit(audit.Event{Type: "key.rewrap", Outcome: audit.OutcomeSuccess,
		Fields: map[string]any{"key_uri": uri, "rotate": rotate}})
	return k.Info(), nil
}

// rewrapLocked does the work of Change; callers hold mu.
func (k *Controller) rewrapLocked(ctx context.Context, newURI string) error {
	return k.c.Conf.Edit(func(cur *config.Config, commit func(*config.Config) error) error {
		if newURI == "" {
			newURI = cur.KeyURI
		}
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		// The backup passphrase follows the data key to the new wrapping;
		// prepared (and proved) first so that a failure changes nothing.
		saveBackupKey, err := k.c.RewrapBackupKey(ctx, cur.KeyURI, newURI)
		if err != nil {
			return clienterr.New(apitype.CodeInvalid, "%v", err)
		}
		if err := k.c.Volume.Rewrap(ctx, newURI); err != nil {
			return clienterr.New(apitype.CodeInvalid, "%v", err)
		}
		if err := saveBackupKey(); err != nil {
			return fmt.Errorf("saving the re-wrapped backup passphrase: %w", err)
		}
		newCfg := *cur
		newCfg.KeyURI = newURI
		if err := commit(&newCfg); err != nil {
			return fmt.Errorf("saving configuration: %w", err)
		}
		k.c.Volume.SetConfig(&newCfg)
		return nil
	})
}
