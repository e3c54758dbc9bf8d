package provision

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/keys"
	"github.com/pgshield/pgshield/internal/storage"
)

// savedServer writes a stopped server's configuration (no volume) with
// the given storage path into a new data directory.
func savedServer(t *testing.T, root, id, storagePath string) config.Layout {
	t.Helper()
	l := config.Layout{Root: root}
	cfg := &config.Config{Listen: "127.0.0.1:5432", AdminUser: "admin", ServerID: id,
		TLSCertFile: "/x.crt", TLSKeyFile: "/x.key", StoragePath: storagePath,
		KeyURI: keys.SystemKeyURI(filepath.Join(t.TempDir(), id+".key"))}
	if err := cfg.CheckAndSetDefaults(); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(l.Root, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := config.Save(l, cfg); err != nil {
		t.Fatal(err)
	}
	return l
}

// liveVolume puts "another server's" data on a storage path, with the
// owner mark naming owner ("" for none).
func liveVolume(t *testing.T, storagePath, owner string) string {
	t.Helper()
	file := filepath.Join(storagePath, storage.DataDirName, "PG_VERSION")
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte("15\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if owner != "" {
		if err := os.WriteFile(filepath.Join(storagePath, storageOwnerName), []byte(owner+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return file
}

func needRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (Delete touches nftables and mounts)")
	}
}

// TestDeleteLeavesAnotherServersStoragePath (review finding 1): server A
// was deleted with its backups kept, so its pgshield.json still names the
// storage path; server C now lives there. delete --delete-backups of A's
// leftovers must not touch C's volume, and neither must a delete of a
// server whose wrapped data key is still there when the path's owner mark
// names another server or none.
func TestDeleteLeavesAnotherServersStoragePath(t *testing.T) {
	needRoot(t)
	base := t.TempDir()
	sp := filepath.Join(base, "shared")
	if err := os.Mkdir(sp, 0o700); err != nil {
		t.Fatal(err)
	}
	const a, c = "aaaaaaaaaaaaaaaa", "cccccccccccccccc"
	live := liveVolume(t, sp, c)

	// A's leftovers: configuration kept, wrapped data key gone.
	l := savedServer(t, filepath.Join(base, "a"), a, sp)
	if _, err := Delete(context.Background(), l, true, nil); err != nil {
		t.Fatalf("Delete of leftovers: %v", err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Fatalf("delete --delete-backups of a deleted server removed the live volume on its old storage path: %v", err)
	}
	if _, err := os.Stat(l.Root); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the leftovers %s are not removed (%v)", l.Root, err)
	}

	// A server whose wrapped data key is still there, on a path marked
	// as another's, or not marked: refused, nothing touched.
	for _, owner := range []string{c, ""} {
		if owner == "" {
			if err := os.Remove(filepath.Join(sp, storageOwnerName)); err != nil {
				t.Fatal(err)
			}
		}
		l := savedServer(t, filepath.Join(base, "b"+owner), a, sp)
		if err := os.MkdirAll(l.SecretsDir(), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(l.WrappedDataKey(), []byte("{}"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Delete(context.Background(), l, true, nil)
		if err == nil || !strings.Contains(err.Error(), "owner") {
			t.Errorf("owner %q: Delete = %v; want a refusal naming the owner mark", owner, err)
		}
		if _, err := os.Stat(live); err != nil {
			t.Fatalf("owner %q: Delete removed a volume that is not its own: %v", owner, err)
		}
		if _, err := os.Stat(l.WrappedDataKey()); err != nil {
			t.Errorf("owner %q: the refused Delete removed the wrapped data key: %v", owner, err)
		}
	}
}

// TestInitUndoLeavesAnotherServersStoragePath (review finding 1, init's
// side): an init given a storage path that already holds a volume fails,
// and its undo must not remove that volume.
func TestInitUndoLeavesAnotherServersStoragePath(t *testing.T) {
	needRoot(t)
	base := t.TempDir()
	sp := filepath.Join(base, "shared")
	if err := os.Mkdir(sp, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, owner := range []string{"cccccccccccccccc", ""} {
		if err := os.Remove(filepath.Join(sp, storageOwnerName)); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		live := liveVolume(t, sp, owner)
		kekDir := t.TempDir()
		if err := os.Chmod(kekDir, 0o700); err != nil {
			t.Fatal(err)
		}
		kek := filepath.Join(kekDir, "kek")
		if err := keys.CreateSystemKEK(kek); err != nil {
			t.Fatal(err)
		}
		l := config.Layout{Root: filepath.Join(base, "new"+owner)}
		cfg := &config.Config{ServerID: "dddddddddddddddd", StoragePath: sp, KeyURI: keys.SystemKeyURI(kek)}
		s := newServer(l, cfg, pgUser, "the encrypted volume")
		step := s.volumeStep()
		if err := step.Do(context.Background()); err == nil {
			t.Fatalf("owner %q: the volume step succeeded on a storage path in use", owner)
		}
		_ = step.Undo(context.Background())
		if _, err := os.Stat(live); err != nil {
			t.Fatalf("owner %q: init's undo removed the volume already on the storage path: %v", owner, err)
		}
		if b, _ := os.ReadFile(filepath.Join(sp, storageOwnerName)); strings.TrimSpace(string(b)) != owner {
			t.Errorf("owner %q: the owner mark is now %q", owner, b)
		}
	}
}

// TestLayoutUndoKeepsOthersEntries (review finding 12): the undo of the
// data directory step removes the parents it made only when empty, so
// what a concurrent run put in them stays.
func TestLayoutUndoKeepsOthersEntries(t *testing.T) {
	base := t.TempDir()
	l := config.Layout{Root: filepath.Join(base, "p1", "p2", "srv")}
	cfg := &config.Config{ServerID: "eeeeeeeeeeeeeeee"}
	s := newServer(l, cfg, pgUser, "the encrypted volume")
	step := s.layoutStep("127.0.0.1", true, true)
	if err := step.Do(context.Background()); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(base, "p1", "other", "pgshield.json")
	if err := os.MkdirAll(filepath.Dir(other), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(other, []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := step.Undo(context.Background()); err != nil {
		t.Fatalf("Undo: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Fatalf("undo removed another run's file: %v", err)
	}
	for _, p := range []string{l.Root, filepath.Dir(l.Root)} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("undo left %s (%v)", p, err)
		}
	}
}

// TestDeleteRefusesSymlinkedDataDir (review finding 7): only the link
// would go, the secrets behind it staying while delete said "deleted".
func TestDeleteRefusesSymlinkedDataDir(t *testing.T) {
	base := t.TempDir()
	real := savedServer(t, filepath.Join(base, "real"), "ffffffffffffffff", "")
	link := filepath.Join(base, "link")
	if err := os.Symlink(real.Root, link); err != nil {
		t.Fatal(err)
	}
	if _, _, err := PlanDelete(config.Layout{Root: link}, true); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Fatalf("PlanDelete(symlink) = %v; want it refused", err)
	}
	if _, _, err := PlanDelete(config.Layout{Root: link + "/"}, true); err == nil {
		t.Fatalf("PlanDelete(symlink/) accepted")
	}
}

// TestStaleMasterPIDNotSignalled (review finding 8): a postmaster.pid left
// behind names a PID now held by an unrelated process, which delete must
// not signal.
func TestStaleMasterPIDNotSignalled(t *testing.T) {
	l := config.Layout{Root: t.TempDir()}
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	if err := os.MkdirAll(l.PGData(), 0o700); err != nil {
		t.Fatal(err)
	}
	pid := strconv.Itoa(cmd.Process.Pid)
	if err := os.WriteFile(filepath.Join(l.PGData(), "postmaster.pid"), []byte(pid+"\n"+l.PGData()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = stopOrphanPostmaster(l)
	select {
	case err := <-exited:
		exited <- err
		t.Fatalf("an unrelated process (pid %s) named by a stale postmaster.pid was signalled: %v", pid, err)
	case <-time.After(200 * time.Millisecond): // a SIGQUIT kills sleep at once
	}
	if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("pid %s: %v", pid, err)
	}
}

// TestOrphanedKeysNeedsEvidence (review finding 5): a key whose recorded
// data directory cannot be seen (another mount namespace, an unmounted
// filesystem, a moved directory) is not an orphan: it is listed as
// unverified and kept. One whose directory now holds another server is
// moved to a 0700 quarantine directory, not deleted.
func TestOrphanedKeysNeedsEvidence(t *testing.T) {
	keyDir := t.TempDir()
	base := t.TempDir()
	const hidden, replaced = "1212121212121212", "3434343434343434"
	savedServer(t, filepath.Join(base, "b"), "5656565656565656", "")
	for id, owner := range map[string]string{hidden: filepath.Join(base, "unmounted", "srv"), replaced: filepath.Join(base, "b")} {
		if err := os.WriteFile(filepath.Join(keyDir, id+".key"), []byte("k"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(ownerPath(keyDir, id), []byte(owner+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	scan, err := RemoveOrphanedKeys(keyDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(keyDir, hidden+".key")); err != nil {
		t.Fatalf("the key of a server whose directory is not visible was removed (scan %+v)", scan)
	}
	if len(scan.Orphans) != 1 || scan.Orphans[0].ServerID != replaced {
		t.Errorf("orphans = %+v; want only %s", scan.Orphans, replaced)
	}
	q := filepath.Join(keyDir, quarantineDirName)
	if b, err := os.ReadFile(filepath.Join(q, replaced+".key")); err != nil || string(b) != "k" {
		t.Fatalf("the orphaned key is not in quarantine: %q, %v", b, err)
	}
	if st, err := os.Stat(q); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("quarantine %s: %v, %v; want mode 0700", q, st.Mode(), err)
	}
	if _, err := os.Stat(filepath.Join(keyDir, replaced+".key")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the quarantined key is still in the key directory (%v)", err)
	}
}

// TestOrphanPostmasterStopped: a process that is a postgres binary in the
// data directory (a postmaster left by a daemon that died) is still
// stopped. A copy of sleep named postgres stands in for it.
func TestOrphanPostmasterStopped(t *testing.T) {
	l := config.Layout{Root: t.TempDir()}
	if err := os.MkdirAll(l.PGData(), 0o700); err != nil {
		t.Fatal(err)
	}
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip(err)
	}
	b, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "postgres")
	if err := os.WriteFile(bin, b, 0o700); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "60")
	cmd.Dir = l.PGData()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	if err := os.WriteFile(filepath.Join(l.PGData(), "postmaster.pid"), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := stopOrphanPostmaster(l); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatal("the orphaned postmaster was not stopped")
	}
}

// TestOrphanedKeysKeepsAttached (review finding 5): a server moved since
// init, with another server made at its old path, looks orphaned by its
// owner file; while its volume is mounted where it is now, its key is
// kept. Once nothing of it is attached, it is quarantined.
func TestOrphanedKeysKeepsAttached(t *testing.T) {
	needRoot(t)
	keyDir := t.TempDir()
	base := t.TempDir()
	const moved = "7878787878787878"
	savedServer(t, filepath.Join(base, "old"), "9090909090909090", "") // made at its old path
	now := savedServer(t, filepath.Join(base, "now"), moved, "")       // where it went
	if err := os.WriteFile(filepath.Join(keyDir, moved+".key"), []byte("k"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ownerPath(keyDir, moved), []byte(filepath.Join(base, "old")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(now.VolumeMount(), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", now.VolumeMount(), "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	mounted := true
	t.Cleanup(func() {
		if mounted {
			_ = syscall.Unmount(now.VolumeMount(), syscall.MNT_DETACH)
		}
	})
	scan, err := RemoveOrphanedKeys(keyDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(keyDir, moved+".key")); err != nil || len(scan.Orphans) != 0 {
		t.Fatalf("the key of a server whose volume is mounted was taken (scan %+v, %v)", scan, err)
	}
	if err := syscall.Unmount(now.VolumeMount(), 0); err != nil {
		t.Fatal(err)
	}
	mounted = false
	if scan, err = RemoveOrphanedKeys(keyDir); err != nil || len(scan.Orphans) != 1 {
		t.Fatalf("unmounted: scan %+v, %v; want it orphaned (the control)", scan, err)
	}
	if _, err := os.Stat(filepath.Join(keyDir, quarantineDirName, moved+".key")); err != nil {
		t.Errorf("not quarantined: %v", err)
	}
}
