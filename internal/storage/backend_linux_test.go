package storage

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The conformance suite drives each real backend through the Backend
// lifecycle the daemon relies on (create, lock, detach, attach, unlock,
// busy files, status), as root with loop devices, ext4 and gocryptfs.

// conformanceCase makes one backend in a temporary directory, with a
// cleanup that leaves nothing mounted or attached.
type conformanceCase struct {
	name string
	make func(t *testing.T) (b Backend, mount string)
	// resizable: an image, which can grow offline.
	resizable bool
	// hasHost: HostSpace describes a filesystem outside the volume.
	hasHost bool
}

func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func conformanceCases() []conformanceCase {
	return []conformanceCase{
		{name: "image", resizable: true, hasHost: true, make: func(t *testing.T) (Backend, string) {
			requireVolumeSupport(t)
			dir := t.TempDir()
			mnt := filepath.Join(dir, "mnt")
			b, err := New(Options{Mount: mnt, Image: filepath.Join(dir, "volume.img"), Size: testSize, Log: testLog(t)})
			if err != nil {
				t.Fatalf("New() error = %v", err)
			}
			t.Cleanup(func() { cleanupVolume(t, b.(*imageBackend).v) })
			return b, mnt
		}},
		{name: "path", make: func(t *testing.T) (Backend, string) {
			requireVolumeSupport(t)
			fsRoot := extFS(t, true)
			mnt := filepath.Join(t.TempDir(), "mnt")
			b, err := New(Options{Kind: BackendFscrypt, Mount: mnt, Path: fsRoot, Log: testLog(t)})
			if err != nil {
				t.Fatalf("New() error = %v", err)
			}
			// Registered after extFS's, so it runs first.
			t.Cleanup(func() {
				v := b.(*pathBackend).v
				_ = v.Lock()
				if err := v.Detach(context.Background()); err != nil {
					t.Errorf("cleanup: Detach() error = %v", err)
				}
			})
			return b, mnt
		}},
		{name: "gocryptfs", hasHost: true, make: func(t *testing.T) (Backend, string) {
			requireGocryptfs(t)
			dir := t.TempDir()
			if err := os.Chmod(dir, 0o711); err != nil {
				t.Fatal(err)
			}
			mnt := filepath.Join(dir, "mnt")
			b, err := New(Options{Kind: BackendGocryptfs, Mount: mnt, CipherDir: filepath.Join(dir, "cipher"), Log: testLog(t)})
			if err != nil {
				t.Fatalf("New() error = %v", err)
			}
			t.Cleanup(func() { cleanupGocryptfs(t, b.(*gocryptfsBackend).g) })
			return b, mnt
		}},
	}
}

func wantUnlocked(t *testing.T, b Backend, want bool) {
	t.Helper()
	got, err := b.Unlocked()
	if err != nil || got != want {
		t.Fatalf("Unlocked() = %v, %v; want %v, nil", got, err, want)
	}
	if err := b.Ready(); (err == nil) != want {
		t.Fatalf("Ready() = %v; want ready %v", err, want)
	}
}

func TestBackendConformance(t *testing.T) {
	for _, c := range conformanceCases() {
		t.Run(c.name, func(t *testing.T) {
			b, mnt := c.make(t)
			ctx := testContext(t)
			key := randomKey(t)
			if err := b.Ready(); err == nil {
				t.Fatal("Ready() before Create = nil; want an error")
			}
			if err := b.Create(ctx, key); err != nil {
				t.Fatalf("Create() error = %v", err)
			}
			wantUnlocked(t, b, true)
			data := filepath.Join(mnt, DataDirName)
			content := []byte(uniqueMarker(t, "backend-"))
			writeFileSync(t, filepath.Join(data, "keep"), content)

			if total, free, err := b.Usage(); err != nil || total == 0 || free > total {
				t.Errorf("Usage() = %d, %d, %v; want a size and free space within it", total, free, err)
			}
			total, avail, err := b.HostSpace()
			if err != nil || (total > 0) != c.hasHost || avail > total {
				t.Errorf("HostSpace() = %d, %d, %v; want a host filesystem: %v", total, avail, err, c.hasHost)
			}
			st := b.Status(ctx)
			switch c.name {
			case "image":
				if !strings.HasPrefix(st.LoopDevice, "/dev/loop") || st.Image == "" {
					t.Errorf("Status() = %+v; want the image and its loop device", st)
				}
			case "path":
				if st.Path == "" || st.FixedSize == "" {
					t.Errorf("Status() = %+v; want the path and why it has no size", st)
				}
			case "gocryptfs":
				if st.PID == 0 || st.CipherDir == "" {
					t.Errorf("Status() = %+v; want the cipher directory and the process", st)
				}
			}

			// An open file keeps Lock from finishing; closing it lets a
			// second Lock through, as AtRest.Lock retries.
			f, err := os.Open(filepath.Join(data, "keep"))
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Lock(ctx); !errors.Is(err, ErrFilesBusy) {
				t.Errorf("Lock() with a file open error = %v; want ErrFilesBusy", err)
			}
			f.Close()
			if err := b.Lock(ctx); err != nil {
				t.Fatalf("Lock() error = %v", err)
			}
			wantUnlocked(t, b, false)
			if err := b.Detach(ctx); err != nil {
				t.Fatalf("Detach() error = %v", err)
			}
			// Closing a closed volume is harmless (AtRest.Close ignores
			// ErrNotMounted).
			if err := b.Lock(ctx); err != nil && !errors.Is(err, ErrNotMounted) {
				t.Errorf("Lock() after Detach error = %v; want nil or ErrNotMounted", err)
			}

			if c.resizable {
				size, _, err := b.Size()
				if err != nil || size != testSize {
					t.Fatalf("Size() = %d, %v; want %d", size, err, testSize)
				}
				if err := b.Resize(ctx, 2*testSize); err != nil {
					t.Fatalf("Resize() detached error = %v", err)
				}
				if size, allocated, err := b.Size(); err != nil || size != 2*testSize || allocated <= 0 || allocated > size {
					t.Errorf("Size() after Resize = %d, %d, %v; want %d and some allocated", size, allocated, err, 2*testSize)
				}
			}

			if err := b.Attach(ctx); err != nil {
				t.Fatalf("Attach() error = %v", err)
			}
			wantUnlocked(t, b, false)
			if err := b.Unlock(ctx, randomKey(t)); !errors.Is(err, ErrWrongKey) {
				t.Errorf("Unlock(wrong key) error = %v; want ErrWrongKey", err)
			}
			wantUnlocked(t, b, false)
			if err := b.Unlock(ctx, key); err != nil {
				t.Fatalf("Unlock() error = %v", err)
			}
			wantUnlocked(t, b, true)
			wantContent(t, filepath.Join(data, "keep"), content)
			if c.resizable {
				if total, _, err := b.Usage(); err != nil || total <= testSize {
					t.Errorf("Usage() after Resize = %d, %v; want more than %d", total, err, testSize)
				}
			}
		})
	}
}

// TestBackendExited: a gocryptfs process that dies is reported once on
// Exited, Ready says why, Lock clears the dead mount and Unlock mounts
// again. Kernel-backed volumes have no process to lose.
func TestBackendExited(t *testing.T) {
	c := conformanceCases()[2]
	b, mnt := c.make(t)
	ctx := testContext(t)
	key := randomKey(t)
	if err := b.Create(ctx, key); err != nil {
		t.Fatalf("Create() error = %v", err)
	}
	content := []byte(uniqueMarker(t, "exited-"))
	writeFileSync(t, filepath.Join(mnt, DataDirName, "keep"), content)
	pid := b.Status(ctx).PID
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-b.Exited():
		if !errors.Is(err, ErrGocryptfsExited) {
			t.Errorf("Exited() delivered %v; want ErrGocryptfsExited", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Exited() delivered nothing after the process was killed")
	}
	if err := b.Ready(); err == nil || !strings.Contains(err.Error(), "gocryptfs is not running") {
		t.Errorf("Ready() after the kill = %v; want it to say gocryptfs is not running", err)
	}
	if st := b.Status(ctx); st.PID != 0 {
		t.Errorf("Status().PID after the kill = %d; want 0", st.PID)
	}
	if err := b.Lock(ctx); err != nil {
		t.Fatalf("Lock() of a dead mount error = %v", err)
	}
	if err := b.Unlock(ctx, key); err != nil {
		t.Fatalf("Unlock() after the kill error = %v", err)
	}
	wantUnlocked(t, b, true)
	wantContent(t, filepath.Join(mnt, DataDirName, "keep"), content)
	select {
	case err := <-b.Exited():
		t.Errorf("Exited() delivered %v after an orderly remount; want nothing", err)
	default:
	}
}
