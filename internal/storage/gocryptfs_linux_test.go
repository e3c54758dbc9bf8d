package storage

import (
	"bytes"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The tests in this file run the real gocryptfs (Debian package) as root.

func requireGocryptfs(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: gocryptfs tests need root (FUSE mounts with allow_other)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("skipping: no FUSE: %v", err)
	}
	if _, err := (&Gocryptfs{}).program(); err != nil {
		t.Skipf("skipping: %v", err)
	}
}

// newGocryptfs creates a gocryptfs volume in a temporary directory; cleanup
// unmounts it (lazily if need be) and kills a process left behind.
func newGocryptfs(t *testing.T, key []byte) *Gocryptfs {
	t.Helper()
	requireGocryptfs(t)
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	g := &Gocryptfs{
		CipherDir: filepath.Join(dir, "cipher"),
		Mount:     filepath.Join(dir, "mnt"),
		Log:       slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	t.Cleanup(func() { cleanupGocryptfs(t, g) })
	if err := g.Create(testContext(t), key); err != nil {
		t.Fatalf("Create() error = %v", err)
	}
	return g
}

func cleanupGocryptfs(t *testing.T, g *Gocryptfs) {
	ctx := testContext(t)
	if err := g.ForceUnmount(ctx); err != nil {
		t.Errorf("cleanup: ForceUnmount() error = %v", err)
		_ = unix.Unmount(g.Mount, unix.MNT_DETACH)
	}
	if pid := g.PID(); pid > 0 && syscall.Kill(pid, 0) == nil {
		if comm, _ := os.ReadFile(filepathProc(pid)); strings.HasPrefix(string(comm), "gocryptfs") {
			t.Errorf("cleanup: gocryptfs (pid %d) still running", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if _, ok := mountAt(g.Mount); ok {
		t.Errorf("cleanup: %s still mounted", g.Mount)
	}
}

func filepathProc(pid int) string { return filepath.Join("/proc", strconv.Itoa(pid), "comm") }

// cipherContains reports whether any file under dir holds needle.
func cipherContains(t *testing.T, dir string, needle []byte) bool {
	t.Helper()
	found := false
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.Contains(d.Name(), string(needle)) {
			found = true
		}
		if d.Type().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			found = found || bytes.Contains(b, needle)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("scanning %s: %v", dir, err)
	}
	return found
}

func TestGocryptfsPassword(t *testing.T) {
	k1, k2 := randomKey(t), randomKey(t)
	p1, err := gocryptfsPassword(k1)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := gocryptfsPassword(k1)
	p2, _ := gocryptfsPassword(k2)
	if len(p1) != 65 || p1[64] != '\n' || strings.Trim(string(p1[:64]), "0123456789abcdef") != "" {
		t.Errorf("gocryptfsPassword() = %d bytes; want 64 hex digits and a newline", len(p1))
	}
	if !bytes.Equal(p1, again) {
		t.Error("gocryptfsPassword() differs for the same key")
	}
	if bytes.Equal(p1, p2) {
		t.Error("gocryptfsPassword() is the same for two keys")
	}
	if bytes.Contains(p1, []byte(string(k1[:8]))) {
		t.Error("password holds key bytes")
	}
	if _, err := gocryptfsPassword(k1[:32]); !errors.Is(err, ErrKeySize) {
		t.Errorf("gocryptfsPassword(32 bytes) error = %v; want ErrKeySize", err)
	}
}

func TestGocryptfsRoundTrip(t *testing.T) {
	key := randomKey(t)
	g := newGocryptfs(t, key)
	ctx := testContext(t)
	if alive, err := g.Alive(); err != nil || !alive {
		t.Fatalf("Alive() after Create = %v, %v; want true", alive, err)
	}
	// The mount root shows the cipher directory's 0711; DataDir is 0700.
	if fi, err := os.Stat(g.Mount); err != nil || fi.Mode().Perm() != 0o711 {
		t.Errorf("mount root mode = %v, %v; want 0711", fi.Mode(), err)
	}
	if fi, err := os.Stat(g.DataDir()); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Errorf("DataDir = %v, %v; want a 0700 directory", fi, err)
	}
	e, _ := mountAt(g.Mount)
	if e.fstype != fuseType {
		t.Errorf("mount type = %q; want %q", e.fstype, fuseType)
	}
	marker := []byte(uniqueMarker(t, "gocryptfs-marker-"))
	name := "plainname-" + string(marker[len(marker)-8:])
	writeFileSync(t, filepath.Join(g.DataDir(), name), bytes.Repeat(marker, 1000))
	if total, free, err := g.Usage(); err != nil || total == 0 || free > total {
		t.Errorf("Usage() = %d, %d, %v", total, free, err)
	}

	// The ciphertext holds neither the contents nor the name; the control
	// file planted next to it proves the scan finds what is there.
	if cipherContains(t, g.CipherDir, marker) || cipherContains(t, g.CipherDir, []byte(name)) {
		t.Fatal("the cipher directory holds the marker or the file name in plaintext")
	}
	control := filepath.Join(g.CipherDir, "control-plain")
	if err := os.WriteFile(control, marker, 0o600); err != nil {
		t.Fatal(err)
	}
	if !cipherContains(t, g.CipherDir, marker) {
		t.Fatal("control marker not found: the scan is broken")
	}
	os.Remove(control)

	// Unmounted, nothing decrypts and no process holds the key.
	pid := g.PID()
	if err := g.Unmount(ctx); err != nil {
		t.Fatalf("Unmount() error = %v", err)
	}
	if _, ok := mountAt(g.Mount); ok {
		t.Fatal("still mounted after Unmount")
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("gocryptfs (pid %d) still running after Unmount", pid)
	}
	if entries, _ := os.ReadDir(g.Mount); len(entries) != 0 {
		t.Errorf("mount point lists %d entries after Unmount", len(entries))
	}
	if err := g.Unmount(ctx); err != nil {
		t.Errorf("second Unmount() error = %v; want nil", err)
	}
	select {
	case err := <-g.Exited():
		t.Errorf("Exited() reported an asked-for exit: %v", err)
	default:
	}

	// A wrong key is refused, and leaves nothing mounted.
	if err := g.Open(ctx, randomKey(t)); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("Open(wrong key) error = %v; want ErrWrongKey", err)
	}
	if _, ok := mountAt(g.Mount); ok {
		t.Fatal("mounted after a wrong key")
	}
	if err := g.Open(ctx, key); err != nil {
		t.Fatalf("Open() error = %v", err)
	}
	if err := g.Open(ctx, key); err != nil {
		t.Fatalf("Open() when open error = %v; want a no-op", err)
	}
	wantContent(t, filepath.Join(g.DataDir(), name), bytes.Repeat(marker, 1000))

	// Busy: an orderly unmount refuses and leaves the volume working.
	f, err := os.Open(filepath.Join(g.DataDir(), name))
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Unmount(ctx); !errors.Is(err, ErrFilesBusy) {
		t.Errorf("Unmount() with an open file error = %v; want ErrFilesBusy", err)
	}
	if alive, _ := g.Alive(); !alive {
		t.Error("not alive after a refused Unmount")
	}
	f.Close()
}

func TestGocryptfsCreateRefusesNonEmpty(t *testing.T) {
	requireGocryptfs(t)
	dir := t.TempDir()
	g := &Gocryptfs{CipherDir: filepath.Join(dir, "cipher"), Mount: filepath.Join(dir, "mnt")}
	if err := os.MkdirAll(g.CipherDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(g.CipherDir, "x"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := g.Create(testContext(t), randomKey(t)); !errors.Is(err, ErrCipherDirExists) {
		t.Fatalf("Create() in a non-empty directory error = %v; want ErrCipherDirExists", err)
	}
	if _, err := os.Stat(filepath.Join(g.CipherDir, "x")); err != nil {
		t.Errorf("Create() touched the existing file: %v", err)
	}
	// Open without gocryptfs.conf is ErrNotProvisioned.
	if err := g.Open(testContext(t), randomKey(t)); !errors.Is(err, ErrNotProvisioned) {
		t.Errorf("Open() of an uninitialized directory error = %v; want ErrNotProvisioned", err)
	}
}

// TestGocryptfsKilled: a gocryptfs killed with SIGKILL is reported on
// Exited, the dead mount fails with ENOTCONN, and Open clears it and
// mounts again with everything that was synced before the kill.
func TestGocryptfsKilled(t *testing.T) {
	key := randomKey(t)
	g := newGocryptfs(t, key)
	ctx := testContext(t)
	synced := []byte(uniqueMarker(t, "synced-"))
	path := filepath.Join(g.DataDir(), "synced")
	writeFileSync(t, path, synced)
	// A file held open across the kill, as PostgreSQL's are.
	held, err := os.OpenFile(filepath.Join(g.DataDir(), "held"), os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()

	pid := g.PID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-g.Exited():
		if !errors.Is(err, ErrGocryptfsExited) {
			t.Errorf("Exited() = %v; want ErrGocryptfsExited", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Exited() reported nothing within 10 s of SIGKILL")
	}
	if _, err := os.ReadFile(path); !errors.Is(err, unix.ENOTCONN) {
		t.Errorf("ReadFile on the dead mount error = %v; want ENOTCONN", err)
	}
	if alive, _ := g.Alive(); alive {
		t.Error("Alive() = true with gocryptfs dead")
	}
	if g.UnexpectedExits() != 1 {
		t.Errorf("UnexpectedExits() = %d; want 1", g.UnexpectedExits())
	}
	// The open file makes the plain unmount busy: Open detaches lazily.
	if err := g.Open(ctx, key); err != nil {
		t.Fatalf("Open() after the kill error = %v", err)
	}
	held.Close()
	if g.PID() == pid {
		t.Error("PID() unchanged after the remount")
	}
	wantContent(t, path, synced)
}

func TestGocryptfsTakesOverStaleMount(t *testing.T) {
	key := randomKey(t)
	g := newGocryptfs(t, key)
	// A second Gocryptfs for the same directories, as a restarted pgshield
	// sees the mount of the one before.
	h := &Gocryptfs{CipherDir: g.CipherDir, Mount: g.Mount}
	oldPID := g.PID()
	if alive, _ := h.Alive(); alive {
		t.Error("Alive() = true for a mount that is not this process's")
	}
	if err := h.Open(testContext(t), key); err != nil {
		t.Fatalf("Open() over a stale mount error = %v", err)
	}
	t.Cleanup(func() { cleanupGocryptfs(t, h) })
	for i := 0; i < 100 && syscall.Kill(oldPID, 0) == nil; i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if out, _ := exec.Command("ps", "-o", "stat=", "-p", strconv.Itoa(oldPID)).Output(); len(out) > 0 && !strings.HasPrefix(string(out), "Z") {
		t.Errorf("the old gocryptfs (pid %d) still runs: %s", oldPID, out)
	}
	if alive, err := h.Alive(); err != nil || !alive {
		t.Fatalf("Alive() after takeover = %v, %v", alive, err)
	}
}
