package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/keys"
	"github.com/pgshield/pgshield/internal/postgres"
	"github.com/pgshield/pgshield/internal/wire"
)

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
	case st == nil || st.State == apitype.KeyAvailable:
	case st.State == apitype.KeyInaccessible:
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

// Key reports the data key's state, source and backend for `key show` and
// `status`.
func (d *Daemon) Key() apitype.KeyInfo {
	cfg := d.config()
	ki := apitype.KeyInfo{KeyState: *d.keyState.Load(), Backend: d.atRest.volume().Description(),
		KeySource: "customer-managed", KeyURI: keys.RedactURI(cfg.KeyURI)}
	if cfg.KeyURI == keys.SystemKeyURI(SystemKEKPath(cfg.ServerID)) {
		ki.KeySource = "system-managed"
	}
	d.revalMu.Lock()
	ki.LastValidated, ki.LastError, ki.GraceSince = timePtr(d.reval.lastOK), d.reval.lastErr, timePtr(d.reval.graceStart)
	d.revalMu.Unlock()
	if ki.State == apitype.KeyAvailable {
		ki.TotalBytes, ki.FreeBytes, _ = d.atRest.volume().Usage()
	}
	return ki
}

// LockKey ends every session, stops PostgreSQL cleanly and removes the key
// from the kernel, after which even root reads only ciphertext.
func (d *Daemon) LockKey() (apitype.KeyInfo, error) {
	d.keyMu.Lock()
	defer d.keyMu.Unlock()
	if d.keyState.Load().State == apitype.KeyLocked {
		return d.Key(), nil
	}
	if err := d.shutAwayLocked(apitype.KeyLocked, "locked by the operator",
		"terminating connection because the server is being locked"); err != nil {
		return apitype.KeyInfo{}, err
	}
	return d.Key(), nil
}

// shutAwayLocked moves the server to a state where its data cannot be read:
// new sessions are refused, open ones ended, PostgreSQL stopped, the key
// removed from the kernel. Callers hold keyMu.
func (d *Daemon) shutAwayLocked(state, reason, clientMsg string) error {
	if cur := d.keyState.Load(); cur.State != apitype.KeyAvailable {
		// Already shut away; only the state and reason change.
		d.storeKeyState(&apitype.KeyState{State: state, Since: cur.Since, Reason: reason})
		return nil
	}
	d.storeKeyState(&apitype.KeyState{State: state, Since: time.Now(), Reason: reason})
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

// UnlockKey unwraps the data key again, unlocks the volume and starts
// PostgreSQL.
func (d *Daemon) UnlockKey() (apitype.KeyInfo, error) {
	d.keyMu.Lock()
	defer d.keyMu.Unlock()
	if err := d.restoreLocked(); err != nil {
		var ke *KeyError
		if errors.As(err, &ke) {
			return apitype.KeyInfo{}, clienterr.New(apitype.CodeUnavailable, "%v", err)
		}
		return apitype.KeyInfo{}, err
	}
	return d.Key(), nil
}

// restoreLocked brings a shut-away server back. Callers hold keyMu.
func (d *Daemon) restoreLocked() error {
	if d.keyState.Load().State == apitype.KeyAvailable {
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
	d.storeKeyState(&apitype.KeyState{State: apitype.KeyAvailable, Since: time.Now()})
	d.Log.Info("Server data available again.")
	d.audit(audit.Event{Type: "key.state", Outcome: audit.OutcomeSuccess, Fields: map[string]any{"state": apitype.KeyAvailable}})
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
