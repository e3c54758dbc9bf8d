package daemon

import (
	"context"
	"net/http"
	"time"

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
	for {
		interval := d.currentParams().KeyRevalidation
		if interval <= 0 {
			interval = time.Minute
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
		d.revalidate(ctx)
	}
}

func (d *Daemon) revalidate(ctx context.Context) {
	if d.keyState.Load().State == KeyLocked {
		return // the operator's lock is undone only by the operator
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	err := d.atRest.Check(cctx)
	cancel()
	d.keyMu.Lock()
	defer d.keyMu.Unlock()
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
		if d.keyState.Load().State == KeyInaccessible {
			if err := d.restoreLocked(); err != nil {
				d.Log.Error("Restoring the server after the key came back failed.", "error", err)
			}
		}
		return
	}
	switch kind {
	case keys.KindDenied, keys.KindCorrupt:
		if d.keyState.Load().State != KeyInaccessible {
			d.Log.Error("The key-encryption key is unavailable; shutting the data away.", "kind", kind.String(), "error", err)
		}
		if serr := d.shutAwayLocked(KeyInaccessible, "key-encryption key unavailable ("+kind.String()+"): "+err.Error(),
			"terminating connection because the server's customer-managed key is unavailable"); serr != nil {
			d.Log.Error("Shutting the data away failed.", "error", serr)
		}
	default:
		if grace := d.currentParams().KeyGrace; now.Sub(graceStart) >= grace && d.keyState.Load().State == KeyAvailable {
			if serr := d.shutAwayLocked(KeyInaccessible, "key-encryption key unreachable for longer than "+grace.String()+": "+err.Error(),
				"terminating connection because the server's customer-managed key is unavailable"); serr != nil {
				d.Log.Error("Shutting the data away failed.", "error", serr)
			}
		}
	}
}

// revalidateKey is `pgshield key revalidate`: check now, act on the result.
func (d *Daemon) revalidateKey(r *http.Request) (any, error) {
	d.revalidate(r.Context())
	return d.keyInfo(), nil
}
