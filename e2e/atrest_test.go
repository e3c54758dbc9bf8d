package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/jackc/pgx/v5"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// imageContains scans the allocated extents of a sparse file for needle.
func imageContains(t *testing.T, path string, needle []byte) bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	size := fi.Size()
	buf := make([]byte, 4<<20)
	var off int64
	for off < size {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			break // no more data
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			hole = size
		}
		for pos := data; pos < hole; {
			n, err := f.ReadAt(buf[:min(int64(len(buf)), hole-pos)], pos)
			if n > 0 && bytes.Contains(buf[:n], needle) {
				return true
			}
			if err != nil && !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			if n == 0 || pos+int64(n) >= hole {
				break
			}
			// Overlap chunks so a marker across a boundary is found.
			pos += int64(n) - int64(len(needle))
		}
		off = hole
	}
	return false
}

func TestDataAtRestIsEncrypted(t *testing.T) {
	s := startedServer(t, "atrest")
	marker := fmt.Sprintf("PGSHIELD-MARKER-%d", time.Now().UnixNano())
	writeMarkers(t, s, marker, strings.ReplaceAll(marker, "-", "_"))
	s.superSQL(t, "CHECKPOINT")
	if err := exec.Command("sync").Run(); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(s.dataDir, "storage", "volume.img")
	mnt := filepath.Join(s.dataDir, "volume")
	// The rows really are in the cluster, and in plaintext to PostgreSQL.
	if out, _ := psql(t, s.dsn("user="+admin+" sslmode=require"), adminPassword, "-c", "SELECT count(*) FROM secrets WHERE v LIKE 'PGSHIELD-MARKER-%'"); out != "20000" {
		t.Fatalf("marker rows = %q", out)
	}
	logHasMarker := false
	// PostgreSQL's log is part of the audit log, on the volume.
	_ = filepath.WalkDir(filepath.Join(mnt, "data", "audit"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := os.ReadFile(p)
			logHasMarker = logHasMarker || bytes.Contains(b, []byte(strings.ReplaceAll(marker, "-", "_")))
		}
		return nil
	})
	if !logHasMarker {
		t.Fatalf("the server log does not hold the marker; the test would prove nothing about logs")
	}
	if imageContains(t, img, []byte(marker)) || imageContains(t, img, []byte(strings.ReplaceAll(marker, "-", "_"))) {
		t.Fatalf("the raw volume image holds the marker in plaintext")
	}
	// Control: the same scan finds a marker written outside the encrypted
	// directory of the same image, so the scan can fail.
	control := []byte("CONTROL-" + marker)
	if err := os.WriteFile(filepath.Join(mnt, "plain-control"), control, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(filepath.Join(mnt, "plain-control")) })
	_ = exec.Command("sync").Run()
	if !imageContains(t, img, control) {
		t.Fatalf("control marker not found in the image: the scan is broken")
	}
}

func TestKeyLockAndUnlock(t *testing.T) {
	s := startedServer(t, "keylock")
	dsn := s.dsn("user=" + admin + " sslmode=require")
	if out, err := psql(t, dsn, adminPassword, "-c", "CREATE TABLE kept(v int)", "-c", "INSERT INTO kept VALUES (42)"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	out := mustCLI(t, s, "key", "show", "-o", "json")
	if !strings.Contains(out, `"system-managed"`) || !strings.Contains(out, `"Available"`) {
		t.Fatalf("key show = %s", out)
	}
	mustCLI(t, s, "key", "lock")
	// Every file under the data directory is unreadable, even to root.
	dataDir := filepath.Join(s.dataDir, "volume", "data")
	entries, err := os.ReadDir(dataDir)
	if err != nil || len(entries) == 0 {
		t.Fatalf("listing the locked data directory: %v %v", entries, err)
	}
	for _, e := range entries {
		if e.Name() == "pgdata" || e.Name() == "log" || e.Name() == "audit" {
			t.Fatalf("plaintext name %q visible while locked", e.Name())
		}
	}
	readable := 0
	_ = filepath.WalkDir(dataDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if _, rerr := os.ReadFile(p); rerr == nil {
			readable++
		} else if !errors.Is(rerr, syscall.ENOKEY) && !errors.Is(rerr, fs.ErrNotExist) {
			t.Errorf("reading %s while locked: %v; want ENOKEY", p, rerr)
		}
		return nil
	})
	if readable > 0 {
		t.Fatalf("%d files readable while locked", readable)
	}
	out, err = psql(t, dsn, adminPassword, "-c", "SELECT 1")
	if err == nil || !strings.Contains(out, "locked") {
		t.Fatalf("login while locked = %v %q; want a refusal saying the server is locked", err, out)
	}
	if st := s.status(t); st["state"] != "Locked" {
		t.Fatalf("status while locked = %v", st["state"])
	}
	mustCLI(t, s, "key", "unlock")
	if out, err := psql(t, dsn, adminPassword, "-c", "SELECT v FROM kept"); err != nil || out != "42" {
		t.Fatalf("after unlock: %v %q; want the row back", err, out)
	}
}

// writeMarkers puts marker into rows and WAL and logMarker into a server
// log line (a failing statement), and holds open a sort that spilled to
// pgsql_tmp, so a scan can look for them everywhere PostgreSQL writes. The
// returned session holds the sort; closing it (or the test ending) ends it.
func writeMarkers(t *testing.T, s *server, marker, logMarker string) *pgx.Conn {
	t.Helper()
	dsn := s.dsn("user=" + admin + " sslmode=require")
	if out, err := psql(t, dsn, adminPassword, "-c", "CREATE TABLE secrets(v text)",
		"-c", fmt.Sprintf("INSERT INTO secrets SELECT '%s ' || g FROM generate_series(1, 20000) g", marker)); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	_, _ = psql(t, dsn, adminPassword, "-c", fmt.Sprintf("SELECT no_such_column_%s FROM secrets", logMarker))
	// The cursor keeps the spilled sort's temporary files while the test scans.
	conn, err := pgxConnect(t, s.dsn("user="+admin+" password="+adminPassword+" sslmode=require"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	ctx := context.Background()
	for _, q := range []string{"SET work_mem = '64kB'", "BEGIN",
		"DECLARE c CURSOR FOR SELECT v || repeat('x', 50) FROM secrets ORDER BY 1 DESC", "FETCH 1 FROM c"} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if n := s.superSQL(t, "SELECT count(*) FROM pg_ls_dir('base/pgsql_tmp') f"); n == "0" || n == "" {
		t.Fatal("the sort did not spill to pgsql_tmp; the test would prove nothing about temporary files")
	}
	return conn
}
