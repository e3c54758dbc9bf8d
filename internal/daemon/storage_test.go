package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/storage"
)

func TestAutogrowTarget(t *testing.T) {
	const mib, gib = int64(1 << 20), int64(1 << 30)
	tests := []struct {
		name       string
		cur, limit int64
		want       int64
		ok         bool
	}{
		{name: "small volume grows by 1 GiB", cur: gib, limit: 100 * gib, want: 2 * gib, ok: true},
		{name: "large volume grows by 25%", cur: 40 * gib, limit: 100 * gib, want: 50 * gib, ok: true},
		{name: "rounded up to a MiB", cur: 10*gib + 3, limit: 100 * gib, want: 12*gib + 512*mib + mib, ok: true},
		{name: "capped by the host", cur: 40 * gib, limit: 45 * gib, want: 45 * gib, ok: true},
		{name: "cap rounded down to a MiB", cur: 40 * gib, limit: 45*gib + 123, want: 45 * gib, ok: true},
		{name: "too little room to be worth it", cur: 40 * gib, limit: 43 * gib, want: 40 * gib},
		{name: "small volume, less than 64 MiB room", cur: 100 * mib, limit: 150 * mib, want: 100 * mib},
		{name: "host already over", cur: 40 * gib, limit: 30 * gib, want: 40 * gib},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := autogrowTarget(tt.cur, tt.limit)
			if got != tt.want || ok != tt.ok {
				t.Errorf("autogrowTarget(%d, %d) = %d, %v; want %d, %v", tt.cur, tt.limit, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestBytesText(t *testing.T) {
	for in, want := range map[int64]string{1 << 30: "1 GiB", 3 << 29: "1.50 GiB", 640 << 20: "640 MiB", 0: "0 MiB"} {
		if got := bytesText(in); got != want {
			t.Errorf("bytesText(%d) = %q; want %q", in, got, want)
		}
	}
}

// testDaemon is a daemon with just what the storage logic touches: the
// volume (fake), the key state, the configuration and its file, metrics.
// It runs no PostgreSQL and no gateway, so the offline growth and the
// remount, which stop and start them, are left to the e2e tests.
func testDaemon(t *testing.T, fake *fakeBackend, state string) *Daemon {
	t.Helper()
	l := config.Layout{Root: t.TempDir()}
	cfg := &config.Config{ServerID: "test", StorageSize: fake.size, Parameters: map[string]string{}}
	d := &Daemon{Layout: l, Log: slog.New(slog.DiscardHandler), cfg: cfg}
	d.atRest = &AtRest{Layout: l, Cfg: cfg, vol: fake}
	d.metrics = d.newMetrics()
	d.keyState.Store(&apitype.KeyState{State: state, Since: time.Now()})
	return d
}

// auditCount is how many audit events of a type and outcome the daemon
// recorded (its metrics count every one).
func auditCount(t *testing.T, d *Daemon, typ, outcome string) float64 {
	t.Helper()
	mfs, err := d.metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "pgshield_audit_events_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			if labels["type"] == typ && labels["outcome"] == outcome {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

const gib = int64(1 << 30)

// growableFake is a 2 GiB image, half allocated, on a 100 GiB host
// filesystem with 50 GiB available, mounted and 95% full.
func growableFake() *fakeBackend {
	return &fakeBackend{unlocked: true, image: "/data/storage/volume.img", size: 2 * gib, alloc: gib,
		hostTotal: 100 * gib, hostAvail: 50 * gib, total: uint64(2 * gib), free: uint64(gib / 10)}
}

func TestStorageInfo(t *testing.T) {
	ctx := context.Background()
	t.Run("resizable", func(t *testing.T) {
		d := testDaemon(t, growableFake(), apitype.KeyAvailable)
		info := d.Storage(ctx)
		want := apitype.StorageInfo{Backend: "fake", Description: "fake volume", State: apitype.KeyAvailable, MountPoint: d.Layout.VolumeMount(),
			SizeBytes: uint64(2 * gib), UsedBytes: uint64(2*gib - gib/10), FreeBytes: uint64(gib / 10),
			ImagePath: "/data/storage/volume.img", ImageBytes: 2 * gib, ImageAllocatedBytes: gib, LoopDevice: "/dev/loop9",
			HostFreeBytes: uint64(50 * gib), Autogrow: true, Resizable: true}
		if info != want {
			t.Errorf("Storage() = %+v; want %+v", info, want)
		}
	})
	t.Run("fixed size", func(t *testing.T) {
		fake := &fakeBackend{unlocked: true, fixed: "the host owns it", total: 100, free: 40}
		d := testDaemon(t, fake, apitype.KeyAvailable)
		d.cfg.Parameters["pgshield.storage_autogrow"] = "off"
		info := d.Storage(ctx)
		if info.Resizable || info.ImageBytes != 0 || info.AutogrowNote != "not applicable: the host owns it" || info.Autogrow ||
			info.SizeBytes != 100 || info.UsedBytes != 60 {
			t.Errorf("Storage() = %+v; want not resizable, the note, autogrow off, 60 of 100 used", info)
		}
	})
	t.Run("locked", func(t *testing.T) {
		fake := growableFake()
		fake.usageErr = storage.ErrNotMounted
		d := testDaemon(t, fake, apitype.KeyLocked)
		info := d.Storage(ctx)
		if info.State != apitype.KeyLocked || info.SizeBytes != uint64(2*gib) || info.UsedBytes != 0 {
			t.Errorf("Storage() = %+v; want Locked with the image's size", info)
		}
	})
}

func TestGrowLockedRefuses(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name     string
		fake     func() *fakeBackend
		state    string
		size     int64
		code     string
		contains string
	}{
		{name: "not resizable", fake: func() *fakeBackend { f := growableFake(); f.fixed = "gocryptfs"; return f },
			state: apitype.KeyAvailable, size: 4 * gib, code: apitype.CodeInvalid, contains: "cannot resize: gocryptfs"},
		{name: "locked", fake: growableFake, state: apitype.KeyLocked, size: 4 * gib, code: apitype.CodeUnavailable, contains: "the server is Locked"},
		{name: "shrink", fake: growableFake, state: apitype.KeyAvailable, size: gib, code: apitype.CodeInvalid, contains: "refusing to shrink the volume from 2 GiB to 1 GiB"},
		{name: "same size", fake: growableFake, state: apitype.KeyAvailable, size: 2*gib - 100, code: apitype.CodeInvalid, contains: "the volume is 2 GiB already"},
		// 1 GiB allocated + 50 GiB available - 5 GiB margin = 46 GiB at most.
		{name: "beyond the host", fake: growableFake, state: apitype.KeyAvailable, size: 47 * gib, code: apitype.CodeInvalid,
			contains: "the filesystem holding /data/storage/volume.img has 50 GiB free: a volume of 47 GiB could outgrow it (at most 46 GiB keeps 5 GiB free there)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := tt.fake()
			d := testDaemon(t, fake, tt.state)
			_, err := d.growLocked(ctx, tt.size, false)
			var ae *apitype.Error
			if !errors.As(err, &ae) || ae.Code != tt.code || !strings.Contains(ae.Message, tt.contains) {
				t.Fatalf("growLocked(%d) error = %v; want %s containing %q", tt.size, err, tt.code, tt.contains)
			}
			if slices.Contains(fake.Calls(), "Resize") {
				t.Error("growLocked resized anyway")
			}
		})
	}
}

func TestGrowLockedOnline(t *testing.T) {
	fake := growableFake()
	d := testDaemon(t, fake, apitype.KeyAvailable)
	rec, err := d.growLocked(context.Background(), 3*gib+1, false)
	if err != nil {
		t.Fatalf("growLocked() error = %v", err)
	}
	want := 3*gib + storage.SizeAlign // rounded up to the block size
	if fake.resizedTo != want || rec.FromBytes != 2*gib || rec.ToBytes != want || rec.Method != apitype.GrowOnline || rec.Automatic {
		t.Errorf("growLocked() = %+v, resized to %d; want online from 2 GiB to %d", rec, fake.resizedTo, want)
	}
	saved, err := os.ReadFile(d.Layout.ConfigFile())
	if err != nil || !strings.Contains(string(saved), fmt.Sprintf(`"storage_size": %d`, want)) {
		t.Errorf("saved configuration = %s, %v; want storage_size %d", saved, err, want)
	}
	if d.config().StorageSize != want || d.atRest.Cfg.StorageSize != want {
		t.Errorf("configuration in memory has size %d, %d; want %d", d.config().StorageSize, d.atRest.Cfg.StorageSize, want)
	}
	if info := d.Storage(context.Background()); info.LastGrow == nil || *info.LastGrow != rec {
		t.Errorf("Storage().LastGrow = %+v; want %+v", info.LastGrow, rec)
	}
	if n := auditCount(t, d, "storage.resize", "success"); n != 1 {
		t.Errorf("storage.resize success events = %v; want 1", n)
	}

	fake.resizeErr = errors.New("resize2fs failed")
	if _, err := d.growLocked(context.Background(), 4*gib, true); !errors.Is(err, fake.resizeErr) {
		t.Errorf("growLocked() with a failing resize error = %v; want it", err)
	}
	if n := auditCount(t, d, "storage.autogrow", "failure"); n != 1 {
		t.Errorf("storage.autogrow failure events = %v; want 1", n)
	}
	if d.config().StorageSize != want {
		t.Errorf("configuration size after a failed growth = %d; want %d still", d.config().StorageSize, want)
	}
}

func TestAutogrow(t *testing.T) {
	ctx := context.Background()
	t.Run("grows a full volume by a step", func(t *testing.T) {
		fake := growableFake()
		d := testDaemon(t, fake, apitype.KeyAvailable)
		d.autogrow(ctx)
		if want := autogrowStep(2 * gib); fake.resizedTo != want {
			t.Errorf("autogrow resized to %d; want %d", fake.resizedTo, want)
		}
		if n := auditCount(t, d, "storage.autogrow", "success"); n != 1 {
			t.Errorf("storage.autogrow success events = %v; want 1", n)
		}
	})
	tests := []struct {
		name  string
		setup func(*fakeBackend, *Daemon)
		// untouched: the volume is not even asked for its usage.
		untouched bool
	}{
		{name: "room enough", setup: func(f *fakeBackend, _ *Daemon) { f.free = f.total / 5 }},
		{name: "not resizable", setup: func(f *fakeBackend, _ *Daemon) { f.fixed = "storage path" }, untouched: true},
		{name: "switched off", setup: func(_ *fakeBackend, d *Daemon) { d.cfg.Parameters["pgshield.storage_autogrow"] = "off" }, untouched: true},
		{name: "locked", setup: func(_ *fakeBackend, d *Daemon) { d.keyState.Store(&apitype.KeyState{State: apitype.KeyLocked}) }, untouched: true},
	}
	for _, tt := range tests {
		t.Run("leaves alone: "+tt.name, func(t *testing.T) {
			fake := growableFake()
			d := testDaemon(t, fake, apitype.KeyAvailable)
			tt.setup(fake, d)
			d.autogrow(ctx)
			calls := fake.Calls()
			if slices.Contains(calls, "Resize") || (tt.untouched && len(calls) > 0) {
				t.Errorf("autogrow called %v; want no resize (and no call at all: %v)", calls, tt.untouched)
			}
		})
	}
	t.Run("host full: warns once an hour", func(t *testing.T) {
		fake := growableFake()
		fake.hostAvail = 5 * gib // limit: 1 + 5 - 5 = 1 GiB, below the image
		d := testDaemon(t, fake, apitype.KeyAvailable)
		d.autogrow(ctx)
		d.autogrow(ctx)
		if slices.Contains(fake.Calls(), "Resize") {
			t.Errorf("autogrow resized to %d", fake.resizedTo)
		}
		if n := auditCount(t, d, "storage.autogrow", "failure"); n != 1 {
			t.Errorf("storage.autogrow failure events = %v; want 1 (rate-limited)", n)
		}
	})
}
