package keys

import (
	"context"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/keys"
)

// Run proves, every pgshield.key_revalidation_interval, that
// the data key can still be unwrapped. An explicit denial (key disabled,
// scheduled for deletion, deleted, permission removed) makes the server
// Inaccessible at once; a transient failure starts a grace period.
func (k *Controller) Run(ctx context.Context) {
	// Tick each second and compare with the interval in force, so a changed
	// interval applies at once rather than after the old one runs out.
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	last := k.c.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		// Run up to one tick early, so a revocation is seen within the
		// interval, never interval plus a tick.
		if k.c.Now().Sub(last)+time.Second <= k.c.Conf.Params().KeyRevalidation {
			continue
		}
		k.revalidate(ctx)
		last = k.c.Now()
	}
}

func (k *Controller) revalidate(ctx context.Context) {
	before := k.State()
	k.revalidateOnce(ctx)
	if after := k.State(); after != before && k.c.Changed != nil &&
		(after == apitype.KeyInaccessible || after == apitype.KeyAvailable) {
		k.c.Changed(after)
	}
}

func (k *Controller) revalidateOnce(ctx context.Context) {
	if k.State() == apitype.KeyLocked {
		return // the operator's lock is undone only by the operator
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.State() == apitype.KeyLocked {
		return // locked while this check waited for mu
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	err := k.c.Volume.Check(cctx) // under mu: the key URI may be changing
	cancel()
	if k.c.Metrics != nil {
		k.c.Metrics.Revalidation(revalidationResult(err))
	}
	now := k.c.Now()
	k.revalMu.Lock()
	if err == nil {
		k.reval.lastOK, k.reval.lastErr = now, ""
		if !k.reval.graceStart.IsZero() {
			k.c.Log.Info("The key-encryption key is reachable again.")
			k.reval.graceStart = time.Time{}
		}
	} else {
		k.reval.lastErr = err.Error()
	}
	graceStart := k.reval.graceStart
	kind := keys.ErrorKind(err)
	if err != nil && kind != keys.KindDenied && kind != keys.KindCorrupt && graceStart.IsZero() {
		k.reval.graceStart, graceStart = now, now
		k.c.Log.Warn("ALERT: the key-encryption key cannot be reached; grace period started.",
			"kind", kind.String(), "error", err, "grace", k.c.Conf.Params().KeyGrace)
	}
	k.revalMu.Unlock()
	if err == nil {
		if k.State() == apitype.KeyInaccessible {
			if err := k.restoreLocked(); err != nil {
				k.c.Log.Error("Restoring the server after the key came back failed.", "error", err)
			}
		}
		return
	}
	switch kind {
	case keys.KindDenied, keys.KindCorrupt:
		if k.State() != apitype.KeyInaccessible {
			k.c.Log.Error("The key-encryption key is unavailable; shutting the data away.", "kind", kind.String(), "error", err)
		}
		if serr := k.shutAwayLocked(apitype.KeyInaccessible, "key-encryption key unavailable ("+kind.String()+"): "+err.Error(),
			"terminating connection because the server's customer-managed key is unavailable"); serr != nil {
			k.c.Log.Error("Shutting the data away failed.", "error", serr)
		}
	default:
		if grace := k.c.Conf.Params().KeyGrace; now.Sub(graceStart) >= grace && k.State() == apitype.KeyAvailable {
			if serr := k.shutAwayLocked(apitype.KeyInaccessible, "key-encryption key unreachable for longer than "+grace.String()+": "+err.Error(),
				"terminating connection because the server's customer-managed key is unavailable"); serr != nil {
				k.c.Log.Error("Shutting the data away failed.", "error", serr)
			}
		}
	}
}

// Revalidate is `pgshield key revalidate`: check now, act on the result.
func (k *Controller) Revalidate(ctx context.Context) apitype.KeyInfo {
	k.revalidate(ctx)
	return k.Info()
}

// revalidationResult names a revalidation's outcome for the metric.
func revalidationResult(err error) string {
	if err == nil {
		return "ok"
	}
	switch keys.ErrorKind(err) {
	case keys.KindDenied:
		return "denied"
	case keys.KindCorrupt:
		return "corrupt"
	}
	return "unreachable"
}
