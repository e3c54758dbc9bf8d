package storage

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseMountInfoLine(t *testing.T) {
	tests := []struct {
		line string
		want mountEntry
		ok   bool
	}{
		{line: "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue",
			want: mountEntry{devMajor: 98, root: "/mnt1", mountPoint: "/mnt2", fstype: "ext3", source: "/dev/root"}, ok: true},
		{line: `43 27 0:39 / /tmp/a\040b rw,nosuid - fuse.gocryptfs /tmp/c\134d rw,user_id=0`,
			want: mountEntry{devMinor: 39, root: "/", mountPoint: "/tmp/a b", fstype: "fuse.gocryptfs", source: `/tmp/c\d`}, ok: true},
		{line: "garbage"},
		{line: "1 2 x:y / / rw - ext4 /dev/sda rw"},
		{line: "1 2 8:1 / / rw -"},
	}
	for _, tt := range tests {
		got, ok := parseMountInfoLine(tt.line)
		if ok != tt.ok || got != tt.want {
			t.Errorf("parseMountInfoLine(%q) = %+v, %v; want %+v, %v", tt.line, got, ok, tt.want, tt.ok)
		}
	}
}

// extFS makes an ext4 filesystem (with or without the encrypt feature) in
// an image, mounts it and returns the mount point; cleanup unmounts it and
// detaches the loop device.
func extFS(t *testing.T, encrypt bool) string {
	t.Helper()
	requireVolumeSupport(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "fs.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, testSize); err != nil {
		t.Fatal(err)
	}
	args := []string{"-q", "-b", "4096"}
	if encrypt {
		args = append(args, "-O", "encrypt")
	}
	if out, err := exec.Command("mkfs.ext4", append(args, img)...).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	mnt := filepath.Join(dir, "fs")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).Output()
	if err != nil {
		t.Fatalf("losetup: %v", err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil && err != unix.EINVAL {
			t.Errorf("cleanup: unmount %s: %v", mnt, err)
			_ = unix.Unmount(mnt, unix.MNT_DETACH)
		}
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("cleanup: losetup -d %s: %v %s", dev, err, out)
		}
	})
	if err := unix.Mount(dev, mnt, "ext4", 0, ""); err != nil {
		t.Fatalf("mount: %v", err)
	}
	return mnt
}

func TestCheckStoragePath(t *testing.T) {
	requireVolumeSupport(t)
	enc := extFS(t, true)
	plain := extFS(t, false)
	if _, err := CheckStoragePath(enc); err != nil {
		t.Errorf("CheckStoragePath(ext4 with encrypt) error = %v; want nil", err)
	}
	_, err := CheckStoragePath(plain)
	if !errors.Is(err, ErrNoEncryptFeature) || !strings.Contains(err.Error(), "tune2fs -O encrypt") {
		t.Errorf("CheckStoragePath(ext4 without encrypt) error = %v; want ErrNoEncryptFeature naming tune2fs", err)
	}
	tmp := t.TempDir()
	if err := unix.Mount("tmpfs", tmp, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(tmp, 0) })
	if _, err := CheckStoragePath(tmp); !errors.Is(err, ErrNotExt4) || !strings.Contains(err.Error(), "tmpfs") {
		t.Errorf("CheckStoragePath(tmpfs) error = %v; want ErrNotExt4 naming tmpfs", err)
	}
	if _, err := CheckStoragePath(filepath.Join(enc, "missing")); err == nil {
		t.Error("CheckStoragePath(missing) error = nil")
	}
	if err := os.Symlink(enc, filepath.Join(tmp, "link")); err != nil {
		t.Fatal(err)
	}
	if _, err := CheckStoragePath(filepath.Join(tmp, "link")); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("CheckStoragePath(symlink) error = %v; want a refusal", err)
	}
	if err := os.Mkdir(filepath.Join(enc, DataDirName), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := CheckStoragePath(enc); err == nil || !strings.Contains(err.Error(), "already holds") {
		t.Errorf("CheckStoragePath(with data) error = %v; want a refusal", err)
	}
}

func TestStoragePathVolume(t *testing.T) {
	requireVolumeSupport(t)
	fsRoot := extFS(t, true)
	dir := t.TempDir()
	v := &Volume{Path: fsRoot, Mount: filepath.Join(dir, "mnt"),
		Log: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))}
	ctx := testContext(t)
	t.Cleanup(func() {
		_ = v.Lock()
		if err := v.Detach(context.Background()); err != nil {
			t.Errorf("cleanup: Detach() error = %v", err)
			_ = unix.Unmount(v.Mount, unix.MNT_DETACH)
		}
	})
	if err := v.Provision(ctx); err != nil {
		t.Fatalf("Provision() on a storage path error = %v", err)
	}
	if st, err := v.inspectLocked(ctx); err != nil || st.mount != mountedOurs || len(st.loops) != 0 {
		t.Fatalf("after Provision: %+v, %v; want mounted, no loop devices", st, err)
	}
	e, _ := mountAt(v.Mount)
	if e.fstype != "ext4" {
		t.Errorf("mount type %q; want ext4", e.fstype)
	}
	key := randomKey(t)
	mustUnlock(t, v, key)
	content := []byte(uniqueMarker(t, "path-"))
	writeFileSync(t, filepath.Join(v.DataDir(), "keep"), content)
	if err := v.Resize(ctx, 2*testSize); !errors.Is(err, ErrNotResizable) {
		t.Errorf("Resize() on a storage path error = %v; want ErrNotResizable", err)
	}
	if err := v.Lock(); err != nil {
		t.Fatal(err)
	}
	// Locked, the file is ciphertext on the storage path too.
	wantLocked(t, filepath.Join(fsRoot, DataDirName), "keep")
	if err := v.Detach(ctx); err != nil {
		t.Fatalf("Detach() error = %v", err)
	}
	if _, ok := mountAt(v.Mount); ok {
		t.Fatal("still bind-mounted after Detach")
	}
	// The storage path's own filesystem stays mounted.
	if _, ok := mountAt(fsRoot); !ok {
		t.Fatal("Detach unmounted the storage path's filesystem")
	}
	if err := v.Attach(ctx); err != nil {
		t.Fatalf("Attach() error = %v", err)
	}
	mustUnlock(t, v, key)
	wantContent(t, filepath.Join(v.DataDir(), "keep"), content)
	total, free, err := v.Usage()
	if err != nil || total == 0 || free > total {
		t.Errorf("Usage() = %d, %d, %v", total, free, err)
	}
	// A second volume on the same path is refused.
	w := &Volume{Path: fsRoot, Mount: filepath.Join(dir, "mnt2")}
	ctx2, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := w.Provision(ctx2); err == nil || !strings.Contains(err.Error(), "already holds") {
		t.Errorf("second Provision() on the same path error = %v; want a refusal", err)
	}
}

func TestUnescapeMountInfo(t *testing.T) {
	for in, want := range map[string]string{
		`/plain`:            `/plain`,
		`/a\040b`:           `/a b`,
		`/ends\040`:         `/ends `, // an escape at the very end
		`/tab\011and\134bs`: "/tab\tand\\bs",
		`/short\04`:         `/short\04`, // not a whole escape: kept
		`/not\999octal`:     `/not\999octal`,
	} {
		if got := UnescapeMountInfo(in); got != want {
			t.Errorf("UnescapeMountInfo(%q) = %q; want %q", in, got, want)
		}
	}
}
