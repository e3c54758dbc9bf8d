package provision

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/ctl/volume"
)

func TestRemoveAllBut(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{"a/x", "a/y", "b/c/d", "e", "f"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, p), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	keep := []string{filepath.Join(dir, "a/x"), filepath.Join(dir, "b"), filepath.Join(dir, "e")}
	if err := removeAllBut(dir, keep); err != nil {
		t.Fatal(err)
	}
	var left []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			left = append(left, rel)
		}
		return nil
	})
	if want := []string{"a/x", "b/c/d", "e"}; !slices.Equal(left, want) {
		t.Errorf("left %q; want %q", left, want)
	}
}

func TestPlanDeleteRefusesBadServerID(t *testing.T) {
	l := config.Layout{Root: t.TempDir()}
	cfg := &config.Config{Listen: "127.0.0.1:5432", AdminUser: "admin", ServerID: "../../etc/passwd",
		TLSCertFile: "/x.crt", TLSKeyFile: "/x.key"}
	if err := cfg.CheckAndSetDefaults(); err != nil {
		t.Fatal(err)
	}
	if err := config.Save(l, cfg); err != nil {
		t.Fatal(err)
	}
	if _, _, err := PlanDelete(l, true); err == nil || !strings.Contains(err.Error(), "invalid server id") {
		t.Fatalf("PlanDelete(id with a path) = %v; want it refused", err)
	}
}

// realServer inits a stopped server in a new directory (root, PostgreSQL
// 15 and loop devices needed).
func realServer(t *testing.T, storage ...string) config.Layout {
	t.Helper()
	if os.Getenv("PGSHIELD_E2E") != "1" || os.Geteuid() != 0 {
		t.Skip("needs root, PostgreSQL 15 and loop devices: set PGSHIELD_E2E=1 (scripts/test.sh does)")
	}
	base := t.TempDir()
	for _, d := range []string{base, filepath.Dir(base)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { cleanupUnder(base) })
	pw := filepath.Join(base, "pw")
	if err := os.WriteFile(pw, []byte("delete-test-password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	port, err := freePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	l := config.Layout{Root: filepath.Join(base, "srv")}
	o := InitOptions{Layout: l, AdminUser: "admin", AdminPasswordFile: pw,
		Listen: "127.0.0.1:" + strconv.Itoa(port), Network: "public", Storage: config.StorageFscrypt,
		StorageSize: 64 << 20}
	if len(storage) > 0 && storage[0] == config.StorageGocryptfs {
		o.Storage, o.StorageSize = config.StorageGocryptfs, 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := Init(ctx, o); err != nil {
		t.Fatalf("Init: %v", err)
	}
	return l
}

// TestDeleteRecordsAndDestroys deletes a real server: its last audit
// record says so (read from the volume just before it is destroyed), and
// afterwards its data directory, key file, loop device and mount are gone.
func TestDeleteRecordsAndDestroys(t *testing.T) {
	for _, backend := range []string{config.StorageFscrypt, config.StorageGocryptfs} {
		t.Run(backend, func(t *testing.T) { testDeleteRecordsAndDestroys(t, backend) })
	}
}

func testDeleteRecordsAndDestroys(t *testing.T, backend string) {
	l := realServer(t, backend)
	ctx := context.Background()
	d, cfg, err := PlanDelete(l, false)
	if err != nil {
		t.Fatal(err)
	}
	if d.SystemKey != volume.SystemKEKPath(cfg.ServerID) || d.BackupsKept || d.CustomerKey != "" {
		t.Fatalf("PlanDelete = %+v; want the system key deleted and no backups to keep", d)
	}
	// The record Delete writes, read back through an opened volume.
	at := &volume.AtRest{Layout: l, Cfg: cfg}
	if ok, note := recordDeletion(ctx, l, cfg, at, d); !ok {
		t.Fatalf("recordDeletion: %s", note)
	}
	last := lastAuditRecord(t, l)
	if err := at.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if last["type"] != "server.deleted" || last["fields"].(map[string]any)["server_id"] != cfg.ServerID {
		t.Fatalf("last audit record = %v; want server.deleted", last)
	}

	before := machineState(t, l.Root)
	d, err = Delete(ctx, l, false, nil)
	if err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if !d.Audited {
		t.Errorf("Delete did not record itself: %s", d.AuditNote)
	}
	if st := machineState(t, l.Root); len(st) != 0 {
		t.Errorf("after Delete: %q (before: %q); want no loop device, mount or process", st, before)
	}
	for _, p := range []string{l.Root, d.SystemKey, ownerPath(volume.SystemKeyDir, d.ServerID)} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after Delete: %s is left (%v)", p, err)
		}
	}
}

// TestDeleteKeepsBackups: with a non-empty repository, Delete destroys the
// volume and its data key but keeps the repository, the key-encryption key
// and the files restoring needs; delete --delete-backups then removes all.
func TestDeleteKeepsBackups(t *testing.T) {
	l := realServer(t)
	ctx := context.Background()
	repo := l.DefaultBackupRepo()
	if err := os.MkdirAll(filepath.Join(repo, "archive"), 0o700); err != nil {
		t.Fatal(err)
	}
	// The first `up` wraps the backup passphrase; a stand-in will do.
	if err := os.WriteFile(l.WrappedBackupKey(), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := Delete(ctx, l, false, nil)
	if err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if !d.BackupsKept || !d.KeptSystemKey {
		t.Fatalf("Delete = %+v; want backups and the key kept", d)
	}
	for _, p := range append([]string{filepath.Join(repo, "archive")}, d.Kept...) {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("kept %s: %v", p, err)
		}
	}
	for _, p := range []string{l.WrappedDataKey(), l.VolumeImage(), l.VolumeMount(), l.TLSDir(), l.RunDir()} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after Delete: %s is left (%v)", p, err)
		}
	}
	// Again, with the backups: nothing is left.
	d, err = Delete(ctx, l, true, nil)
	if err != nil {
		t.Fatalf("Delete --delete-backups: %v", err)
	}
	for _, p := range []string{l.Root, d.SystemKey} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after Delete --delete-backups: %s is left (%v)", p, err)
		}
	}
}

func lastAuditRecord(t *testing.T, l config.Layout) map[string]any {
	t.Helper()
	f, err := os.Open(filepath.Join(l.AuditDir(), "audit.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var last string
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		last = sc.Text()
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(last), &m); err != nil {
		t.Fatalf("last audit line %q: %v", last, err)
	}
	return m
}

// TestOrphanedKeys: a key whose data directory holds another server is an
// orphan (moved to quarantine); one whose directory is gone is unverified,
// and it, one in use and one without an owner file are not removed.
func TestOrphanedKeys(t *testing.T) {
	keys := t.TempDir()
	base := t.TempDir()
	server := func(name, id string) string {
		l := config.Layout{Root: filepath.Join(base, name)}
		cfg := &config.Config{Listen: "127.0.0.1:5432", AdminUser: "admin", ServerID: id, TLSCertFile: "/x.crt", TLSKeyFile: "/x.key"}
		if err := cfg.CheckAndSetDefaults(); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(l.Root, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := config.Save(l, cfg); err != nil {
			t.Fatal(err)
		}
		return l.Root
	}
	key := func(id, owner string) {
		if err := os.WriteFile(filepath.Join(keys, id+".key"), []byte("k"), 0o600); err != nil {
			t.Fatal(err)
		}
		if owner != "" {
			if err := os.WriteFile(ownerPath(keys, id), []byte(owner+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	const inUse, gone, replaced, legacy = "1111111111111111", "2222222222222222", "3333333333333333", "4444444444444444"
	// An init under way: its directory exists, its configuration does not yet.
	const making = "7777777777777777"
	if err := os.MkdirAll(filepath.Join(base, "making"), 0o700); err != nil {
		t.Fatal(err)
	}
	key(making, filepath.Join(base, "making"))
	key(inUse, server("a", inUse))
	key(gone, filepath.Join(base, "deleted"))
	key(replaced, server("b", "5555555555555555")) // b was made again
	key(legacy, "")
	dangling := ownerPath(keys, "6666666666666666") // its key went another way
	if err := os.WriteFile(dangling, []byte("/x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	scan, err := RemoveOrphanedKeys(keys)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, o := range scan.Orphans {
		ids = append(ids, o.ServerID)
	}
	slices.Sort(ids)
	if !slices.Equal(ids, []string{replaced}) || scan.InUse != 2 || len(scan.Unknown) != 1 ||
		len(scan.Unverified) != 1 || scan.Unverified[0].ServerID != gone {
		t.Fatalf("scan = %+v; want orphan %s, %s unverified, one in use, one unknown", scan, replaced, gone)
	}
	if _, err := os.Stat(dangling); err == nil {
		t.Errorf("an owner file without its key is left")
	}
	for id, want := range map[string]bool{inUse: true, gone: true, replaced: false, legacy: true, making: true} {
		_, err := os.Stat(filepath.Join(keys, id+".key"))
		if (err == nil) != want {
			t.Errorf("key %s present = %v; want %v", id, err == nil, want)
		}
		if _, err := os.Stat(ownerPath(keys, id)); !want && err == nil {
			t.Errorf("owner of removed key %s left", id)
		}
	}
}
