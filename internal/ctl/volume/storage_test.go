package volume

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/ctl/conf"
	"github.com/pgshield/pgshield/internal/keys"
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

// fakeKeys is a KeyGate: a state, and a lock that counts its holders.
type fakeKeys struct {
	mu     sync.Mutex
	state  string
	held   bool
	locked int // how many times Locked ran
	reason string
}

func (k *fakeKeys) State() string { return k.state }
func (k *fakeKeys) Locked(fn func() error) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.held = true
	defer func() { k.held = false }()
	k.locked++
	return fn()
}
func (k *fakeKeys) SetInaccessibleLocked(reason string) {
	if !k.held {
		panic("SetInaccessibleLocked outside Locked")
	}
	k.state, k.reason = apitype.KeyInaccessible, reason
}

// fakeServer records Quiesce and Resume.
type fakeServer struct {
	calls     []string
	resumeErr error
}

func (s *fakeServer) Quiesce(msg string, _ *audit.Event) { s.calls = append(s.calls, "Quiesce: "+msg) }
func (s *fakeServer) Resume(context.Context) error {
	s.calls = append(s.calls, "Resume")
	return s.resumeErr
}

// testCtl is a storage controller over a fake volume, a fake key gate and
// a fake server; events go to a list. It runs no PostgreSQL and no
// gateway: stopping and starting them is the fake server's.
type testCtl struct {
	*Controller
	keys   *fakeKeys
	server *fakeServer
	layout config.Layout
	store  *conf.Store
	mu     sync.Mutex
	events []audit.Event
}

func testController(t *testing.T, fake *fakeBackend, state string) *testCtl {
	t.Helper()
	l := config.Layout{Root: t.TempDir()}
	cfg := &config.Config{ServerID: "test", StorageSize: fake.size, Parameters: map[string]string{}}
	tc := &testCtl{keys: &fakeKeys{state: state}, server: &fakeServer{}, layout: l, store: conf.New(l, cfg)}
	tc.Controller = New(Config{Layout: l, Log: slog.New(slog.DiscardHandler), Conf: tc.store,
		Volume: &AtRest{Layout: l, Cfg: cfg, vol: fake},
		Audit:  func(e audit.Event) { tc.mu.Lock(); tc.events = append(tc.events, e); tc.mu.Unlock() }})
	tc.Bind(tc.keys, tc.server)
	return tc
}

// setParam changes a parameter in force, as `parameter set` would.
func (tc *testCtl) setParam(t *testing.T, name, value string) {
	t.Helper()
	if err := tc.store.Edit(func(cur *config.Config, commit func(*config.Config) error) error {
		next := *cur
		next.Parameters = map[string]string{name: value}
		return commit(&next)
	}); err != nil {
		t.Fatal(err)
	}
}

// auditCount is how many audit events of a type and outcome were recorded.
func auditCount(t *testing.T, tc *testCtl, typ, outcome string) float64 {
	t.Helper()
	tc.mu.Lock()
	defer tc.mu.Unlock()
	n := 0.0
	for _, e := range tc.events {
		if e.Type == typ && e.Outcome == outcome {
			n++
		}
	}
	return n
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
		d := testController(t, growableFake(), apitype.KeyAvailable)
		info := d.Info(ctx)
		want := apitype.StorageInfo{Backend: "fake", Description: "fake volume", State: apitype.KeyAvailable, MountPoint: d.layout.VolumeMount(),
			SizeBytes: uint64(2 * gib), UsedBytes: uint64(2*gib - gib/10), FreeBytes: uint64(gib / 10),
			ImagePath: "/data/storage/volume.img", ImageBytes: 2 * gib, ImageAllocatedBytes: gib, LoopDevice: "/dev/loop9",
			HostFreeBytes: uint64(50 * gib), Autogrow: true, Resizable: true}
		if info != want {
			t.Errorf("Info() = %+v; want %+v", info, want)
		}
	})
	t.Run("fixed size", func(t *testing.T) {
		fake := &fakeBackend{unlocked: true, fixed: "the host owns it", total: 100, free: 40}
		d := testController(t, fake, apitype.KeyAvailable)
		d.setParam(t, "pgshield.storage_autogrow", "off")
		info := d.Info(ctx)
		if info.Resizable || info.ImageBytes != 0 || info.AutogrowNote != "not applicable: the host owns it" || info.Autogrow ||
			info.SizeBytes != 100 || info.UsedBytes != 60 {
			t.Errorf("Info() = %+v; want not resizable, the note, autogrow off, 60 of 100 used", info)
		}
	})
	t.Run("locked", func(t *testing.T) {
		fake := growableFake()
		fake.usageErr = storage.ErrNotMounted
		d := testController(t, fake, apitype.KeyLocked)
		info := d.Info(ctx)
		if info.State != apitype.KeyLocked || info.SizeBytes != uint64(2*gib) || info.UsedBytes != 0 {
			t.Errorf("Info() = %+v; want Locked with the image's size", info)
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
			d := testController(t, fake, tt.state)
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
	d := testController(t, fake, apitype.KeyAvailable)
	rec, err := d.growLocked(context.Background(), 3*gib+1, false)
	if err != nil {
		t.Fatalf("growLocked() error = %v", err)
	}
	want := 3*gib + storage.SizeAlign // rounded up to the block size
	if fake.resizedTo != want || rec.FromBytes != 2*gib || rec.ToBytes != want || rec.Method != apitype.GrowOnline || rec.Automatic {
		t.Errorf("growLocked() = %+v, resized to %d; want online from 2 GiB to %d", rec, fake.resizedTo, want)
	}
	saved, err := os.ReadFile(d.layout.ConfigFile())
	if err != nil || !strings.Contains(string(saved), fmt.Sprintf(`"storage_size": %d`, want)) {
		t.Errorf("saved configuration = %s, %v; want storage_size %d", saved, err, want)
	}
	if d.store.Get().StorageSize != want || d.AtRest().Cfg.StorageSize != want {
		t.Errorf("configuration in memory has size %d, %d; want %d", d.store.Get().StorageSize, d.AtRest().Cfg.StorageSize, want)
	}
	if info := d.Info(context.Background()); info.LastGrow == nil || *info.LastGrow != rec {
		t.Errorf("Info().LastGrow = %+v; want %+v", info.LastGrow, rec)
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
	if d.store.Get().StorageSize != want {
		t.Errorf("configuration size after a failed growth = %d; want %d still", d.store.Get().StorageSize, want)
	}
}

func TestAutogrow(t *testing.T) {
	ctx := context.Background()
	t.Run("grows a full volume by a step", func(t *testing.T) {
		fake := growableFake()
		d := testController(t, fake, apitype.KeyAvailable)
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
		setup func(*fakeBackend, *testCtl)
		// untouched: the volume is not even asked for its usage.
		untouched bool
	}{
		{name: "room enough", setup: func(f *fakeBackend, _ *testCtl) { f.free = f.total / 5 }},
		{name: "not resizable", setup: func(f *fakeBackend, _ *testCtl) { f.fixed = "storage path" }, untouched: true},
		{name: "switched off", setup: func(_ *fakeBackend, d *testCtl) { d.setParam(t, "pgshield.storage_autogrow", "off") }, untouched: true},
		{name: "locked", setup: func(_ *fakeBackend, d *testCtl) { d.keys.state = apitype.KeyLocked }, untouched: true},
	}
	for _, tt := range tests {
		t.Run("leaves alone: "+tt.name, func(t *testing.T) {
			fake := growableFake()
			d := testController(t, fake, apitype.KeyAvailable)
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
		d := testController(t, fake, apitype.KeyAvailable)
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

// TestOfflineGrow: where online resize is not permitted, the server is
// quiesced, the volume closed, grown and reopened, and the server resumed.
func TestOfflineGrow(t *testing.T) {
	fake := growableFake()
	d := testController(t, fake, apitype.KeyAvailable)
	// A real wrapped data key, so that reopening unwraps it.
	a := testAtRest(t, fake)
	if err := a.Create(context.Background()); err != nil {
		t.Fatal(err)
	}
	d.atRest = a
	fake.resizeErr = storage.ErrOnlineResizeNotPermitted
	// The first Resize (online) is refused; the offline one, after Close,
	// succeeds.
	resized := false
	var rec apitype.GrowRecord
	err := d.keys.Locked(func() error {
		// Let the offline Resize through once Close has run.
		r, err := d.growWithHook(t, fake, 3*gib, func() { fake.resizeErr = nil; resized = true })
		rec = r
		return err
	})
	if err != nil || !resized || rec.Method != apitype.GrowOffline || fake.resizedTo != 3*gib {
		t.Fatalf("grow = %+v, %v (resized %v to %d); want offline to 3 GiB", rec, err, resized, fake.resizedTo)
	}
	want := []string{"Quiesce: terminating connection because the storage is being resized", "Resume"}
	if !slices.Equal(d.server.calls, want) {
		t.Errorf("server calls = %q; want %q", d.server.calls, want)
	}
	calls := fake.Calls()
	if i, j := slices.Index(calls, "Detach"), slices.Index(calls, "Unlock"); i < 0 || j < i {
		t.Errorf("volume calls = %v; want Detach, then Unlock with the unwrapped key", calls)
	}
}

// growWithHook runs growLocked with hook run when the volume is detached
// (between Close and the offline Resize).
func (tc *testCtl) growWithHook(t *testing.T, fake *fakeBackend, size int64, hook func()) (apitype.GrowRecord, error) {
	t.Helper()
	fake.onDetach = hook
	return tc.growLocked(context.Background(), size, false)
}

// TestRemount: the recovery from a dead gocryptfs as a state machine.
func TestRemount(t *testing.T) {
	ctx := context.Background()
	t.Run("locked on purpose: left alone", func(t *testing.T) {
		d := testController(t, growableFake(), apitype.KeyLocked)
		backoff := time.Second
		if retry := d.remountAfterFUSEExit(ctx, errors.New("exit 1"), &backoff); retry != nil || len(d.server.calls) > 0 {
			t.Errorf("remount while Locked: retry %v, server calls %q; want nothing", retry, d.server.calls)
		}
	})
	t.Run("alive and no cause: left alone", func(t *testing.T) {
		d := testController(t, growableFake(), apitype.KeyAvailable)
		backoff := time.Second
		if retry := d.remountAfterFUSEExit(ctx, nil, &backoff); retry != nil || len(d.server.calls) > 0 {
			t.Errorf("remount of a live volume: retry %v, server calls %q; want nothing", retry, d.server.calls)
		}
	})
	t.Run("dead: quiesced, remounted, resumed, counted", func(t *testing.T) {
		d := testController(t, growableFake(), apitype.KeyAvailable)
		backoff := 4 * time.Second
		if retry := d.remountAfterFUSEExit(ctx, errors.New("exit 1"), &backoff); retry != nil {
			t.Errorf("remount returned a retry")
		}
		if want := []string{"Quiesce: terminating connection because the encrypted storage is being remounted", "Resume"}; !slices.Equal(d.server.calls, want) {
			t.Errorf("server calls = %q; want %q", d.server.calls, want)
		}
		if info := d.Info(ctx); info.FUSERestarts != 1 || backoff != time.Second || auditCount(t, d, "storage.remount", "success") != 1 {
			t.Errorf("after remount: restarts %d, backoff %v, success events %v; want 1, 1s, 1", info.FUSERestarts, backoff, auditCount(t, d, "storage.remount", "success"))
		}
	})
	t.Run("resume fails: retried with backoff", func(t *testing.T) {
		d := testController(t, growableFake(), apitype.KeyAvailable)
		d.server.resumeErr = errors.New("postgres did not start")
		backoff := time.Second
		if retry := d.remountAfterFUSEExit(ctx, errors.New("exit 1"), &backoff); retry == nil || backoff != 2*time.Second {
			t.Errorf("remount with a failing resume: retry %v, backoff %v; want a retry and 2s", retry, backoff)
		}
		if auditCount(t, d, "storage.remount", "failure") != 1 {
			t.Errorf("storage.remount failure not recorded")
		}
	})
	t.Run("key gone: Inaccessible, no retry", func(t *testing.T) {
		fake := &fakeBackend{}
		tc := testController(t, fake, apitype.KeyAvailable)
		a := testAtRest(t, fake)
		if err := a.Create(ctx); err != nil {
			t.Fatal(err)
		}
		fake.unlocked = false
		a.Cfg.KeyURI = keys.SystemKeyURI(filepath.Join(t.TempDir(), "gone.key"))
		tc.atRest = a
		backoff := time.Second
		if retry := tc.remountAfterFUSEExit(ctx, errors.New("exit 1"), &backoff); retry != nil {
			t.Errorf("remount with the key gone returned a retry; revalidation brings it back")
		}
		if tc.keys.state != apitype.KeyInaccessible || !strings.Contains(tc.keys.reason, "unwrapping the data key") {
			t.Errorf("key state %q (%q); want Inaccessible with the unwrap error", tc.keys.state, tc.keys.reason)
		}
		if slices.Contains(tc.server.calls, "Resume") {
			t.Errorf("server resumed without a volume")
		}
	})
}
