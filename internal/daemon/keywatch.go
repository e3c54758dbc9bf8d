package daemon

import (
	"context"
	"fmt"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/keys"
)

// revalidation is the state of the periodic key check; guarded by revalMu.
type revalidation struct {
	lastOK     time.Time
	lastErr    string
	graceStart time.Time // zero unless the KMS is unreachable right now
}

// revalidateLoop proves, every pgshield.key_revalidation_interval, that
// the data key can still be unwrapped. An explicit denial (key disabled,
// scheduled for deletion, deleted, permission removed) makes the server
// Inaccessible at once; a transient failure starts a grace period.
func (d *Daemon) revalidateLoop(ctx context.Context) {
	// Tick each second and compare with the interval in force, so a changed
	// interval applies at once rather than after the old one runs out.
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		// Run up to one tick early, so a revocation is seen within the
		// interval, never interval plus a tick.
		if time.Since(last)+time.Second <= d.currentParams().KeyRevalidation {
			continue
		}
		d.revalidate(ctx)
		last = time.Now()
	}
}

func (d *Daemon) revalidate(ctx context.Context) {
	if d.keyState.Load().State == apitype.KeyLocked {
		return // the operator's lock is undone only by the operator
	}
	d.keyMu.Lock()
	defer d.keyMu.Unlock()
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	err := d.atRest.Check(cctx) // under keyMu: the key URI may be changing
	cancel()
	d.metrics.Revalidation(revalidationResult(err))
	now := time.Now()
	d.revalMu.Lock()
	if err == nil {
		d.reval.lastOK, d.reval.lastErr = now, ""
		if !d.reval.graceStart.IsZero() {
			d.Log.Info("The key-encryption key is reachable again.")
			d.reval.graceStart = time.Time{}
		}
	} else {
		d.reval.lastErr = err.Error()
	}
	graceStart := d.reval.graceStart
	kind := keys.ErrorKind(err)
	if err != nil && kind != keys.KindDenied && kind != keys.KindCorrupt && graceStart.IsZero() {
		d.reval.graceStart, graceStart = now, now
		d.Log.Warn("ALERT: the key-encryption key cannot be reached; grace period started.",
			"kind", kind.String(), "error", err, "grace", d.currentParams().KeyGrace)
	}
	d.revalMu.Unlock()
	if err == nil {
		if d.keyState.Load().State == apitype.KeyInaccessible {
			if err := d.restoreLocked(); err != nil {
				d.Log.Error("Restoring the server after the key came back failed.", "error", err)
			}
		}
		return
	}
	switch kind {
	case keys.KindDenied, keys.KindCorrupt:
		if d.keyState.Load().State != apitype.KeyInaccessible {
			d.Log.Error("The key-encryption key is unavailable; shutting the data away.", "kind", kind.String(), "error", err)
		}
		if serr := d.shutAwayLocked(apitype.KeyInaccessible, "key-encryption key unavailable ("+kind.String()+"): "+err.Error(),
			"terminating connection because the server's customer-managed key is unavailable"); serr != nil {
			d.Log.Error("Shutting the data away failed.", "error", serr)
		}
	default:
		if grace := d.currentParams().KeyGrace; now.Sub(graceStart) >= grace && d.keyState.Load().State == apitype.KeyAvailable {
			if serr := d.shutAwayLocked(apitype.KeyInaccessible, "key-encryption key unreachable for longer than "+grace.String()+": "+err.Error(),
				"terminating connection because the server's customer-managed key is unavailable"); serr != nil {
				d.Log.Error("Shutting the data away failed.", "error", serr)
			}
		}
	}
}

// RevalidateKey is `pgshield key revalidate`: check now, act on the result.
func (d *Daemon) RevalidateKey(ctx context.Context) apitype.KeyInfo {
	d.revalidate(ctx)
	return d.Key()
}

// ChangeKey re-wraps the data key under another key-encryption key
// (`key set --key-uri`), or under the same key's newest version (`key
// rotate`, keyURI empty) or another (`key rotate --key-uri`), online. The
// config is saved only after the new wrapping is.
func (d *Daemon) ChangeKey(ctx context.Context, keyURI string, rotate bool) (apitype.KeyInfo, error) {
	if keyURI == "" && !rotate {
		return apitype.KeyInfo{}, clienterr.New(apitype.CodeInvalid, "key_uri is required")
	}
	d.keyMu.Lock()
	defer d.keyMu.Unlock()
	if st := d.keyState.Load().State; st != apitype.KeyAvailable {
		return apitype.KeyInfo{}, clienterr.New(apitype.CodeUnavailable, "the key can be changed only while the server is Available (it is %s)", st)
	}
	if err := d.rewrapLocked(ctx, keyURI); err != nil {
		return apitype.KeyInfo{}, err
	}
	d.Log.Info("Data key re-wrapped.", "key_uri", keys.RedactURI(d.config().KeyURI), "rotate", rotate)
	d.audit(audit.Event{Type: "key.rewrap", Outcome: audit.OutcomeSuccess,
		Fields: map[string]any{"key_uri": keys.RedactURI(d.config().KeyURI), "rotate": rotate}})
	return d.Key(), nil
}

// rewrapLocked does the work of ChangeKey; callers hold keyMu.
func (d *Daemon) rewrapLocked(ctx context.Context, newURI string) error {
	d.cfgMu.Lock()
	defer d.cfgMu.Unlock()
	if newURI == "" {
		newURI = d.cfg.KeyURI
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	// The backup passphrase follows the data key to the new wrapping;
	// prepared (and proved) first so that a failure changes nothing.
	saveBackupKey, err := d.rewrapBackupKey(ctx, d.cfg.KeyURI, newURI)
	if err != nil {
		return clienterr.New(apitype.CodeInvalid, "%v", err)
	}
	if err := d.atRest.Rewrap(ctx, newURI); err != nil {
		return clienterr.New(apitype.CodeInvalid, "%v", err)
	}
	if err := saveBackupKey(); err != nil {
		return fmt.Errorf("saving the re-wrapped backup passphrase: %w", err)
	}
	newCfg := *d.cfg
	newCfg.KeyURI = newURI
	if err := config.Save(d.Layout, &newCfg); err != nil {
		return fmt.Errorf("saving configuration: %w", err)
	}
	d.cfg = &newCfg
	d.atRest.Cfg = &newCfg
	return nil
}
