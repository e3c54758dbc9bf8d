package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/pgshield/pgshield/internal/api"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/keys"
	"github.com/pgshield/pgshield/internal/postgres"
	"github.com/pgshield/pgshield/internal/wire"
)

// Key states, as `key show` and `status` report them.
const (
	KeyAvailable = "Available"
	KeyLocked    = "Locked" // the operator asked: pgshield key lock
)

// KeyState is the state of the server's data key.
type KeyState struct {
	State  string    `json:"state"`
	Since  time.Time `json:"since"`
	Reason string    `json:"reason,omitempty"`
}

// KeyInfo is the answer of GET /v1/key.
type KeyInfo struct {
	KeyState
	Backend    string `json:"backend"`
	KeySource  string `json:"key_source"` // system-managed or customer-managed
	KeyURI     string `json:"key_uri"`    // redacted
	TotalBytes uint64 `json:"volume_total_bytes,omitempty"`
	FreeBytes  uint64 `json:"volume_free_bytes,omitempty"`
}

func (d *Daemon) supervisor() *postgres.Supervisor {
	d.supMu.Lock()
	defer d.supMu.Unlock()
	return d.sup
}

func (d *Daemon) startPostgres(ctx context.Context) error {
	sup := &postgres.Supervisor{Cluster: d.cluster, Log: d.Log.With("component", "postgres")}
	if err := sup.Start(ctx); err != nil {
		return err
	}
	d.supMu.Lock()
	d.sup = sup
	d.supMu.Unlock()
	return nil
}

// available refuses new sessions while the key is not usable.
func (d *Daemon) available() error {
	if st := d.keyState.Load(); st != nil && st.State != KeyAvailable {
		return fmt.Errorf("server is locked: its data key was removed from the kernel (run 'pgshield key unlock')")
	}
	return nil
}

// config returns the current configuration; it is replaced, never mutated.
func (d *Daemon) config() *config.Config {
	d.cfgMu.Lock()
	defer d.cfgMu.Unlock()
	return d.cfg
}

func (d *Daemon) keyInfo() KeyInfo {
	cfg := d.config()
	ki := KeyInfo{KeyState: *d.keyState.Load(), Backend: "fscrypt (AES-256-XTS contents, AES-256-CTS names)",
		KeySource: "customer-managed", KeyURI: keys.RedactURI(cfg.KeyURI)}
	if cfg.KeyURI == keys.SystemKeyURI(SystemKEKPath(cfg.ServerID)) {
		ki.KeySource = "system-managed"
	}
	if ki.State == KeyAvailable {
		ki.TotalBytes, ki.FreeBytes, _ = d.atRest.Usage()
	}
	return ki
}

func (d *Daemon) showKey(*http.Request) (any, error) { return d.keyInfo(), nil }

// lockKey ends every session, stops PostgreSQL cleanly and removes the key
// from the kernel, after which even root reads only ciphertext.
func (d *Daemon) lockKey(r *http.Request) (any, error) {
	d.keyMu.Lock()
	defer d.keyMu.Unlock()
	if d.keyState.Load().State == KeyLocked {
		return d.keyInfo(), nil
	}
	d.keyState.Store(&KeyState{State: KeyLocked, Since: time.Now(), Reason: "locked by the operator"})
	d.gw.TerminateAll(wire.ErrorMessage(wire.CodeAdminShutdown, "terminating connection because the server is being locked"))
	d.supervisor().Stop(30 * time.Second)
	d.catalog.Pool.Reset()
	if err := d.atRest.Lock(); err != nil {
		return nil, fmt.Errorf("removing the key from the kernel: %w", err)
	}
	d.Log.Info("Server locked.")
	return d.keyInfo(), nil
}

// unlockKey unwraps the data key again, unlocks the volume and starts PostgreSQL.
func (d *Daemon) unlockKey(r *http.Request) (any, error) {
	d.keyMu.Lock()
	defer d.keyMu.Unlock()
	if d.keyState.Load().State == KeyAvailable {
		return d.keyInfo(), nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := d.atRest.Open(ctx); err != nil {
		var ke *KeyError
		if errors.As(err, &ke) {
			return nil, api.Errorf(api.CodeUnavailable, "%v", err)
		}
		return nil, err
	}
	if err := d.startPostgres(ctx); err != nil {
		return nil, err
	}
	d.keyState.Store(&KeyState{State: KeyAvailable, Since: time.Now()})
	d.Log.Info("Server unlocked.")
	return d.keyInfo(), nil
}
