package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/storage"
	"github.com/pgshield/pgshield/internal/wire"
)

// Storage: `pgshield storage show|resize`, automatic growth, and the
// recovery from a death of the process serving the volume (gocryptfs).

const (
	// autogrowThreshold: grow when less than this fraction is free, as
	// Azure Database for PostgreSQL and Amazon RDS do (10%).
	autogrowThreshold = 0.10
	// autogrowInterval is how often free space is checked.
	autogrowInterval = 30 * time.Second
	// autogrowIntervalEnv overrides autogrowInterval. For tests only.
	autogrowIntervalEnv = "PGSHIELD_TEST_AUTOGROW_INTERVAL"
	// growStepMin is the least an automatic growth adds; otherwise 25%.
	growStepMin int64 = 1 << 30
	// hostMarginMin is the least free space left in the filesystem that
	// holds the image after the volume could be filled; otherwise 5% of it.
	hostMarginMin int64 = 1 << 30
	// autogrowWarnEvery rate-limits the warning that growth is impossible.
	autogrowWarnEvery = time.Hour
)

// storageState is the daemon's storage bookkeeping (AtRest.stats).
type storageState struct {
	mu           sync.Mutex
	lastGrow     *apitype.GrowRecord
	lastWarn     time.Time // of "cannot grow"
	fuseRestarts int
}

// --- API ---

// Storage describes the volume for `pgshield storage show`.
func (d *Daemon) Storage(ctx context.Context) apitype.StorageInfo {
	b := d.atRest.volume()
	st := b.Status(ctx)
	info := apitype.StorageInfo{Backend: b.Kind(), Description: b.Description(), State: d.keyState.Load().State,
		MountPoint: d.Layout.VolumeMount(), Autogrow: d.autogrowOn(),
		ImagePath: st.Image, LoopDevice: st.LoopDevice, StoragePath: st.Path, CipherDir: st.CipherDir, FUSEPID: st.PID}
	if st.FixedSize != "" {
		info.AutogrowNote = "not applicable: " + st.FixedSize
	}
	if b.CanResize() == nil {
		info.Resizable = true
		info.ImageBytes, info.ImageAllocatedBytes, _ = b.Size()
	}
	if _, avail, err := b.HostSpace(); err == nil {
		info.HostFreeBytes = uint64(avail)
	}
	if total, free, err := b.Usage(); err == nil {
		info.SizeBytes, info.FreeBytes = total, free
		info.UsedBytes = total - min(free, total)
	} else if info.ImageBytes > 0 {
		info.SizeBytes = uint64(info.ImageBytes)
	}
	d.atRest.stats.mu.Lock()
	info.LastGrow = d.atRest.stats.lastGrow
	info.FUSERestarts = d.atRest.stats.fuseRestarts
	d.atRest.stats.mu.Unlock()
	return info
}

func (d *Daemon) autogrowOn() bool {
	return d.config().Parameters["pgshield.storage_autogrow"] != "off"
}

// ResizeStorage grows the volume to sizeBytes (rounded up to whole
// blocks); the answer says how, and describes the volume after.
func (d *Daemon) ResizeStorage(sizeBytes int64) (apitype.StorageResizeResult, error) {
	if sizeBytes <= 0 {
		return apitype.StorageResizeResult{}, clienterr.New(apitype.CodeInvalid, "give the new size (size_bytes > 0)")
	}
	d.keyMu.Lock()
	defer d.keyMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rec, err := d.growLocked(ctx, sizeBytes, false)
	if err != nil {
		return apitype.StorageResizeResult{}, err
	}
	return apitype.StorageResizeResult{Grow: rec, Storage: d.Storage(ctx)}, nil
}

// hostLimit is the largest size the volume may have so that, filled to the
// last block, it still leaves a margin (5% of the host filesystem, at least
// 1 GiB) free in the filesystem that holds it.
func hostLimit(b storage.Backend) (limit, avail, margin int64, err error) {
	_, allocated, err := b.Size()
	if err != nil {
		return 0, 0, 0, err
	}
	total, avail, err := b.HostSpace()
	if err != nil {
		return 0, 0, 0, err
	}
	margin = max(hostMarginMin, total/20)
	limit = allocated + avail - margin
	return limit &^ (storage.SizeAlign - 1), avail, margin, nil
}

// growLocked grows a resizable volume (an image) to size: online when the
// kernel lets pgshield (CAP_SYS_RESOURCE), otherwise with PostgreSQL
// stopped for the moment of an offline resize2fs. Callers hold keyMu.
func (d *Daemon) growLocked(ctx context.Context, size int64, automatic bool) (apitype.GrowRecord, error) {
	b := d.atRest.volume()
	if err := b.CanResize(); err != nil {
		return apitype.GrowRecord{}, clienterr.New(apitype.CodeInvalid, "%v", err)
	}
	if st := d.keyState.Load().State; st != apitype.KeyAvailable {
		return apitype.GrowRecord{}, clienterr.New(apitype.CodeUnavailable, "the server is %s: the volume can be resized only while it is Available", st)
	}
	size = (size + storage.SizeAlign - 1) &^ (storage.SizeAlign - 1)
	cur, _, err := b.Size()
	if err != nil {
		return apitype.GrowRecord{}, fmt.Errorf("reading the volume image: %w", err)
	}
	if size < cur {
		return apitype.GrowRecord{}, clienterr.New(apitype.CodeInvalid,
			"refusing to shrink the volume from %s to %s: volumes only grow (to shrink, restore a backup into a smaller server)", bytesText(cur), bytesText(size))
	}
	if size == cur {
		return apitype.GrowRecord{}, clienterr.New(apitype.CodeInvalid, "the volume is %s already", bytesText(cur))
	}
	limit, avail, margin, err := hostLimit(b)
	if err != nil {
		return apitype.GrowRecord{}, fmt.Errorf("reading the host filesystem's free space: %w", err)
	}
	if size > limit {
		return apitype.GrowRecord{}, clienterr.New(apitype.CodeInvalid,
			"the filesystem holding %s has %s free: a volume of %s could outgrow it (at most %s keeps %s free there); free space there first",
			b.Status(ctx).Image, bytesText(avail), bytesText(size), bytesText(max(limit, cur)), bytesText(margin))
	}
	rec := apitype.GrowRecord{At: time.Now(), FromBytes: cur, ToBytes: size, Method: apitype.GrowOnline, Automatic: automatic}
	err = b.Resize(ctx, size)
	if errors.Is(err, storage.ErrOnlineResizeNotPermitted) {
		d.Log.Info("Online resize is not permitted here (no CAP_SYS_RESOURCE); growing the volume offline with PostgreSQL stopped briefly.")
		rec.Method = apitype.GrowOffline
		start := time.Now()
		err = d.offlineGrowLocked(ctx, size)
		rec.DowntimeSeconds = time.Since(start).Seconds()
	}
	event := "storage.resize"
	if automatic {
		event = "storage.autogrow"
	}
	fields := map[string]any{"from_bytes": cur, "to_bytes": size, "method": rec.Method, "downtime_seconds": rec.DowntimeSeconds}
	if err != nil {
		d.Log.Error("Growing the volume failed.", "from", cur, "to", size, "method", rec.Method, "error", err)
		d.audit(audit.Event{Type: event, Outcome: audit.OutcomeFailure, Reason: err.Error(), Fields: fields})
		return rec, fmt.Errorf("growing the volume: %w", err)
	}
	d.cfgMu.Lock()
	newCfg := *d.cfg
	newCfg.StorageSize = size
	if serr := config.Save(d.Layout, &newCfg); serr != nil {
		d.Log.Error("Saving the new volume size failed (the volume did grow).", "error", serr)
	} else {
		d.cfg = &newCfg
		d.atRest.Cfg = &newCfg
	}
	d.cfgMu.Unlock()
	d.atRest.stats.mu.Lock()
	d.atRest.stats.lastGrow = &rec
	d.atRest.stats.mu.Unlock()
	d.Log.Info("Volume grown.", "from", bytesText(cur), "to", bytesText(size), "method", rec.Method,
		"automatic", automatic, "downtime", time.Duration(rec.DowntimeSeconds*float64(time.Second)))
	d.audit(audit.Event{Type: event, Outcome: audit.OutcomeSuccess, Fields: fields})
	return rec, nil
}

// offlineGrowLocked stops PostgreSQL, unmounts and detaches the volume,
// grows it (e2fsck -f, resize2fs), and brings everything back. The volume
// is brought back even when the resize fails. Callers hold keyMu.
func (d *Daemon) offlineGrowLocked(ctx context.Context, size int64) error {
	d.gw.TerminateAll(wire.ErrorMessage(wire.CodeAdminShutdown, "terminating connection because the storage is being resized"))
	d.quiesceLocked()
	resizeErr := d.atRest.Close(ctx)
	if resizeErr == nil {
		resizeErr = d.atRest.volume().Resize(ctx, size)
	}
	return errors.Join(resizeErr, d.reopenLocked(ctx))
}

// quiesceLocked stops everything that writes to the volume and closes the
// audit log on it, so that it can be unmounted.
func (d *Daemon) quiesceLocked() {
	d.backups.stop()
	d.supervisor().Stop(30 * time.Second)
	d.catalog.Pool.Reset()
	if err := d.auditStream.Detach(); err != nil {
		d.Log.Warn("Closing the audit log before unmounting failed; its events wait in memory.", "error", err)
	}
}

// reopenLocked mounts (and unlocks) the volume again and restarts what
// quiesceLocked stopped. A key that cannot be unwrapped any more makes the
// server Inaccessible, which revalidation undoes when the key is back.
func (d *Daemon) reopenLocked(ctx context.Context) error {
	if err := d.atRest.Open(ctx); err != nil {
		var ke *KeyError
		if errors.As(err, &ke) {
			d.storeKeyState(&apitype.KeyState{State: apitype.KeyInaccessible, Since: time.Now(), Reason: err.Error()})
		}
		return err
	}
	if err := d.auditStream.Attach(); err != nil {
		d.Log.Error("The audit log cannot be opened after remounting; retrying.", "error", err)
	}
	return d.startPostgres(ctx)
}

// bytesText renders a size for people: 1.5 GiB, 640 MiB.
func bytesText(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return strconv.FormatInt(n>>30, 10) + " GiB"
	case n >= 1<<30:
		return strconv.FormatFloat(float64(n)/(1<<30), 'f', 2, 64) + " GiB"
	default:
		return strconv.FormatFloat(float64(n)/(1<<20), 'f', 0, 64) + " MiB"
	}
}

// --- background: autogrow and gocryptfs supervision ---

// storageLoop grows the volume when it runs out of room and remounts a
// gocryptfs volume whose process died. It runs until ctx ends.
func (d *Daemon) storageLoop(ctx context.Context) {
	interval := autogrowInterval
	if v := os.Getenv(autogrowIntervalEnv); v != "" {
		if iv, err := time.ParseDuration(v); err == nil && iv >= 100*time.Millisecond && iv <= time.Hour {
			interval = iv
		}
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	// Nil, never ready, unless a process serves the volume (gocryptfs).
	exited := d.atRest.volume().Exited()
	var retry <-chan time.Time // set while a remount failed
	backoff := time.Second
	for {
		select {
		case <-ctx.Done():
			return
		case err := <-exited:
			retry = d.remountAfterFUSEExit(ctx, err, &backoff)
		case <-retry:
			retry = d.remountAfterFUSEExit(ctx, nil, &backoff)
		case <-tick.C:
			d.autogrow(ctx)
		}
	}
}

// remountAfterFUSEExit recovers from the death of gocryptfs: sessions end,
// PostgreSQL stops, the dead mount goes, gocryptfs mounts again and
// PostgreSQL starts, replaying its WAL: everything it had synced is in the
// ciphertext files, which gocryptfs fsyncs before answering an fsync. It
// returns a timer for another try when that failed.
func (d *Daemon) remountAfterFUSEExit(ctx context.Context, cause error, backoff *time.Duration) <-chan time.Time {
	if ctx.Err() != nil {
		return nil
	}
	d.keyMu.Lock()
	defer d.keyMu.Unlock()
	if st := d.keyState.Load().State; st != apitype.KeyAvailable {
		return nil // locked or inaccessible: unmounted on purpose; unlock mounts again
	}
	if alive, _ := d.atRest.volume().Unlocked(); alive && cause == nil {
		return nil
	}
	start := time.Now()
	d.Log.Error("gocryptfs is gone: stopping PostgreSQL, remounting the volume, restarting PostgreSQL.", "cause", errText(cause))
	d.gw.TerminateAll(wire.ErrorMessage(wire.CodeAdminShutdown, "terminating connection because the encrypted storage is being remounted"))
	d.quiesceLocked()
	rctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	err := d.reopenLocked(rctx)
	fields := map[string]any{"cause": errText(cause), "downtime_seconds": time.Since(start).Seconds()}
	if err != nil {
		d.Log.Error("Remounting the gocryptfs volume failed; retrying.", "error", err, "retry_in", *backoff)
		d.audit(audit.Event{Type: "storage.remount", Outcome: audit.OutcomeFailure, Reason: err.Error(), Fields: fields})
		var ke *KeyError
		if errors.As(err, &ke) {
			return nil // Inaccessible now; revalidation brings it back
		}
		t := time.After(*backoff)
		*backoff = min(*backoff*2, 30*time.Second)
		return t
	}
	*backoff = time.Second
	d.atRest.stats.mu.Lock()
	d.atRest.stats.fuseRestarts++
	d.atRest.stats.mu.Unlock()
	d.Log.Info("Volume remounted and PostgreSQL restarted after gocryptfs died.", "downtime", time.Since(start))
	d.audit(audit.Event{Type: "storage.remount", Outcome: audit.OutcomeSuccess, Fields: fields})
	return nil
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// autogrowStep is the size an automatic growth aims for: 25% more, at
// least 1 GiB more, in whole MiB.
func autogrowStep(cur int64) int64 {
	t := cur + max(cur/4, growStepMin)
	return (t + (1<<20 - 1)) &^ (1<<20 - 1)
}

// autogrowTarget is autogrowStep capped at limit (what the host filesystem
// can back); ok is false when what fits is not worth a resize (less than
// 10% or 64 MiB more).
func autogrowTarget(cur, limit int64) (target int64, ok bool) {
	target = min(autogrowStep(cur), limit&^(1<<20-1))
	if target-cur < max(cur/10, 64<<20) {
		return cur, false
	}
	return target, true
}

// autogrow grows a resizable volume (an image) that has less than 10% free by
// 25% (at least 1 GiB), within what the host filesystem can hold.
func (d *Daemon) autogrow(ctx context.Context) {
	b := d.atRest.volume()
	if !d.autogrowOn() || b.CanResize() != nil || d.keyState.Load().State != apitype.KeyAvailable {
		return
	}
	total, free, err := b.Usage()
	if err != nil || total == 0 || float64(free) >= autogrowThreshold*float64(total) {
		return
	}
	d.keyMu.Lock()
	defer d.keyMu.Unlock()
	if d.keyState.Load().State != apitype.KeyAvailable {
		return
	}
	cur, _, err := b.Size()
	if err != nil {
		d.Log.Error("Autogrow: reading the volume image failed.", "error", err)
		return
	}
	limit, avail, margin, err := hostLimit(b)
	if err != nil {
		d.Log.Error("Autogrow: reading the host filesystem's free space failed.", "error", err)
		return
	}
	target, ok := autogrowTarget(cur, limit)
	if !ok {
		d.atRest.stats.mu.Lock()
		warn := time.Since(d.atRest.stats.lastWarn) >= autogrowWarnEvery
		if warn {
			d.atRest.stats.lastWarn = time.Now()
		}
		d.atRest.stats.mu.Unlock()
		if warn {
			reason := fmt.Sprintf("the volume has %s of %s free, but the filesystem holding its image has only %s free (keeping %s there): not growing",
				bytesText(int64(free)), bytesText(int64(total)), bytesText(avail), bytesText(margin))
			d.Log.Warn("Autogrow: the volume is almost full and cannot grow.", "reason", reason)
			d.audit(audit.Event{Type: "storage.autogrow", Outcome: audit.OutcomeFailure, Reason: reason,
				Fields: map[string]any{"from_bytes": cur}})
		}
		return
	}
	if want := autogrowStep(cur); target < want {
		d.Log.Warn("Autogrow: growing less than usual; the filesystem holding the image is short of space.",
			"wanted", bytesText(want), "growing_to", bytesText(target), "host_free", bytesText(avail))
	}
	d.Log.Info("Autogrow: the volume is more than 90% full; growing it.", "used", bytesText(int64(total-free)),
		"size", bytesText(int64(total)), "to", bytesText(target))
	gctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if _, err := d.growLocked(gctx, target, true); err != nil {
		d.Log.Error("Autogrow failed.", "error", err)
	}
}
