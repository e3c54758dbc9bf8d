package storage

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The tests in this file provision real volumes: they need root, loop
// devices, mkfs.ext4, losetup and resize2fs, and a kernel with fscrypt.

const testSize = 64 << 20

// requireVolumeSupport skips the test when it cannot create volumes here.
func requireVolumeSupport(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: fscrypt volume tests need root (loop devices, mount, fscrypt ioctls); run `go test` as root")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("skipping: no loop device support: %v", err)
	}
	for _, tool := range []string{"mkfs.ext4", "losetup", "resize2fs"} {
		if _, err := lookTool(tool); err != nil {
			t.Skipf("skipping: %v", err)
		}
	}
}

// newVolume provisions a 64 MiB volume in a temporary directory. Cleanup
// locks and detaches it, forcing a lazy unmount and loop detach when that
// fails, and reports leftover loop devices.
func newVolume(t *testing.T) *Volume {
	t.Helper()
	requireVolumeSupport(t)
	dir := t.TempDir()
	v := &Volume{
		Image: filepath.Join(dir, "volume.img"),
		Mount: filepath.Join(dir, "mnt"),
		Size:  testSize,
		Log:   slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	// Registered after t.TempDir, so it runs before the directory removal.
	t.Cleanup(func() { cleanupVolume(t, v) })
	if err := v.Provision(testContext(t)); err != nil {
		t.Fatalf("Provision() error = %v", err)
	}
	return v
}

func cleanupVolume(t *testing.T, v *Volume) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := v.Lock(); err != nil && !errors.Is(err, ErrNotMounted) {
		t.Logf("cleanup: Lock() error = %v", err)
	}
	if err := v.Detach(ctx); err != nil {
		t.Errorf("cleanup: Detach() error = %v; forcing", err)
		if err := unix.Unmount(v.Mount, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil {
			t.Logf("cleanup: lazy unmount: %v", err)
		}
		loops, _ := v.findLoops(ctx)
		for _, l := range loops {
			if _, err := v.run(ctx, "losetup", "--detach", l); err != nil {
				t.Logf("cleanup: %v", err)
			}
		}
	}
	if loops, err := v.findLoops(ctx); err != nil || len(loops) > 0 {
		t.Errorf("cleanup: loop devices left for %s: %v (%v)", v.Image, loops, err)
	}
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func randomKey(t *testing.T) []byte {
	t.Helper()
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { clear(key) })
	return key
}

func uniqueMarker(t *testing.T, prefix string) string {
	t.Helper()
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return prefix + hex.EncodeToString(b)
}

// writeFileSync writes data and fsyncs the file and its directory.
func writeFileSync(t *testing.T, path string, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
}

func readDirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("ReadDir(%s) error = %v", dir, err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func mustUnlock(t *testing.T, v *Volume, key []byte) {
	t.Helper()
	if err := v.Unlock(key); err != nil {
		t.Fatalf("Unlock() error = %v", err)
	}
}

func wantKeyStatus(t *testing.T, v *Volume, want bool) {
	t.Helper()
	got, err := v.KeyStatus()
	if err != nil || got != want {
		t.Fatalf("KeyStatus() = %v, %v; want %v, nil", got, err, want)
	}
}

func wantContent(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("ReadFile(%s) error = %v", path, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("ReadFile(%s) = %d bytes; want the %d bytes written", path, len(got), len(want))
	}
}

// wantLocked checks a locked directory as root sees it: plaintext names do
// not resolve, listed names are not plaintext, and regular files cannot be
// opened (ENOKEY).
func wantLocked(t *testing.T, dir string, plainNames ...string) {
	t.Helper()
	for _, n := range plainNames {
		if _, err := os.Lstat(filepath.Join(dir, n)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Lstat(%s) in the locked directory error = %v; want ENOENT (names are encrypted)", n, err)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("ReadDir(%s) error = %v", dir, err)
	}
	files := 0
	for _, e := range entries {
		if slices.Contains(plainNames, e.Name()) {
			t.Errorf("locked directory lists plaintext name %q", e.Name())
		}
		if !e.Type().IsRegular() {
			continue
		}
		files++
		if _, err := os.ReadFile(filepath.Join(dir, e.Name())); !errors.Is(err, unix.ENOKEY) {
			t.Errorf("ReadFile(%s) in the locked directory error = %v; want ENOKEY", e.Name(), err)
		}
	}
	if files == 0 {
		t.Fatalf("locked directory %s lists no regular files: %v", dir, entries)
	}
}

func TestProvisionLayout(t *testing.T) {
	v := newVolume(t)
	fi, err := os.Stat(v.Image)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != testSize || fi.Mode().Perm() != 0o600 {
		t.Errorf("image size %d mode %v; want %d, 0600", fi.Size(), fi.Mode().Perm(), testSize)
	}
	var st unix.Stat_t
	if err := unix.Stat(v.Image, &st); err == nil && st.Blocks*512 >= testSize/2 {
		t.Errorf("image allocates %d bytes of %d; want it sparse", st.Blocks*512, testSize)
	}
	fi, err = os.Stat(v.DataDir())
	if err != nil {
		t.Fatal(err)
	}
	if !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Errorf("DataDir mode %v; want a 0700 directory", fi.Mode())
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(v.Mount, &sfs); err != nil {
		t.Fatal(err)
	}
	if sfs.Type != unix.EXT4_SUPER_MAGIC || sfs.Bsize != 4096 {
		t.Errorf("statfs type %#x block size %d; want ext4, 4096", sfs.Type, sfs.Bsize)
	}
	for _, f := range []int64{unix.MS_NOSUID, unix.MS_NODEV, unix.MS_NOEXEC, unix.MS_NOATIME} {
		if int64(sfs.Flags)&f == 0 {
			t.Errorf("mount flags %#x lack %#x", sfs.Flags, f)
		}
	}
	wantKeyStatus(t, v, false)
	if err := v.Lock(); err != nil {
		t.Errorf("Lock() of a never unlocked volume error = %v; want nil", err)
	}
	if total, free, err := v.Usage(); err != nil || total == 0 || free == 0 || free > total {
		t.Errorf("Usage() = %d, %d, %v; want 0 < free <= total", total, free, err)
	}
	if v.NeedsGrow(0.10) {
		t.Error("NeedsGrow(0.10) on an empty volume = true; want false")
	}
	// A second Provision must not touch the existing volume.
	if err := v.Provision(testContext(t)); !errors.Is(err, ErrImageExists) {
		t.Errorf("second Provision() error = %v; want ErrImageExists", err)
	}
	if _, err := os.Stat(v.DataDir()); err != nil {
		t.Errorf("DataDir after refused Provision: %v", err)
	}
}

// TestProvisionCleansUpOnFailure: a Provision that fails after mkfs and
// losetup leaves neither a loop device nor the image behind.
func TestProvisionCleansUpOnFailure(t *testing.T) {
	requireVolumeSupport(t)
	dir := t.TempDir()
	v := &Volume{Image: filepath.Join(dir, "volume.img"), Mount: filepath.Join(dir, "notadir"), Size: testSize}
	t.Cleanup(func() { cleanupVolume(t, v) })
	if err := os.WriteFile(v.Mount, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := v.Provision(testContext(t)); err == nil {
		t.Fatal("Provision() with a file as mount point error = nil; want an error")
	}
	if _, err := os.Stat(v.Image); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("image after failed Provision: stat error = %v; want it removed", err)
	}
	out, err := v.run(testContext(t), "losetup", "--list", "--noheadings", "--output", "BACK-FILE")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, v.Image) {
		t.Errorf("loop device left for %s after failed Provision:\n%s", v.Image, out)
	}
}

// TestEncryptedAtRest scans the raw image: a marker written under DataDir
// must not appear in it, while a marker in an unencrypted directory of the
// same filesystem must (the control that proves the scan can fail).
func TestEncryptedAtRest(t *testing.T) {
	v := newVolume(t)
	if err := v.Unlock(make([]byte, 32)); !errors.Is(err, ErrKeySize) {
		t.Fatalf("Unlock(32-byte key) error = %v; want ErrKeySize", err)
	}
	wantKeyStatus(t, v, false)

	key := randomKey(t)
	mustUnlock(t, v, key)
	wantKeyStatus(t, v, true)
	mustUnlock(t, v, key) // unlocking again is a no-op

	secret := uniqueMarker(t, "pgshield-secret-")
	secretName := uniqueMarker(t, "pgshield-name-")
	writeFileSync(t, filepath.Join(v.DataDir(), secretName), bytes.Repeat([]byte(secret+"\n"), 256))

	control := uniqueMarker(t, "pgshield-plain-")
	controlName := uniqueMarker(t, "pgshield-plainname-")
	plain := filepath.Join(v.Mount, "plain")
	if err := os.Mkdir(plain, 0o700); err != nil {
		t.Fatal(err)
	}
	writeFileSync(t, filepath.Join(plain, controlName), bytes.Repeat([]byte(control+"\n"), 256))
	if err := syncPath(v.Mount); err != nil {
		t.Fatal(err)
	}

	img, err := os.ReadFile(v.Image)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(img, []byte(control)) {
		t.Fatal("control marker from the unencrypted directory not found in the image; the scan proves nothing")
	}
	if !bytes.Contains(img, []byte(controlName)) {
		t.Error("control file name not found in the image")
	}
	if bytes.Contains(img, []byte(secret)) {
		t.Error("plaintext contents of an encrypted file found in the image")
	}
	if bytes.Contains(img, []byte(secretName)) {
		t.Error("plaintext name of an encrypted file found in the image")
	}
}

func TestLockHidesDataFromRoot(t *testing.T) {
	v := newVolume(t)
	key := randomKey(t)
	mustUnlock(t, v, key)

	name := uniqueMarker(t, "table-")
	content := []byte(uniqueMarker(t, "row-"))
	path := filepath.Join(v.DataDir(), name)
	writeFileSync(t, path, content)
	sub := filepath.Join(v.DataDir(), "pg_wal")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	writeFileSync(t, filepath.Join(sub, "000000010000000000000001"), content)

	if err := v.Lock(); err != nil {
		t.Fatalf("Lock() error = %v", err)
	}
	wantKeyStatus(t, v, false)
	if err := v.Lock(); err != nil {
		t.Errorf("second Lock() error = %v; want nil", err)
	}
	wantLocked(t, v.DataDir(), name, "pg_wal")
	if names := readDirNames(t, v.DataDir()); len(names) != 2 {
		t.Errorf("locked DataDir lists %q; want 2 entries", names)
	}
	if err := os.WriteFile(filepath.Join(v.DataDir(), "new"), content, 0o600); !errors.Is(err, unix.ENOKEY) {
		t.Errorf("creating a file in the locked DataDir error = %v; want ENOKEY", err)
	}

	mustUnlock(t, v, key)
	wantKeyStatus(t, v, true)
	wantContent(t, path, content)
	wantContent(t, filepath.Join(sub, "000000010000000000000001"), content)
	if names := readDirNames(t, v.DataDir()); !slices.Contains(names, name) || !slices.Contains(names, "pg_wal") {
		t.Errorf("unlocked DataDir lists %q; want %q and pg_wal", names, name)
	}
}

// TestUnlockWrongKey: a key whose identifier differs from the policy's is
// rejected with ErrWrongKey and removed again, so the volume stays locked.
func TestUnlockWrongKey(t *testing.T) {
	v := newVolume(t)
	key, wrong := randomKey(t), randomKey(t)
	mustUnlock(t, v, key)
	path := filepath.Join(v.DataDir(), "f")
	content := []byte("contents")
	writeFileSync(t, path, content)

	// While unlocked: the wrong key is refused, the right one stays.
	if err := v.Unlock(wrong); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("Unlock(wrong key) error = %v; want ErrWrongKey", err)
	}
	wantKeyStatus(t, v, true)
	wantContent(t, path, content)

	if err := v.Lock(); err != nil {
		t.Fatalf("Lock() error = %v", err)
	}
	if err := v.Unlock(wrong); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("Unlock(wrong key) error = %v; want ErrWrongKey", err)
	}
	wantKeyStatus(t, v, false)
	wantLocked(t, v.DataDir(), "f")

	// The rejected key is not left in the keyring: adding it again shows
	// that the kernel had no claim on it.
	root, err := v.openMountRoot()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(root)
	id, err := addKey(root, wrong)
	if err != nil {
		t.Fatal(err)
	}
	if flags, err := removeKey(root, id); err != nil || flags != 0 {
		t.Errorf("removeKey(wrong key) = %#x, %v; want 0, nil", flags, err)
	}

	mustUnlock(t, v, key)
	wantContent(t, path, content)
}

// TestUnlockPolicyMismatch: a DataDir encrypted with other settings is
// refused before the key goes into the kernel.
func TestUnlockPolicyMismatch(t *testing.T) {
	v := newVolume(t)
	key := randomKey(t)
	root, err := v.openMountRoot()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(root)
	id, err := addKey(root, key)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := v.openDataDir(root)
	if err != nil {
		t.Fatal(err)
	}
	p := newPolicy(id)
	p.Flags = unix.FSCRYPT_POLICY_FLAGS_PAD_16
	err = setPolicy(dir, &p)
	unix.Close(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := removeKey(root, id); err != nil {
		t.Fatal(err)
	}
	if err := v.Unlock(key); !errors.Is(err, ErrPolicyMismatch) {
		t.Fatalf("Unlock() with a PAD_16 policy error = %v; want ErrPolicyMismatch", err)
	}
	if st, err := keyStatus(root, id); err != nil || st != unix.FSCRYPT_KEY_STATUS_ABSENT {
		t.Errorf("key status after refused Unlock = %d, %v; want ABSENT", st, err)
	}
}

func TestUnlockRefusesNonEmptyPlainDataDir(t *testing.T) {
	v := newVolume(t)
	writeFileSync(t, filepath.Join(v.DataDir(), "stray"), []byte("plaintext"))
	if err := v.Unlock(randomKey(t)); !errors.Is(err, unix.ENOTEMPTY) {
		t.Fatalf("Unlock() with a non-empty unencrypted DataDir error = %v; want ENOTEMPTY", err)
	}
	wantKeyStatus(t, v, false)
}

func TestLockFilesBusy(t *testing.T) {
	v := newVolume(t)
	key := randomKey(t)
	mustUnlock(t, v, key)
	path := filepath.Join(v.DataDir(), "busy")
	content := []byte("still open")
	writeFileSync(t, path, content)

	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	// Registered after newVolume's cleanup, so it runs first.
	t.Cleanup(func() { f.Close() })
	if err := v.Lock(); !errors.Is(err, ErrFilesBusy) {
		t.Fatalf("Lock() with an open file error = %v; want ErrFilesBusy", err)
	}
	// Incompletely removed: the open file still decrypts, so the key
	// counts as present.
	wantKeyStatus(t, v, true)
	buf := make([]byte, len(content))
	if _, err := f.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, content) {
		t.Errorf("ReadAt on the open file = %q, %v; want %q", buf, err, content)
	}
	if err := v.Lock(); !errors.Is(err, ErrFilesBusy) {
		t.Errorf("Lock() again with the file open error = %v; want ErrFilesBusy", err)
	}
	if err := v.Detach(testContext(t)); !errors.Is(err, unix.EBUSY) {
		t.Errorf("Detach() with the file open error = %v; want EBUSY", err)
	}

	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := v.Lock(); err != nil {
		t.Fatalf("Lock() after closing the file error = %v; want nil", err)
	}
	wantKeyStatus(t, v, false)
	wantLocked(t, v.DataDir(), "busy")
}

func TestDetachAttachRoundTrip(t *testing.T) {
	v := newVolume(t)
	ctx := testContext(t)
	key := randomKey(t)
	mustUnlock(t, v, key)
	path := filepath.Join(v.DataDir(), "f")
	content := []byte(uniqueMarker(t, "survives-"))
	writeFileSync(t, path, content)

	// Detach without Lock: unmounting drops the filesystem keyring.
	if err := v.Detach(ctx); err != nil {
		t.Fatalf("Detach() error = %v", err)
	}
	if err := v.Detach(ctx); err != nil {
		t.Fatalf("second Detach() error = %v; want nil", err)
	}
	if loops, err := v.findLoops(ctx); err != nil || len(loops) != 0 {
		t.Fatalf("loop devices after Detach = %v, %v; want none", loops, err)
	}
	if err := v.Unlock(key); !errors.Is(err, ErrNotMounted) {
		t.Errorf("Unlock() on a detached volume error = %v; want ErrNotMounted", err)
	}
	if _, err := v.KeyStatus(); !errors.Is(err, ErrNotMounted) {
		t.Errorf("KeyStatus() on a detached volume error = %v; want ErrNotMounted", err)
	}

	if err := v.Attach(ctx); err != nil {
		t.Fatalf("Attach() error = %v", err)
	}
	if err := v.Attach(ctx); err != nil {
		t.Fatalf("second Attach() error = %v; want nil", err)
	}
	if loops, err := v.findLoops(ctx); err != nil || len(loops) != 1 {
		t.Fatalf("loop devices after Attach = %v, %v; want one", loops, err)
	}
	wantKeyStatus(t, v, false)
	wantLocked(t, v.DataDir(), "f")
	mustUnlock(t, v, key)
	wantContent(t, path, content)

	// Attach must reuse a loop device left attached without a mount.
	if err := unix.Unmount(v.Mount, 0); err != nil {
		t.Fatal(err)
	}
	if err := v.Attach(ctx); err != nil {
		t.Fatalf("Attach() with a dangling loop device error = %v", err)
	}
	if loops, err := v.findLoops(ctx); err != nil || len(loops) != 1 {
		t.Fatalf("loop devices after re-Attach = %v, %v; want one", loops, err)
	}
}

func TestAttachRefusesForeignMount(t *testing.T) {
	v := newVolume(t)
	ctx := testContext(t)
	if err := v.Detach(ctx); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", v.Mount, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(v.Mount, unix.MNT_DETACH) }) // runs before the volume cleanup
	if err := v.Attach(ctx); !errors.Is(err, ErrMountBusy) {
		t.Errorf("Attach() over a tmpfs error = %v; want ErrMountBusy", err)
	}
	if err := v.Detach(ctx); !errors.Is(err, ErrMountBusy) {
		t.Errorf("Detach() of a tmpfs error = %v; want ErrMountBusy", err)
	}
	if err := v.Unlock(randomKey(t)); !errors.Is(err, ErrMountBusy) {
		t.Errorf("Unlock() on a tmpfs error = %v; want ErrMountBusy", err)
	}
	if loops, err := v.findLoops(ctx); err != nil || len(loops) != 0 {
		t.Errorf("loop devices after refused Attach = %v, %v; want none", loops, err)
	}
}

// fillPastThreshold writes a file that leaves less than 10% free.
func fillPastThreshold(t *testing.T, v *Volume) (total uint64) {
	t.Helper()
	total, free, err := v.Usage()
	if err != nil {
		t.Fatal(err)
	}
	writeFileSync(t, filepath.Join(v.DataDir(), "fill"), make([]byte, free-free/20))
	if !v.NeedsGrow(0.10) {
		_, free, _ := v.Usage()
		t.Fatalf("NeedsGrow(0.10) with %d of %d bytes free = false; want true", free, total)
	}
	return total
}

// checkGrown checks the volume after growing from total1 bytes to newSize.
func checkGrown(t *testing.T, v *Volume, total1 uint64, newSize int64) (total2 uint64) {
	t.Helper()
	total2, _, err := v.Usage()
	if err != nil {
		t.Fatal(err)
	}
	if total2 <= total1 || total2 < uint64(newSize)*9/10 {
		t.Errorf("Usage() total after Resize = %d (before %d); want about %d", total2, total1, newSize)
	}
	if v.Size != newSize {
		t.Errorf("Size after Resize = %d; want %d", v.Size, newSize)
	}
	if fi, err := os.Stat(v.Image); err != nil || fi.Size() != newSize {
		t.Errorf("image after Resize: %v, %v; want %d bytes", fi, err, newSize)
	}
	if v.NeedsGrow(0.10) {
		t.Error("NeedsGrow(0.10) after Resize = true; want false")
	}
	// The new space is usable.
	writeFileSync(t, filepath.Join(v.DataDir(), "more"), make([]byte, testSize))
	return total2
}

func requireCapSysResource(t *testing.T, want bool) {
	t.Helper()
	have, err := haveCapability(unix.CAP_SYS_RESOURCE)
	if err != nil {
		t.Fatal(err)
	}
	if have != want {
		t.Skipf("skipping: test needs CAP_SYS_RESOURCE %v in the effective set, have %v (the kernel requires it for online ext4 resize)", want, have)
	}
}

func TestResizeOnline(t *testing.T) {
	requireVolumeSupport(t)
	requireCapSysResource(t, true)
	v := newVolume(t)
	ctx := testContext(t)
	key := randomKey(t)
	mustUnlock(t, v, key)
	path := filepath.Join(v.DataDir(), "keep")
	content := []byte(uniqueMarker(t, "kept-"))
	writeFileSync(t, path, content)
	total1 := fillPastThreshold(t, v)

	const newSize = 4 * testSize
	if err := v.Resize(ctx, newSize); err != nil {
		t.Fatalf("Resize(%d) error = %v", newSize, err)
	}
	total2 := checkGrown(t, v, total1, newSize)
	wantContent(t, path, content)

	if err := v.Resize(ctx, newSize); err != nil {
		t.Errorf("Resize() to the current size error = %v; want nil", err)
	}
	if err := v.Resize(ctx, testSize); !errors.Is(err, ErrShrink) {
		t.Errorf("Resize(%d) error = %v; want ErrShrink", testSize, err)
	}

	// Survives a remount at the new size.
	if err := v.Lock(); err != nil {
		t.Fatal(err)
	}
	if err := v.Detach(ctx); err != nil {
		t.Fatal(err)
	}
	if err := v.Attach(ctx); err != nil {
		t.Fatal(err)
	}
	mustUnlock(t, v, key)
	wantContent(t, path, content)
	if total3, _, err := v.Usage(); err != nil || total3 != total2 {
		t.Errorf("Usage() total after remount = %d, %v; want %d", total3, err, total2)
	}
}

// TestResizeOnlineNotPermitted: without CAP_SYS_RESOURCE a mounted volume is
// refused before the image changes.
func TestResizeOnlineNotPermitted(t *testing.T) {
	requireVolumeSupport(t)
	requireCapSysResource(t, false)
	v := newVolume(t)
	if err := v.Resize(testContext(t), 2*testSize); !errors.Is(err, ErrOnlineResizeNotPermitted) {
		t.Fatalf("Resize() without CAP_SYS_RESOURCE error = %v; want ErrOnlineResizeNotPermitted", err)
	}
	if fi, err := os.Stat(v.Image); err != nil || fi.Size() != testSize {
		t.Errorf("image after refused Resize: %v, %v; want %d bytes", fi, err, testSize)
	}
}

func TestResizeOffline(t *testing.T) {
	v := newVolume(t)
	ctx := testContext(t)
	key := randomKey(t)
	mustUnlock(t, v, key)
	path := filepath.Join(v.DataDir(), "keep")
	content := []byte(uniqueMarker(t, "kept-"))
	writeFileSync(t, path, content)
	total1 := fillPastThreshold(t, v)
	if err := v.Lock(); err != nil {
		t.Fatal(err)
	}
	if err := v.Detach(ctx); err != nil {
		t.Fatal(err)
	}

	if err := v.Resize(ctx, testSize); err != nil {
		t.Errorf("Resize() to the current size error = %v; want nil", err)
	}
	const newSize = 4 * testSize
	if err := v.Resize(ctx, newSize); err != nil {
		t.Fatalf("Resize(%d) error = %v", newSize, err)
	}
	if err := v.Resize(ctx, testSize); !errors.Is(err, ErrShrink) {
		t.Errorf("Resize(%d) error = %v; want ErrShrink", testSize, err)
	}
	if err := v.Resize(ctx, newSize+1); err == nil {
		t.Error("Resize() to an unaligned size error = nil; want an error")
	}
	if loops, err := v.findLoops(ctx); err != nil || len(loops) != 0 {
		t.Errorf("loop devices after offline Resize = %v, %v; want none", loops, err)
	}

	if err := v.Attach(ctx); err != nil {
		t.Fatal(err)
	}
	mustUnlock(t, v, key)
	wantContent(t, path, content)
	checkGrown(t, v, total1, newSize)

	// A loop device left attached without a mount is grown through the
	// device.
	if err := v.Lock(); err != nil {
		t.Fatal(err)
	}
	if err := unix.Unmount(v.Mount, 0); err != nil {
		t.Fatal(err)
	}
	const newSize2 = 6 * testSize
	if err := v.Resize(ctx, newSize2); err != nil {
		t.Fatalf("Resize(%d) with an attached loop device error = %v", newSize2, err)
	}
	if err := v.Attach(ctx); err != nil {
		t.Fatal(err)
	}
	mustUnlock(t, v, key)
	wantContent(t, path, content)
	if total, _, err := v.Usage(); err != nil || total < newSize2*9/10 {
		t.Errorf("Usage() total after second Resize = %d, %v; want about %d", total, err, newSize2)
	}
}
