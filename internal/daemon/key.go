package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/pgshield/pgshield/internal/api"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/keys"
	"github.com/pgshield/pgshield/internal/postgres"
	"github.com/pgshield/pgshield/internal/wire"
)

// Key states, as `key show` and `status` report them.
const (
	KeyAvailable = "Available"
	KeyLocked    = "Locked" // the operator asked: pgshield key lock
	// KeyInaccessible: the customer-managed key was revoked, disabled or
	// deleted, or stayed unreachable past the grace period.
	KeyInaccessible = "Inaccessible"
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
	LastValidated *time.Time `json:"last_validated,omitempty"`
	LastError     string     `json:"last_error,omitempty"`
	// GraceSince is set while the KMS cannot be reached.
	GraceSince *time.Time `json:"grace_since,omitempty"`
	Backend    string     `json:"backend"`
	KeySource  string     `json:"key_source"` // system-managed or customer-managed
	KeyURI     string     `json:"key_uri"`    // redacted
	TotalBytes uint64     `json:"volume_total_bytes,omitempty"`
	FreeBytes  uint64     `json:"volume_free_bytes,omitempty"`
}

func (d *Daemon) supervisor() *postgres.Supervisor {
	d.supMu.Lock()
	defer d.supMu.Unlock()
	return d.sup
}

func (d *Daemon) startPostgres(ctx context.Context) error {
	// A server that started Inaccessible has not written them yet.
	if err := d.cluster.WriteManagedFiles(); err != nil {
		return err
	}
	if err := d.prepareBackups(ctx); err != nil {
		// PostgreSQL starts all the same and keeps the WAL it cannot
		// archive until this is fixed.
		d.Log.Error("Preparing backups failed; WAL archiving will fail.", "error", err)
	}
	sup := &postgres.Supervisor{Cluster: d.cluster, Log: d.Log.With("component", "postgres"),
		ServerLog: d.serverLogSink,
		OnReady: func(pid int) {
			if err := d.outbound.Apply(pid, d.policy.Snapshot().NetworkRules); err != nil {
				d.Log.Error("Opening the outbound path failed; PostgreSQL has no network access.", "error", err)
			}
		}}
	if err := sup.Start(ctx); err != nil {
		if _, serr := os.Stat(d.Layout.BackupRestoreConfig()); serr == nil {
			return fmt.Errorf("%w; recovery of the restored cluster: %s", err, lastFatal(d.Layout.PGLogDir()))
		}
		return err
	}
	if err := d.afterPostgresStart(ctx, sup); err != nil {
		sup.Stop(30 * time.Second)
		return err
	}
	d.supMu.Lock()
	d.sup = sup
	d.supMu.Unlock()
	return nil
}

// available refuses new sessions while the key is not usable.
func (d *Daemon) available() error {
	switch st := d.keyState.Load(); {
	case st == nil || st.State == KeyAvailable:
	case st.State == KeyInaccessible:
		return errors.New("server is inaccessible: its customer-managed key is unavailable")
	default:
		return errors.New("server is locked: its data key was removed from the kernel (run 'pgshield key unlock')")
	}
	return d.auditRefusal()
}

// config returns the current configuration; it is replaced, never mutated.
func (d *Daemon) config() *config.Config {
	d.cfgMu.Lock()
	defer d.cfgMu.Unlock()
	return d.cfg
}

func (d *Daemon) keyInfo() KeyInfo {
	cfg := d.config()
	ki := KeyInfo{KeyState: *d.keyState.Load(), Backend: d.atRest.volume().Description(),
		KeySource: "customer-managed", KeyURI: keys.RedactURI(cfg.KeyURI)}
	if cfg.KeyURI == keys.SystemKeyURI(SystemKEKPath(cfg.ServerID)) {
		ki.KeySource = "system-managed"
	}
	d.revalMu.Lock()
	ki.LastValidated, ki.LastError, ki.GraceSince = timePtr(d.reval.lastOK), d.reval.lastErr, timePtr(d.reval.graceStart)
	d.revalMu.Unlock()
	if ki.State == KeyAvailable {
		ki.TotalBytes, ki.FreeBytes, _ = d.atRest.volume().Usage()
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
	if err := d.shutAwayLocked(KeyLocked, "locked by the operator",
		"terminating connection because the server is being locked"); err != nil {
		return nil, err
	}
	return d.keyInfo(), nil
}

// shutAwayLocked moves the server to a state where its data cannot be read:
// new sessions are refused, open ones ended, PostgreSQL stopped, the key
// removed from the kernel. Callers hold keyMu.
func (d *Daemon) shutAwayLocked(state, reason, clientMsg string) error {
	if cur := d.keyState.Load(); cur.State != KeyAvailable {
		// Already shut away; only the state and reason change.
		d.storeKeyState(&KeyState{State: state, Since: cur.Since, Reason: reason})
		return nil
	}
	d.storeKeyState(&KeyState{State: state, Since: time.Now(), Reason: reason})
	d.gw.TerminateAll(wire.ErrorMessage(wire.CodeAdminShutdown, "%s", clientMsg))
	d.backups.stop() // its configuration is on the volume about to be locked
	// Stopping PostgreSQL also drains its last log lines into the stream.
	d.supervisor().Stop(30 * time.Second)
	d.catalog.Pool.Reset()
	// Recorded on the volume before it is locked; later events (refused
	// logins) wait in memory for the unlock.
	d.audit(audit.Event{Type: "key.state", Outcome: audit.OutcomeSuccess, Reason: reason, Fields: map[string]any{"state": state}})
	if err := d.auditStream.Detach(); err != nil {
		d.Log.Error("Closing the audit log before locking failed.", "error", err)
	}
	if err := d.atRest.Lock(); err != nil {
		d.audit(audit.Event{Type: "key.state", Outcome: audit.OutcomeFailure, Reason: "removing the key from the kernel failed: " + err.Error(),
			Fields: map[string]any{"state": state}})
		return fmt.Errorf("removing the key from the kernel: %w", err)
	}
	d.Log.Warn("Server data shut away.", "state", state, "reason", reason)
	return nil
}

// unlockKey unwraps the data key again, unlocks the volume and starts PostgreSQL.
func (d *Daemon) unlockKey(r *http.Request) (any, error) {
	d.keyMu.Lock()
	defer d.keyMu.Unlock()
	if err := d.restoreLocked(); err != nil {
		var ke *KeyError
		if errors.As(err, &ke) {
			return nil, api.Errorf(api.CodeUnavailable, "%v", err)
		}
		return nil, err
	}
	return d.keyInfo(), nil
}

// restoreLocked brings a shut-away server back. Callers hold keyMu.
func (d *Daemon) restoreLocked() error {
	if d.keyState.Load().State == KeyAvailable {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := d.atRest.Open(ctx); err != nil {
		return err
	}
	// What happened while locked is written now, in order.
	if err := d.auditStream.Attach(); err != nil {
		d.Log.Error("The audit log cannot be opened after unlock; retrying.", "error", err)
	}
	if err := d.startPostgres(ctx); err != nil {
		return err
	}
	d.storeKeyState(&KeyState{State: KeyAvailable, Since: time.Now()})
	d.Log.Info("Server data available again.")
	d.audit(audit.Event{Type: "key.state", Outcome: audit.OutcomeSuccess, Fields: map[string]any{"state": KeyAvailable}})
	return nil
}

// postgresVersion reads the version of the installed server binary, which
// works whether or not PostgreSQL is running.
func postgresVersion(c *postgres.Cluster) string {
	out, err := exec.Command(c.Bin("postgres"), "--version").Output()
	if err != nil {
		return ""
	}
	// "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
	v := strings.TrimSpace(string(out))
	if i := strings.Index(v, ") "); i >= 0 {
		v = v[i+2:]
	}
	return v
}
