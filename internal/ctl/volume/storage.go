// Package volume is the controller of a server's encrypted volume: the
// volume and the keys that open it (AtRest), `pgshield storage show|resize`,
// automatic growth, and the recovery from a death of the process serving
// the volume (gocryptfs).
//
// It is named volume, not storage, so that it does not shadow
// internal/storage (the backends), which every file here imports.
//
// Every change of the volume (grow, remount) runs under the keys
// controller's lock (KeyGate.Locked): it serializes them with lock, unlock
// and rewrap, which open and close the same volume.
package volume

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/ctl/conf"
	"github.com/pgshield/pgshield/internal/storage"
)

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
	// fullCheckInterval is how often checkFull looks for a full volume or
	// host filesystem.
	fullCheckInterval = 5 * time.Second
)

// KeyGate is the keys controller as the volume sees it.
type KeyGate interface {
	// State is the data key's state (apitype.Key*), read without the lock.
	State() string
	// Locked runs fn holding the lock that serializes every transition of
	// the volume.
	Locked(fn func() error) error
	// SetInaccessibleLocked records that the key cannot unwrap the data
	// key; only inside Locked.
	SetInaccessibleLocked(reason string)
}

// Server is the rest of the server as the volume sees it: what must stop
// before the volume can be unmounted, and start again after.
type Server interface {
	// Quiesce ends every session with clientMsg, stops everything that
	// writes to the volume (backups, PostgreSQL), records last if it is
	// not nil, and closes the audit log on the volume.
	Quiesce(clientMsg string, last *audit.Event)
	// Resume reopens the audit log and starts PostgreSQL on the volume,
	// which is unlocked again.
	Resume(ctx context.Context) error
}

// Config is what the controller needs.
type Config struct {
	Layout config.Layout
	Log    *slog.Logger
	Conf   *conf.Store
	Audit  func(audit.Event)
	// Volume is the server's volume; nil makes one from Conf.
	Volume *AtRest
}

// Controller is the storage of one running server. Its own lock (stats)
// guards only its bookkeeping and is taken inside the key lock, never
// around another.
type Controller struct {
	c      Config
	atRest *AtRest
	keys   KeyGate
	server Server
	stats  struct {
		mu             sync.Mutex
		lastGrow       *apitype.GrowRecord
		lastWarn       time.Time // of "cannot grow"
		fuseRestarts   int
		full           string    // FullVolume, FullHost or "": at the last checkFull
		lastRepair     time.Time // of a repair of the volume's filesystem
		lastRepairWait time.Time // of "waiting for room to repair"
	}
}

// New makes the controller; Bind gives it the key gate and the server,
// which are built after it.
func New(c Config) *Controller {
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Audit == nil {
		c.Audit = func(audit.Event) {}
	}
	a := c.Volume
	if a == nil {
		a = &AtRest{Layout: c.Layout, Cfg: c.Conf.Get(), Log: c.Log}
	}
	return &Controller{c: c, atRest: a}
}

// Bind wires the controller to the key gate and the rest of the server.
// Call it once, before Run or any API call.
func (s *Controller) Bind(keys KeyGate, server Server) { s.keys, s.server = keys, server }

// AtRest is the volume and the keys that open it.
func (s *Controller) AtRest() *AtRest { return s.atRest }

// Info describes the volume for `pgshield storage show`.
func (s *Controller) Info(ctx context.Context) apitype.StorageInfo {
	b := s.atRest.volume()
	st := b.Status(ctx)
	info := apitype.StorageInfo{Backend: b.Kind(), Description: b.Description(), State: s.keys.State(),
		MountPoint: s.c.Layout.VolumeMount(), Autogrow: s.autogrowOn(),
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
	if info.State == apitype.KeyAvailable {
		info.Full, info.FullDetail = fullness(b)
	}
	s.stats.mu.Lock()
	info.LastGrow = s.stats.lastGrow
	info.FUSERestarts = s.stats.fuseRestarts
	s.stats.mu.Unlock()
	return info
}

func (s *Controller) autogrowOn() bool {
	return s.c.Conf.Get().Parameters["pgshield.storage_autogrow"] != "off"
}

// Resize grows the volume to sizeBytes (rounded up to whole
// blocks); the answer says how, and describes the volume after.
func (s *Controller) Resize(sizeBytes int64) (apitype.StorageResizeResult, error) {
	if sizeBytes <= 0 {
		return apitype.StorageResizeResult{}, clienterr.New(apitype.CodeInvalid, "give the new size (size_bytes > 0)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var rec apitype.GrowRecord
	if err := s.keys.Locked(func() (err error) {
		rec, err = s.growLocked(ctx, sizeBytes, false)
		return err
	}); err != nil {
		return apitype.StorageResizeResult{}, err
	}
	return apitype.StorageResizeResult{Grow: rec, Storage: s.Info(ctx)}, nil
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
// stopped for the moment of an offline resize2fs. Callers hold the key lock.
func (s *Controller) growLocked(ctx context.Context, size int64, automatic bool) (apitype.GrowRecord, error) {
	b := s.atRest.volume()
	if err := b.CanResize(); err != nil {
		return apitype.GrowRecord{}, clienterr.New(apitype.CodeInvalid, "%v", err)
	}
	if st := s.keys.State(); st != apitype.KeyAvailable {
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
		s.c.Log.Info("Online resize is not permitted here (no CAP_SYS_RESOURCE); growing the volume offline with PostgreSQL stopped briefly.")
		rec.Method = apitype.GrowOffline
		start := time.Now()
		err = s.offlineGrowLocked(ctx, size)
		rec.DowntimeSeconds = time.Since(start).Seconds()
	}
	event := "storage.resize"
	if automatic {
		event = "storage.autogrow"
	}
	fields := map[string]any{"from_bytes": cur, "to_bytes": size, "method": rec.Method, "downtime_seconds": rec.DowntimeSeconds}
	if err != nil {
		s.c.Log.Error("Growing the volume failed.", "from", cur, "to", size, "method", rec.Method, "error", err)
		s.c.Audit(audit.Event{Type: event, Outcome: audit.OutcomeFailure, Reason: err.Error(), Fields: fields})
		return rec, fmt.Errorf("growing the volume: %w", err)
	}
	if serr := s.c.Conf.Edit(func(cur *config.Config, commit func(*config.Config) error) error {
		newCfg := *cur
		newCfg.StorageSize = size
		if err := commit(&newCfg); err != nil {
			return err
		}
		s.atRest.Cfg = &newCfg
		return nil
	}); serr != nil {
		s.c.Log.Error("Saving the new volume size failed (the volume did grow).", "error", serr)
	}
	s.stats.mu.Lock()
	s.stats.lastGrow = &rec
	s.stats.mu.Unlock()
	s.c.Log.Info("Volume grown.", "from", bytesText(cur), "to", bytesText(size), "method", rec.Method,
		"automatic", automatic, "downtime", time.Duration(rec.DowntimeSeconds*float64(time.Second)))
	s.c.Audit(audit.Event{Type: event, Outcome: audit.OutcomeSuccess, Fields: fields})
	return rec, nil
}

// offlineGrowLocked stops PostgreSQL, unmounts and detaches the volume,
// grows it (e2fsck -f, resize2fs), and brings everything back. The volume
// is brought back even when the resize fails. Callers hold the key lock.
func (s *Controller) offlineGrowLocked(ctx context.Context, size int64) error {
	s.server.Quiesce("terminating connection because the storage is being resized", nil)
	resizeErr := s.atRest.Close(ctx)
	if resizeErr == nil {
		resizeErr = s.atRest.volume().Resize(ctx, size)
	}
	return errors.Join(resizeErr, s.reopenLocked(ctx))
}

// reopenLocked mounts (and unlocks) the volume again and restarts what
// Quiesce stopped. A key that cannot be unwrapped any more makes the
// server Inaccessible, which revalidation undoes when the key is back.
func (s *Controller) reopenLocked(ctx context.Context) error {
	if err := s.atRest.Open(ctx); err != nil {
		var ke *KeyError
		if errors.As(err, &ke) {
			s.keys.SetInaccessibleLocked(err.Error())
		}
		return err
	}
	return s.server.Resume(ctx)
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

// Run grows the volume when it runs out of room and remounts a
// gocryptfs volume whose process died. It runs until ctx ends.
func (s *Controller) Run(ctx context.Context) {
	interval := autogrowInterval
	if v := os.Getenv(autogrowIntervalEnv); v != "" {
		if iv, err := time.ParseDuration(v); err == nil && iv >= 100*time.Millisecond && iv <= time.Hour {
			interval = iv
		}
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	fullTick := time.NewTicker(fullCheckInterval)
	defer fullTick.Stop()
	// Nil, never ready, unless a process serves the volume (gocryptfs).
	exited := s.atRest.volume().Exited()
	var retry <-chan time.Time // set while a remount failed
	backoff := time.Second
	for {
		select {
		case <-ctx.Done():
			return
		case err := <-exited:
			retry = s.remountAfterFUSEExit(ctx, err, &backoff)
		case <-retry:
			retry = s.remountAfterFUSEExit(ctx, nil, &backoff)
		case <-tick.C:
			s.autogrow(ctx)
		case <-fullTick.C:
			s.repairIfFailed(ctx, s.checkFull() == FullHost)
		}
	}
}

// remountAfterFUSEExit recovers from the death of gocryptfs: sessions end,
// PostgreSQL stops, the dead mount goes, gocryptfs mounts again and
// PostgreSQL starts, replaying its WAL: everything it had synced is in the
// ciphertext files, which gocryptfs fsyncs before answering an fsync. It
// returns a timer for another try when that failed.
func (s *Controller) remountAfterFUSEExit(ctx context.Context, cause error, backoff *time.Duration) <-chan time.Time {
	if ctx.Err() != nil {
		return nil
	}
	var retry <-chan time.Time
	_ = s.keys.Locked(func() error {
		retry = s.remountLocked(ctx, cause, backoff)
		return nil
	})
	return retry
}

// remountLocked is remountAfterFUSEExit under the key lock.
func (s *Controller) remountLocked(ctx context.Context, cause error, backoff *time.Duration) <-chan time.Time {
	if st := s.keys.State(); st != apitype.KeyAvailable {
		return nil // locked or inaccessible: unmounted on purpose; unlock mounts again
	}
	if alive, _ := s.atRest.volume().Unlocked(); alive && cause == nil {
		return nil
	}
	start := time.Now()
	s.c.Log.Error("gocryptfs is gone: stopping PostgreSQL, remounting the volume, restarting PostgreSQL.", "cause", errText(cause))
	s.server.Quiesce("terminating connection because the encrypted storage is being remounted", nil)
	rctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	err := s.reopenLocked(rctx)
	fields := map[string]any{"cause": errText(cause), "downtime_seconds": time.Since(start).Seconds()}
	if err != nil {
		s.c.Log.Error("Remounting the gocryptfs volume failed; retrying.", "error", err, "retry_in", *backoff)
		s.c.Audit(audit.Event{Type: "storage.remount", Outcome: audit.OutcomeFailure, Reason: err.Error(), Fields: fields})
		var ke *KeyError
		if errors.As(err, &ke) {
			return nil // Inaccessible now; revalidation brings it back
		}
		t := time.After(*backoff)
		*backoff = min(*backoff*2, 30*time.Second)
		return t
	}
	*backoff = time.Second
	s.stats.mu.Lock()
	s.stats.fuseRestarts++
	s.stats.mu.Unlock()
	s.c.Log.Info("Volume remounted and PostgreSQL restarted after gocryptfs died.", "downtime", time.Since(start))
	s.c.Audit(audit.Event{Type: "storage.remount", Outcome: audit.OutcomeSuccess, Fields: fields})
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
func (s *Controller) autogrow(ctx context.Context) {
	b := s.atRest.volume()
	if !s.autogrowOn() || b.CanResize() != nil || s.keys.State() != apitype.KeyAvailable {
		return
	}
	total, free, err := b.Usage()
	if err != nil || total == 0 || float64(free) >= autogrowThreshold*float64(total) {
		return
	}
	_ = s.keys.Locked(func() error {
		s.autogrowLocked(ctx, b, total, free)
		return nil
	})
}

// autogrowLocked is autogrow under the key lock.
func (s *Controller) autogrowLocked(ctx context.Context, b storage.Backend, total, free uint64) {
	if s.keys.State() != apitype.KeyAvailable {
		return
	}
	cur, _, err := b.Size()
	if err != nil {
		s.c.Log.Error("Autogrow: reading the volume image failed.", "error", err)
		return
	}
	limit, avail, margin, err := hostLimit(b)
	if err != nil {
		s.c.Log.Error("Autogrow: reading the host filesystem's free space failed.", "error", err)
		return
	}
	target, ok := autogrowTarget(cur, limit)
	if !ok {
		s.stats.mu.Lock()
		warn := time.Since(s.stats.lastWarn) >= autogrowWarnEvery
		if warn {
			s.stats.lastWarn = time.Now()
		}
		s.stats.mu.Unlock()
		if warn {
			reason := fmt.Sprintf("the volume has %s of %s free, but the filesystem holding its image has only %s free (keeping %s there): not growing",
				bytesText(int64(free)), bytesText(int64(total)), bytesText(avail), bytesText(margin))
			s.c.Log.Warn("Autogrow: the volume is almost full and cannot grow.", "reason", reason)
			s.c.Audit(audit.Event{Type: "storage.autogrow", Outcome: audit.OutcomeFailure, Reason: reason,
				Fields: map[string]any{"from_bytes": cur}})
		}
		return
	}
	if want := autogrowStep(cur); target < want {
		s.c.Log.Warn("Autogrow: growing less than usual; the filesystem holding the image is short of space.",
			"wanted", bytesText(want), "growing_to", bytesText(target), "host_free", bytesText(avail))
	}
	s.c.Log.Info("Autogrow: the volume is more than 90% full; growing it.", "used", bytesText(int64(total-free)),
		"size", bytesText(int64(total)), "to", bytesText(target))
	gctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if _, err := s.growLocked(gctx, target, true); err != nil {
		s.c.Log.Error("Autogrow failed.", "error", err)
	}
}
