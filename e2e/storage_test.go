package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
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

// storageInfo is what `storage show -o json` prints (the fields tested).
type storageInfo struct {
	Backend      string `json:"backend"`
	Description  string `json:"description"`
	State        string `json:"state"`
	SizeBytes    uint64 `json:"size_bytes"`
	UsedBytes    uint64 `json:"used_bytes"`
	FreeBytes    uint64 `json:"free_bytes"`
	ImagePath    string `json:"image_path"`
	ImageBytes   int64  `json:"image_bytes"`
	LoopDevice   string `json:"loop_device"`
	StoragePath  string `json:"storage_path"`
	CipherDir    string `json:"cipher_dir"`
	FUSEPID      int    `json:"fuse_pid"`
	FUSERestarts int    `json:"fuse_restarts"`
	Autogrow     bool   `json:"autogrow"`
	Resizable    bool   `json:"resizable"`
	LastGrow     *struct {
		FromBytes int64  `json:"from_bytes"`
		ToBytes   int64  `json:"to_bytes"`
		Method    string `json:"method"`
		Automatic bool   `json:"automatic"`
	} `json:"last_grow"`
}

// startedServerNoImage is startedServer for backends without an image,
// where init refuses the harness's --storage-size.
func startedServerNoImage(t *testing.T, name string, initArgs ...string) *server {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	s := &server{name: name, dataDir: filepath.Join(baseDir, name), port: port}
	t.Cleanup(s.stop)
	t.Cleanup(func() {
		log, _ := os.ReadFile(filepath.Join(s.dataDir, "log", "pgshield.log"))
		if bytes.Contains(log, []byte("WARNING: DATA RACE")) {
			t.Errorf("the daemon of %s reported a data race", name)
		}
		if t.Failed() {
			t.Logf("daemon log of %s:\n%s", name, log[max(0, len(log)-20000):])
		}
	})
	pw := filepath.Join(baseDir, name+".pw")
	if err := os.WriteFile(pw, []byte(adminPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"init", "--listen", s.addr(), "--admin-password-file", pw}, initArgs...)
	if out, err := s.cli(args...); err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	if out, err := s.cli("up", "--timeout", "2m"); err != nil {
		log, _ := os.ReadFile(filepath.Join(s.dataDir, "log", "pgshield.log"))
		t.Fatalf("up: %v\n%s\n%s", err, out, log)
	}
	return s
}

func showStorage(t *testing.T, s *server) storageInfo {
	t.Helper()
	out := mustCLI(t, s, "storage", "show", "-o", "json")
	var info storageInfo
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("storage show -o json: %v\n%s", err, out)
	}
	return info
}

// storageEvents returns the audit records of one event type.
func storageEvents(t *testing.T, s *server, event string) []map[string]any {
	t.Helper()
	out := mustCLI(t, s, "audit", "search", "--event", event, "-o", "json")
	var rs []map[string]any
	if err := json.Unmarshal([]byte(out), &rs); err != nil {
		t.Fatalf("audit search -o json: %v\n%s", err, out)
	}
	return rs
}

// dirContains scans every name and regular file under dir for each needle;
// it returns the needles found.
func dirContains(t *testing.T, dir string, needles ...[]byte) map[string]bool {
	t.Helper()
	found := map[string]bool{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var data []byte
		if d.Type().IsRegular() {
			if data, err = os.ReadFile(p); err != nil && !os.IsNotExist(err) {
				return err // a file deleted while scanning is fine
			}
		}
		for _, n := range needles {
			if bytes.Contains([]byte(d.Name()), n) || bytes.Contains(data, n) {
				found[string(n)] = true
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("scanning %s: %v", dir, err)
	}
	return found
}

// gocryptfsPIDs lists the gocryptfs processes serving cipherDir.
func gocryptfsPIDs(cipherDir string) []int {
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if filepath.Base(args[0]) != "gocryptfs" || !strings.Contains(string(b), cipherDir+"\x00") {
			continue
		}
		if st, err := os.ReadFile(filepath.Join(filepath.Dir(p), "stat")); err == nil && strings.Contains(string(st), ") Z ") {
			continue // a zombie waiting to be reaped
		}
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p))); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// mountedAt reports whether something is mounted exactly at path.
func mountedAt(path string) bool {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == path {
			return true
		}
	}
	return false
}

// TestGocryptfsServer: a server on the gocryptfs backend works end to end
// through the gateway; a marker in rows, WAL, the server log and spilled
// sort files is nowhere in the cipher directory (and a planted control
// file shows the scan would find it); lock unmounts and ends gocryptfs,
// unlock brings the data back.
func TestGocryptfsServer(t *testing.T) {
	s := startedServerNoImage(t, "gcfs", "--storage", "gocryptfs")
	cipher := filepath.Join(s.dataDir, "storage", "gocryptfs")
	info := showStorage(t, s)
	if info.Backend != "gocryptfs" || info.CipherDir != cipher || info.FUSEPID == 0 || info.Resizable || info.SizeBytes == 0 {
		t.Fatalf("storage show = %+v; want gocryptfs with its cipher directory and pid", info)
	}
	if pids := gocryptfsPIDs(cipher); len(pids) != 1 || pids[0] != info.FUSEPID {
		t.Fatalf("gocryptfs processes for %s = %v; want [%d]", cipher, pids, info.FUSEPID)
	}
	if out := mustCLI(t, s, "key", "show"); !strings.Contains(out, "gocryptfs (AES-256-GCM") {
		t.Fatalf("key show does not name the backend:\n%s", out)
	}
	if k, _ := s.status(t)["key"].(map[string]any); !strings.HasPrefix(fmt.Sprint(k["backend"]), "gocryptfs") {
		t.Fatalf("status key.backend = %v", k["backend"])
	}
	// The size does not apply; resize says why.
	if out, err := s.cli("storage", "resize", "--size", "40GiB"); err == nil || !strings.Contains(out, "gocryptfs volume has no size") {
		t.Fatalf("storage resize on gocryptfs = %v %s; want a refusal", err, out)
	}

	marker := fmt.Sprintf("GCFS-MARKER-%d", time.Now().UnixNano())
	logMarker := strings.ReplaceAll(marker, "-", "_")
	dsn := s.dsn("user=" + admin + " sslmode=require")
	conn := writeMarkers(t, s, marker, logMarker)
	s.superSQL(t, "CHECKPOINT")
	// In the decrypted view (what PostgreSQL sees) the marker is there...
	plain := dirContains(t, filepath.Join(s.dataDir, "volume", "data"), []byte(marker), []byte(logMarker))
	if !plain[marker] || !plain[logMarker] {
		t.Fatalf("the decrypted view lacks the marker (rows %v, log %v); the test would prove nothing", plain[marker], plain[logMarker])
	}
	// ...and in the ciphertext it is nowhere, nor any plaintext file name.
	if found := dirContains(t, cipher, []byte(marker), []byte(logMarker), []byte("pgdata"), []byte("pg_wal"), []byte("PG_VERSION")); len(found) > 0 {
		t.Fatalf("the gocryptfs cipher directory holds plaintext: %v", found)
	}
	control := []byte("CONTROL-" + marker)
	if err := os.WriteFile(filepath.Join(cipher, "plain-control"), control, 0o600); err != nil {
		t.Fatal(err)
	}
	found := dirContains(t, cipher, control)
	os.Remove(filepath.Join(cipher, "plain-control"))
	if !found[string(control)] {
		t.Fatal("control marker not found in the cipher directory: the scan is broken")
	}
	conn.Close(context.Background())

	// Lock: PostgreSQL stops, the volume is unmounted, gocryptfs (which
	// alone held the key) is gone.
	mustCLI(t, s, "key", "lock")
	mnt := filepath.Join(s.dataDir, "volume")
	if mountedAt(mnt) {
		t.Fatal("the volume is still mounted while locked")
	}
	if pids := gocryptfsPIDs(cipher); len(pids) > 0 {
		t.Fatalf("gocryptfs still runs while locked: %v", pids)
	}
	if entries, err := os.ReadDir(mnt); err != nil || len(entries) != 0 {
		t.Fatalf("mount point while locked: %v %v; want empty", entries, err)
	}
	if out, err := psql(t, dsn, adminPassword, "-c", "SELECT 1"); err == nil || !strings.Contains(out, "locked") {
		t.Fatalf("login while locked = %v %q; want a refusal saying the server is locked", err, out)
	}
	mustCLI(t, s, "key", "unlock")
	if out, err := psql(t, dsn, adminPassword, "-c", "SELECT count(*) FROM secrets"); err != nil || out != "20000" {
		t.Fatalf("after unlock: %v %q; want the 20000 rows back", err, out)
	}
}

// TestGocryptfsKilledUnderLoad: gocryptfs is killed with SIGKILL while
// clients commit; pgshield stops PostgreSQL, remounts and restarts it, and
// every acknowledged commit is there, with pg_amcheck clean.
func TestGocryptfsKilledUnderLoad(t *testing.T) {
	s := startedServerNoImage(t, "gcfskill", "--storage", "gocryptfs")
	cipher := filepath.Join(s.dataDir, "storage", "gocryptfs")
	dsn := s.dsn("user=" + admin + " password=" + adminPassword + " sslmode=require")
	if out, err := psql(t, s.dsn("user="+admin+" sslmode=require"), adminPassword,
		"-c", "CREATE TABLE ledger(n int PRIMARY KEY)", "-c", "CREATE TABLE bulk(n int, pad text)", "-c", "CREATE INDEX ON bulk(n)"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	l := startLedger(t, dsn)
	// Heavier writes beside the ledger, so the kill lands in real I/O.
	bulkStop, bulkDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(bulkDone)
		for i := 0; i < 10000; i++ {
			select {
			case <-bulkStop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if c, err := pgxConnect(t, dsn); err == nil {
				_, _ = c.Exec(ctx, "INSERT INTO bulk SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 5000) g")
				c.Close(context.Background())
			} else {
				time.Sleep(200 * time.Millisecond)
			}
			cancel()
		}
	}()
	defer func() {
		select {
		case <-bulkStop:
		default:
			close(bulkStop)
		}
		<-bulkDone
	}()
	time.Sleep(3 * time.Second)
	before := showStorage(t, s)
	if before.FUSEPID == 0 {
		t.Fatal("no gocryptfs pid")
	}
	l.mu.Lock()
	ackedBefore := len(l.acked)
	l.mu.Unlock()
	if ackedBefore == 0 {
		t.Fatal("no commits acknowledged before the kill")
	}
	killedAt := time.Now()
	if err := syscall.Kill(before.FUSEPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Recovered: a new gocryptfs serves the volume and commits are
	// acknowledged again.
	var after storageInfo
	for deadline := time.Now().Add(90 * time.Second); ; {
		after = showStorage(t, s)
		l.mu.Lock()
		n := len(l.acked)
		l.mu.Unlock()
		if after.FUSEPID != 0 && after.FUSEPID != before.FUSEPID && after.State == "Available" && n > ackedBefore+5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not recovered within 90 s of the kill: %+v, %d commits acknowledged (%d before)", after, n, ackedBefore)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("gocryptfs killed -> commits acknowledged again in %s", time.Since(killedAt).Round(10*time.Millisecond))
	close(bulkStop)
	<-bulkDone
	acked := l.finish()
	if after = showStorage(t, s); after.FUSERestarts != 1 {
		t.Errorf("fuse_restarts = %d; want 1", after.FUSERestarts)
	}
	if pids := gocryptfsPIDs(cipher); len(pids) != 1 {
		t.Errorf("gocryptfs processes after recovery = %v; want one", pids)
	}
	// Every acknowledged commit survived.
	conn, err := pgxConnect(t, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(context.Background(), "SELECT n FROM ledger")
	if err != nil {
		t.Fatal(err)
	}
	have := map[int]bool{}
	for rows.Next() {
		var n int
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		have[n] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	var missing []int
	for _, n := range acked {
		if !have[n] {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("%d of %d acknowledged commits lost after the gocryptfs kill, e.g. %v", len(missing), len(acked), missing[:min(10, len(missing))])
	}
	t.Logf("%d acknowledged commits, all present", len(acked))
	// Heap and index structure is sound.
	amcheck(t, s)
	if rs := storageEvents(t, s, "storage.remount"); len(rs) != 1 || rs[0]["outcome"] != "success" {
		t.Errorf("storage.remount audit records = %v; want one success", rs)
	}
}

// amcheck runs pg_amcheck over the private socket as the superuser.
func amcheck(t *testing.T, s *server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/usr/lib/postgresql/15/bin/pg_amcheck", "--host", filepath.Join(s.dataDir, "run", "pg"),
		"--port", "5432", "--username", "postgres", "--all", "--install-missing", "--heapallindexed")
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("pg_amcheck: %v\n%s", err, out)
	}
}

// makeExt4 makes an ext4 filesystem in a sparse image (with -O encrypt if
// asked), mounts it in a new temporary directory and returns the mount
// point. Cleanup unmounts it and detaches its loop device, also on failure.
func makeExt4(t *testing.T, size string, encrypt bool) string {
	t.Helper()
	dir := t.TempDir()
	img := filepath.Join(dir, "fs.img")
	if out, err := exec.Command("truncate", "-s", size, img).CombinedOutput(); err != nil {
		t.Fatalf("truncate: %v %s", err, out)
	}
	args := []string{"-q", "-b", "4096", "-m", "0"}
	if encrypt {
		args = append(args, "-O", "encrypt")
	}
	if out, err := exec.Command("mkfs.ext4", append(args, img)...).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).Output()
	if err != nil {
		t.Fatalf("losetup: %v", err)
	}
	dev := strings.TrimSpace(string(out))
	mnt := filepath.Join(dir, "mnt")
	t.Cleanup(func() {
		if mountedAt(mnt) {
			if err := unix.Unmount(mnt, 0); err != nil {
				t.Errorf("cleanup: unmount %s: %v; detaching lazily", mnt, err)
				_ = unix.Unmount(mnt, unix.MNT_DETACH)
			}
		}
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("cleanup: losetup -d %s: %v %s", dev, err, out)
		}
	})
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "ext4", dev, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v %s", err, out)
	}
	return mnt
}

// TestStoragePath: --storage-path puts the volume on an existing ext4
// filesystem with the encrypt feature (no image, no loop device of
// pgshield's), and is refused on one without it.
func TestStoragePath(t *testing.T) {
	fsMnt := makeExt4(t, "512M", true)
	s := startedServerNoImage(t, "spath", "--storage-path", fsMnt)
	info := showStorage(t, s)
	if info.Backend != "fscrypt" || info.StoragePath != fsMnt || info.ImagePath != "" || info.LoopDevice != "" || info.Resizable {
		t.Fatalf("storage show = %+v; want fscrypt on %s, no image", info, fsMnt)
	}
	if _, err := os.Stat(filepath.Join(s.dataDir, "storage", "volume.img")); !os.IsNotExist(err) {
		t.Fatalf("an image was made: %v", err)
	}
	dsn := s.dsn("user=" + admin + " sslmode=require")
	marker := fmt.Sprintf("SPATH-MARKER-%d", time.Now().UnixNano())
	if out, err := psql(t, dsn, adminPassword, "-c", "CREATE TABLE t(v text)",
		"-c", fmt.Sprintf("INSERT INTO t SELECT '%s' || g FROM generate_series(1, 5000) g", marker)); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	// The rows are on the storage path's filesystem, encrypted.
	s.superSQL(t, "CHECKPOINT")
	if found := dirContains(t, filepath.Join(fsMnt, "data"), []byte(marker)); !found[marker] {
		t.Fatal("the marker is not in the storage path's data directory; the test would prove nothing")
	}
	_ = exec.Command("sync").Run()
	var dev string
	if out, err := exec.Command("findmnt", "-n", "-o", "SOURCE", "--target", fsMnt).Output(); err == nil {
		dev = strings.TrimSpace(string(out))
	}
	img := filepath.Join(filepath.Dir(fsMnt), "fs.img")
	if dev == "" || imageContains(t, img, []byte(marker)) {
		t.Fatalf("the storage path's image (%s on %s) holds the marker in plaintext", img, dev)
	}
	if out, err := s.cli("storage", "resize", "--size", "2GiB"); err == nil || !strings.Contains(out, "does not manage") {
		t.Fatalf("storage resize on a storage path = %v %s; want a refusal", err, out)
	}
	s.stop()
	// Down: the bind mount is gone, the storage path's filesystem stays.
	if mountedAt(filepath.Join(s.dataDir, "volume")) {
		t.Fatal("the volume is still mounted after down")
	}
	if !mountedAt(fsMnt) {
		t.Fatal("down unmounted the storage path's own filesystem")
	}

	// Review finding 1: delete keeps the backups and with them
	// pgshield.json, which still names the storage path; another server
	// then takes the path. Deleting the first one's leftovers must leave
	// the second's volume (and its key in the kernel) alone.
	mark := filepath.Join(fsMnt, "pgshield-owner")
	if b, err := os.ReadFile(mark); err != nil || strings.TrimSpace(string(b)) != readConfig(t, s).ServerID {
		t.Fatalf("owner mark %s = %q, %v; want the server's id", mark, b, err)
	}
	mustCLI(t, s, "delete", "--yes")
	if _, err := os.Stat(mark); !os.IsNotExist(err) {
		t.Fatalf("delete left the owner mark (%v)", err)
	}
	c := startedServerNoImage(t, "spath2", "--storage-path", fsMnt)
	if out, err := psql(t, c.dsn("user="+admin+" sslmode=require"), adminPassword, "-c", "CREATE TABLE kept AS SELECT g FROM generate_series(1, 500) g"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if out := mustCLI(t, s, "delete", "--yes", "--delete-backups"); !strings.Contains(out, "not the volume") {
		t.Errorf("delete --delete-backups of the leftovers said:\n%s", out)
	}
	if out, err := psql(t, c.dsn("user="+admin+" sslmode=require"), adminPassword, "-tAc", "SELECT count(*) FROM kept"); err != nil || strings.TrimSpace(out) != "500" {
		t.Fatalf("the other server's table after delete --delete-backups of the leftovers: %v %q", err, out)
	}
	if _, err := os.Stat(s.dataDir); !os.IsNotExist(err) {
		t.Errorf("the leftovers %s are not removed (%v)", s.dataDir, err)
	}
	// Deleted here, while its storage path is still mounted.
	mustCLI(t, c, "delete", "--yes", "--delete-backups")
	for _, p := range []string{mark, filepath.Join(fsMnt, "data")} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("after delete of the server on the storage path: %s is left (%v)", p, err)
		}
	}

	// A filesystem without the encrypt feature is refused before anything
	// is made.
	noEnc := makeExt4(t, "64M", false)
	bad := &server{name: "spathbad", dataDir: filepath.Join(baseDir, "spathbad")}
	t.Cleanup(bad.stop)
	pw := filepath.Join(baseDir, "spathbad.pw")
	if err := os.WriteFile(pw, []byte(adminPassword), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := bad.cli("init", "--listen", "127.0.0.1:54329", "--admin-password-file", pw, "--storage-path", noEnc)
	if err == nil || !strings.Contains(out, "lacks the encrypt feature") || !strings.Contains(out, "tune2fs -O encrypt") {
		t.Fatalf("init --storage-path on ext4 without encrypt = %v %s; want a refusal naming the feature", err, out)
	}
	if _, err := os.Stat(bad.dataDir); !os.IsNotExist(err) {
		t.Errorf("the refused init left %s behind: %v", bad.dataDir, err)
	}
	tmpfs := t.TempDir()
	if err := unix.Mount("tmpfs", tmpfs, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(tmpfs, unix.MNT_DETACH) })
	out, err = bad.cli("init", "--listen", "127.0.0.1:54329", "--admin-password-file", pw, "--storage-path", tmpfs)
	if err == nil || !strings.Contains(out, "not an ext4 filesystem") || !strings.Contains(out, "tmpfs") {
		t.Fatalf("init --storage-path on tmpfs = %v %s; want a refusal naming tmpfs", err, out)
	}
	out, err = bad.cli("init", "--listen", "127.0.0.1:54329", "--admin-password-file", pw, "--storage", "gocryptfs", "--storage-path", fsMnt)
	if err == nil || !strings.Contains(out, "--storage-path is for the fscrypt backend") {
		t.Fatalf("init --storage gocryptfs --storage-path = %v %s; want a usage error", err, out)
	}
}

// TestStorageResize: storage show, a refused shrink, and a growth that
// keeps the data (online where the kernel lets pgshield resize a mounted
// ext4, else offline with PostgreSQL stopped for a moment).
// noRaces fails the test if the daemon of s reported a data race (the
// e2e binary is built with -race); registered before the server's stop.
func noRaces(t *testing.T, s *server) {
	t.Cleanup(func() {
		log, _ := os.ReadFile(filepath.Join(s.dataDir, "log", "pgshield.log"))
		if bytes.Contains(log, []byte("WARNING: DATA RACE")) {
			t.Errorf("the daemon of %s reported a data race:\n%s", s.name, log[max(0, len(log)-20000):])
		}
	})
}

func TestStorageResize(t *testing.T) {
	s := startedServer(t, "resize")
	noRaces(t, s)
	info := showStorage(t, s)
	if info.Backend != "fscrypt" || info.ImageBytes != 1<<30 || !strings.HasPrefix(info.LoopDevice, "/dev/loop") ||
		!info.Autogrow || !info.Resizable || info.SizeBytes == 0 || info.UsedBytes+info.FreeBytes != info.SizeBytes {
		t.Fatalf("storage show = %+v", info)
	}
	if out := mustCLI(t, s, "storage", "show"); !strings.Contains(out, "loop device") || !strings.Contains(out, "autogrow") {
		t.Fatalf("storage show table:\n%s", out)
	}
	dsn := s.dsn("user=" + admin + " sslmode=require")
	if out, err := psql(t, dsn, adminPassword, "-c", "CREATE TABLE kept AS SELECT g FROM generate_series(1, 100000) g"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	out, err := s.cli("storage", "resize", "--size", "512MiB")
	if code := exitCodeOf(err); code != 5 || !strings.Contains(out, "refusing to shrink") {
		t.Fatalf("resize to 512MiB = exit %d %s; want 5 and a refusal to shrink", code, out)
	}
	if out, err := s.cli("storage", "resize", "--size", "1GiB"); err == nil || !strings.Contains(out, "already") {
		t.Fatalf("resize to the same size = %v %s; want a refusal", err, out)
	}
	if out, err := s.cli("storage", "resize", "--size", "1000TiB"); err == nil || !strings.Contains(out, "outgrow") {
		t.Fatalf("resize beyond the host's free space = %v %s; want a refusal", err, out)
	}
	out = mustCLI(t, s, "storage", "resize", "--size", "1536MiB", "-o", "json")
	var res struct {
		Grow struct {
			Method   string  `json:"method"`
			Downtime float64 `json:"downtime_seconds"`
		} `json:"grow"`
		Storage storageInfo `json:"storage"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("resize -o json: %v\n%s", err, out)
	}
	want := "offline"
	if capSysResource(t) {
		want = "online"
	}
	if res.Grow.Method != want {
		t.Errorf("resize method = %q; want %q here", res.Grow.Method, want)
	}
	t.Logf("grew the volume %s, PostgreSQL down %.1f s", res.Grow.Method, res.Grow.Downtime)
	after := showStorage(t, s)
	if after.ImageBytes != 1536<<20 || after.SizeBytes < 1400<<20 || after.State != "Available" {
		t.Fatalf("after resize: %+v", after)
	}
	if out, err := psql(t, dsn, adminPassword, "-c", "SELECT count(*), sum(g) FROM kept"); err != nil || out != "100000|5000050000" {
		t.Fatalf("data after resize: %v %q", err, out)
	}
	if rs := storageEvents(t, s, "storage.resize"); len(rs) != 1 || rs[0]["outcome"] != "success" {
		t.Errorf("storage.resize audit records = %v; want one success", rs)
	}
	amcheck(t, s)
}

// capSysResource reports whether this process (and so the daemon it
// starts) may resize a mounted ext4.
func capSysResource(t *testing.T) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<unix.CAP_SYS_RESOURCE) != 0
		}
	}
	return false
}

// TestStorageAutogrow: a volume filled past 90% grows by itself when
// pgshield.storage_autogrow is on, and not when it is off.
func TestStorageAutogrow(t *testing.T) {
	t.Setenv("PGSHIELD_TEST_AUTOGROW_INTERVAL", "1s") // inherited by the daemon
	s := startedServer(t, "autogrow")
	noRaces(t, s)
	dsn := s.dsn("user=" + admin + " sslmode=require")
	if out, err := psql(t, dsn, adminPassword, "-c", "CREATE TABLE kept AS SELECT g FROM generate_series(1, 50000) g"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	mustCLI(t, s, "parameter", "set", "pgshield.storage_autogrow", "off")
	info := showStorage(t, s)
	// Fill to 95% with a file in the encrypted directory, as a growing
	// table would (fallocate: no need to write the bytes).
	filler := filepath.Join(s.dataDir, "volume", "data", "filler")
	fill := int64(info.FreeBytes) - int64(info.SizeBytes)/20
	if out, err := exec.Command("fallocate", "-l", strconv.FormatInt(fill, 10), filler).CombinedOutput(); err != nil {
		t.Fatalf("fallocate: %v %s", err, out)
	}
	t.Cleanup(func() { os.Remove(filler) })
	full := showStorage(t, s)
	if float64(full.FreeBytes) >= 0.10*float64(full.SizeBytes) {
		t.Fatalf("volume not past 90%%: %+v", full)
	}
	time.Sleep(4 * time.Second) // four checks
	if off := showStorage(t, s); off.ImageBytes != 1<<30 || off.LastGrow != nil {
		t.Fatalf("the volume grew with autogrow off: %+v", off)
	}
	mustCLI(t, s, "parameter", "set", "pgshield.storage_autogrow", "on")
	var grown storageInfo
	for deadline := time.Now().Add(2 * time.Minute); ; {
		grown = showStorage(t, s)
		if grown.LastGrow != nil && grown.State == "Available" && grown.FreeBytes > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the volume did not grow within 2 minutes: %+v", grown)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if !grown.LastGrow.Automatic || grown.ImageBytes != 2<<30 || grown.LastGrow.ToBytes != 2<<30 {
		t.Fatalf("after autogrow: %+v, %+v; want an automatic growth to 2 GiB (+25%%, at least 1 GiB)", grown, grown.LastGrow)
	}
	if float64(grown.FreeBytes) < 0.10*float64(grown.SizeBytes) {
		t.Fatalf("still under 10%% free after growing: %+v", grown)
	}
	t.Logf("autogrow: %d MiB -> %d MiB (%s), %d MiB free", grown.LastGrow.FromBytes>>20, grown.LastGrow.ToBytes>>20, grown.LastGrow.Method, grown.FreeBytes>>20)
	if out, err := psql(t, dsn, adminPassword, "-c", "SELECT count(*) FROM kept"); err != nil || out != "50000" {
		t.Fatalf("data after autogrow: %v %q", err, out)
	}
	if rs := storageEvents(t, s, "storage.autogrow"); len(rs) != 1 || rs[0]["outcome"] != "success" {
		t.Errorf("storage.autogrow audit records = %v; want one success", rs)
	}
	// Free space is back over 10%: no second growth.
	time.Sleep(3 * time.Second)
	if again := showStorage(t, s); again.ImageBytes != 2<<30 {
		t.Errorf("grew again: %+v", again)
	}
}
