package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sys/unix"
)

// Disk full: the volume filling up under a committing client (the ledger
// of ledger_test.go) and a bulk writer, with autogrow off, and the host
// filesystem under the volume's image filling up. PostgreSQL must say so
// (53100), nothing acknowledged may be lost or torn, pg_amcheck must stay
// clean, pgshield must say which filesystem is full, and writes continue
// without a restart once there is room again.

// fullInfo is the part of `storage show -o json` about fullness.
type fullInfo struct {
	Full       string `json:"full"`
	FullDetail string `json:"full_detail"`
	ImageBytes int64  `json:"image_bytes"`
	FreeBytes  uint64 `json:"free_bytes"`
	State      string `json:"state"`
}

func showFull(t *testing.T, s *server) (fullInfo, error) {
	t.Helper()
	out, err := s.cli("storage", "show", "-o", "json")
	if err != nil {
		return fullInfo{}, fmt.Errorf("storage show: %v: %s", err, out)
	}
	var fi fullInfo
	if err := json.Unmarshal([]byte(out), &fi); err != nil {
		return fullInfo{}, fmt.Errorf("storage show -o json: %v: %s", err, out)
	}
	return fi, nil
}

// waitFull polls storage show until its full field is want (bounded).
func waitFull(t *testing.T, s *server, want string, d time.Duration) fullInfo {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		fi, err := showFull(t, s)
		if err == nil && fi.Full == want {
			return fi
		}
		if time.Now().After(deadline) {
			t.Fatalf("storage show: full = %q (%v) after %s; want %q", fi.Full, err, d, want)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

const bulkSchema = `
CREATE TABLE bulk (id bigserial PRIMARY KEY, b text NOT NULL);
-- Out of line and uncompressed: every row takes its 8 KB.
ALTER TABLE bulk ALTER b SET STORAGE EXTERNAL;
-- Writes no WAL: it fills the volume with heap pages alone, so the first
-- failure is the heap's (53100), not a WAL segment's (PANIC).
CREATE UNLOGGED TABLE bulk_unlogged (id bigserial PRIMARY KEY, b text NOT NULL);
ALTER TABLE bulk_unlogged ALTER b SET STORAGE EXTERNAL;`

// fillUntilError inserts about 4 MB per statement until PostgreSQL refuses
// (or the connection ends), at most 400 statements or 3 minutes; it
// returns the first error.
func fillUntilError(t *testing.T, dsn, table string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("bulk writer connect: %v", err)
	}
	defer conn.Close(context.Background())
	for i := 0; i < 400; i++ {
		if _, err := conn.Exec(ctx, `INSERT INTO `+table+` (b) SELECT repeat(md5(g::text), 250) FROM generate_series(1, 500) g`); err != nil {
			return err
		}
	}
	t.Fatal("the volume never filled: 400 statements of 4 MB went in")
	return nil
}

// fallocateLeaving makes path take all but leave bytes of the free space
// of the filesystem that holds it.
func fallocateLeaving(t *testing.T, path string, leave int64) {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(filepath.Dir(path), &st); err != nil {
		t.Fatal(err)
	}
	n := int64(st.Bavail)*st.Bsize - leave
	if n <= 0 {
		return
	}
	if out, err := exec.Command("fallocate", "-l", strconv.FormatInt(n, 10), path).CombinedOutput(); err != nil {
		t.Fatalf("fallocate %s: %v %s", path, err, out)
	}
}

// waitAcked waits until the ledger writer has acknowledged a commit after
// since (bounded), and returns when.
func waitAcked(t *testing.T, w *ledgerWriter, since time.Time, d time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		if at, n := w.firstAckAfter(since); n > 0 {
			return at
		}
		if time.Now().After(deadline) {
			w.mu.Lock()
			last := w.lastErr
			w.mu.Unlock()
			t.Fatalf("no commit acknowledged within %s (last error: %v)", d, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// checkpointWhileFull asks for a checkpoint and a WAL switch as the
// superuser while the volume is full: what can PANIC PostgreSQL. Whatever
// happens is logged; recovery is checked by the caller.
func checkpointWhileFull(t *testing.T, s *server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=5432 user=postgres dbname=postgres sslmode=disable connect_timeout=5",
		filepath.Join(s.dataDir, "run", "pg")))
	if err != nil {
		t.Logf("checkpoint while full: connect: %v", err)
		return
	}
	defer conn.Close(context.Background())
	for _, q := range []string{`SELECT pg_catalog.pg_switch_wal()`, `CHECKPOINT`} {
		_, err := conn.Exec(ctx, q)
		t.Logf("while full: %s: %v", q, err)
	}
}

// resizeTo grows the volume and waits for the ledger to commit again; it
// logs how long that took from the moment the resize was asked for.
func resizeTo(t *testing.T, s *server, w *ledgerWriter, size, when string) {
	t.Helper()
	asked := time.Now()
	out := mustCLI(t, s, "storage", "resize", "--size", size, "-o", "json")
	var res struct {
		Grow struct {
			Method   string  `json:"method"`
			Downtime float64 `json:"downtime_seconds"`
		} `json:"grow"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("resize -o json: %v %s", err, out)
	}
	at := waitAcked(t, w, asked, 2*time.Minute)
	t.Logf("%s: resize to %s (%s, PostgreSQL down %.1f s); first commit acknowledged %.1f s after asking",
		when, size, res.Grow.Method, res.Grow.Downtime, at.Sub(asked).Seconds())
	waitFull(t, s, "", 20*time.Second)
}

// TestDiskFullVolume: autogrow off, the volume fills under load, twice:
// first with heap pages alone (an unlogged table: PostgreSQL refuses the
// statement with 53100), then with WAL-logged writes, a WAL switch and a
// checkpoint (a WAL segment that cannot be made PANICs PostgreSQL). Each
// time a resize brings writes back without a restart of pgshield.
// pgshield.audit_fail_closed is on, as a server that must audit would
// run: the audit log is on the same volume.
func TestDiskFullVolume(t *testing.T) {
	s := startedServer(t, "diskfull", "--storage-size", "320MiB")
	noRaces(t, s)
	t.Cleanup(func() { s.stop(); killStrays(t, s) })
	mustCLI(t, s, "parameter", "set", "pgshield.storage_autogrow", "off")
	mustCLI(t, s, "parameter", "set", "pgshield.audit_fail_closed", "on")
	dsn := s.dsn("user=" + admin + " password=" + adminPassword + " sslmode=verify-full")
	if out, err := psql(t, s.dsn("user="+admin+" sslmode=verify-full"), adminPassword, "-c", ledgerSchema+bulkSchema); err != nil {
		t.Fatalf("schema: %v %s", err, out)
	}
	w := &ledgerWriter{dsn: dsn, acked: map[int64]time.Time{}}
	ctx, cancel := context.WithCancel(context.Background())
	writerDone := make(chan struct{})
	go func() { defer close(writerDone); w.run(ctx) }()
	defer func() { cancel(); <-writerDone }()
	waitAcked(t, w, time.Time{}, 30*time.Second)

	// 1. Heap pages: most of the room goes to a file (fast), the unlogged
	// table takes the rest.
	filler := filepath.Join(s.dataDir, "volume", "data", "filler")
	fallocateLeaving(t, filler, 48<<20)
	err := fillUntilError(t, dsn, "bulk_unlogged")
	// PostgreSQL says "No space left on device", or, for a block written
	// in part, "wrote only 4096 of 8192 bytes" with the hint to check free
	// disk space: 53100 either way.
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "53100" || !strings.HasPrefix(pe.Message, "could not extend file") ||
		(!strings.Contains(pe.Message, "No space left on device") && !strings.Contains(pe.Hint, "free disk space")) {
		t.Fatalf("bulk writer error = %v (SQLSTATE %s); want 53100 could not extend file ... No space left on device", err, sqlState(err))
	}
	t.Logf("heap full: %v", err)
	fi := waitFull(t, s, "volume", 20*time.Second)
	if !strings.Contains(fi.FullDetail, "storage resize") {
		t.Errorf("full_detail = %q; want it to say how to grow", fi.FullDetail)
	}
	// The ledger keeps trying against the full volume; pgshield's check
	// (every 5 s) records it.
	time.Sleep(6 * time.Second)
	resizeTo(t, s, w, "480MiB", "heap full")
	// A crash resets unlogged tables: emptied now, so that the PANIC below
	// frees no room by itself.
	if out, err := psql(t, s.dsn("user="+admin+" sslmode=verify-full"), adminPassword, "-c", `TRUNCATE bulk_unlogged`); err != nil {
		t.Fatalf("truncate: %v %s", err, out)
	}

	// 2. WAL: fill again, with logged writes, then a WAL switch and a
	// checkpoint.
	filler2 := filepath.Join(s.dataDir, "volume", "data", "filler2")
	fallocateLeaving(t, filler2, 40<<20)
	err = fillUntilError(t, dsn, "bulk")
	t.Logf("logged writes while full stopped with: %v (SQLSTATE %s)", err, sqlState(err))
	checkpointWhileFull(t, s)
	waitFull(t, s, "volume", 20*time.Second)
	time.Sleep(6 * time.Second)
	resizeTo(t, s, w, "640MiB", "WAL full")

	if _, err := psql(t, s.dsn("user="+admin+" sslmode=verify-full"), adminPassword, "-c", `INSERT INTO bulk (b) VALUES ('after')`); err != nil {
		t.Errorf("a write after the resize: %v", err)
	}
	cancel()
	<-writerDone
	acked, attempts := w.snapshot()
	t.Logf("ledger: %d commits acknowledged of %d attempted", len(acked), attempts)
	if lost := verifyLedger(t, s, w, "after the resizes"); lost != 0 {
		t.Errorf("%d acknowledged commits lost", lost)
	}

	// The audit log: the full volume, named, and its end; PostgreSQL's
	// own report. While the log could not be written, records waited in
	// memory and an audit.gap says when.
	var full int
	for _, r := range auditRecords(t, s, "--event", "storage.full") {
		if fields(r)["filesystem"] == "volume" && r["outcome"] == "failure" {
			full++
		}
	}
	// One per filling, unless a crash emptied the unlogged table (a reset
	// frees its pages) before the 5 s check saw the first one.
	cleared := len(auditRecords(t, s, "--event", "storage.full_cleared"))
	if full < 1 || cleared < 1 {
		t.Errorf("%d storage.full records naming the volume, %d storage.full_cleared; want at least one each", full, cleared)
	}
	t.Logf("storage.full records naming the volume: %d, storage.full_cleared: %d", full, cleared)
	pgLog, _ := json.Marshal(auditRecords(t, s, "--event", "postgres.log"))
	if !strings.Contains(string(pgLog), "No space left on device") {
		t.Errorf("PostgreSQL's ENOSPC is not in the audit log")
	}
	panicked := strings.Contains(string(pgLog), `"PANIC"`)
	gaps := auditRecords(t, s, "--event", "audit.gap")
	t.Logf("PostgreSQL PANICked while full: %v; audit.gap records: %d", panicked, len(gaps))
	if out, err := s.cli("audit", "verify"); err != nil {
		t.Errorf("audit verify after the outages: %v %s", err, out)
	}
	_ = os.Remove(filler)
	_ = os.Remove(filler2)
}

// TestDiskFullHost: the filesystem holding the volume's sparse image fills
// up (here a small ext4 of its own holding the whole data directory).
// pgshield names it, not the volume, before PostgreSQL notices, and the
// server comes back once space is freed there.
func TestDiskFullHost(t *testing.T) {
	mnt := makeExt4(t, "900M", false)
	// postgres must traverse to its socket and data: t.TempDir is 0700.
	for d := mnt; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	s := &server{name: "hostfull", dataDir: filepath.Join(mnt, "hostfull"), port: port}
	t.Cleanup(func() { s.stop(); killStrays(t, s) }) // before makeExt4's unmount
	noRaces(t, s)
	t.Cleanup(func() {
		if t.Failed() { // the data directory goes with the filesystem
			log, _ := os.ReadFile(filepath.Join(s.dataDir, "log", "pgshield.log"))
			t.Logf("daemon log:\n%s", log[max(0, len(log)-20000):])
		}
	})
	pw := filepath.Join(baseDir, "hostfull.pw")
	if err := os.WriteFile(pw, []byte(adminPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := s.cli("init", "--listen", s.addr(), "--admin-password-file", pw, "--storage-size", "512MiB"); err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	if out, err := s.cli("up", "--timeout", "2m"); err != nil {
		log, _ := os.ReadFile(filepath.Join(s.dataDir, "log", "pgshield.log"))
		t.Fatalf("up: %v\n%s\n%s", err, out, log)
	}
	registerServerSecrets(s)
	mustCLI(t, s, "parameter", "set", "pgshield.storage_autogrow", "off")
	dsn := s.dsn("user=" + admin + " password=" + adminPassword + " sslmode=verify-full")
	if out, err := psql(t, s.dsn("user="+admin+" sslmode=verify-full"), adminPassword, "-c", ledgerSchema+bulkSchema); err != nil {
		t.Fatalf("schema: %v %s", err, out)
	}
	w := &ledgerWriter{dsn: dsn, acked: map[int64]time.Time{}}
	ctx, cancel := context.WithCancel(context.Background())
	writerDone := make(chan struct{})
	go func() { defer close(writerDone); w.run(ctx) }()
	defer func() { cancel(); <-writerDone }()
	waitAcked(t, w, time.Time{}, 30*time.Second)

	// The host filesystem fills (another program's file), leaving 8 MiB:
	// the volume itself still has most of its 512 MiB free.
	hostFiller := filepath.Join(mnt, "other-program.dat")
	fallocateLeaving(t, hostFiller, 8<<20)
	fi := waitFull(t, s, "host_filesystem", 20*time.Second)
	if !strings.Contains(fi.FullDetail, filepath.Join(s.dataDir, "storage")) || fi.FreeBytes < 256<<20 {
		t.Errorf("storage show = %+v; want the host filesystem of %s/storage named while the volume has room", fi, s.dataDir)
	}
	err = fillUntilError(t, dsn, "bulk")
	t.Logf("the bulk writer stopped with: %v (SQLSTATE %s)", err, sqlState(err))
	time.Sleep(6 * time.Second) // a check or two of the volume while the host is full
	ackedBefore, _ := w.snapshot()

	// Room again where it was missing.
	if err := os.Remove(hostFiller); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	at := waitAcked(t, w, freed, 2*time.Minute)
	t.Logf("first commit acknowledged %.1f s after the host filesystem had room again", at.Sub(freed).Seconds())
	waitFull(t, s, "", 20*time.Second)

	cancel()
	<-writerDone
	acked, attempts := w.snapshot()
	t.Logf("ledger: %d commits acknowledged of %d attempted (%d before space was freed)", len(acked), attempts, len(ackedBefore))
	if lost := verifyLedger(t, s, w, "after freeing the host filesystem"); lost != 0 {
		t.Errorf("%d acknowledged commits lost", lost)
	}
	var sawHost bool
	for _, r := range auditRecords(t, s, "--event", "storage.full") {
		if fields(r)["filesystem"] == "host_filesystem" {
			sawHost = true
		}
	}
	if !sawHost {
		t.Errorf("no storage.full record naming the host filesystem")
	}
	// If the volume's ext4 gave up (a metadata write into the image
	// failed; it depends on where the failed writes fell), pgshield
	// repaired it: say whether it did.
	t.Logf("volume filesystem repairs: %d", len(auditRecords(t, s, "--event", "storage.repair")))
}
