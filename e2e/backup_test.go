package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgshield/pgshield/internal/testutil/localkms"
)

// backupEntry is one line of `backup list -o json`.
type backupEntry struct {
	Label    string    `json:"label"`
	Type     string    `json:"type"`
	Start    time.Time `json:"start"`
	Stop     time.Time `json:"stop"`
	Size     int64     `json:"size"`
	RepoSize int64     `json:"repo_size"`
	WALStart string    `json:"wal_start"`
	WALStop  string    `json:"wal_stop"`
}

func listBackups(t *testing.T, s *server) []backupEntry {
	t.Helper()
	out := mustCLI(t, s, "backup", "list", "-o", "json")
	var bs []backupEntry
	if err := json.Unmarshal([]byte(out), &bs); err != nil {
		t.Fatalf("backup list -o json: %v\n%s", err, out)
	}
	return bs
}

// createBackup runs `backup create` and returns the new label.
func createBackup(t *testing.T, s *server, args ...string) string {
	t.Helper()
	out := mustCLI(t, s, append([]string{"backup", "create", "-o", "json"}, args...)...)
	var job struct {
		Label, Type, State string
	}
	if err := json.Unmarshal([]byte(out), &job); err != nil || job.State != "succeeded" || job.Label == "" {
		t.Fatalf("backup create -o json = %v\n%s", err, out)
	}
	return job.Label
}

// restoredServer is a data directory made by `backup restore`, stopped
// (and its key removed) when the test ends.
func restoredServer(t *testing.T, src *server, name string, args ...string) (*server, string) {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	d := &server{name: name, dataDir: filepath.Join(baseDir, name), port: port}
	t.Cleanup(d.stop)
	out, err := src.cli(append([]string{"backup", "restore", "--target-data-dir", d.dataDir,
		"--listen", d.addr()}, args...)...)
	if err != nil {
		t.Fatalf("backup restore %v: %v\n%s", args, err, out)
	}
	return d, out
}

// walArchived forces a WAL switch and waits until the closed segment is
// in the repository.
func walArchived(t *testing.T, s *server) {
	t.Helper()
	seg := s.superSQL(t, "SELECT pg_walfile_name(pg_switch_wal())")
	for i := 0; i < 300; i++ {
		if last := s.superSQL(t, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver"); last >= seg {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("WAL segment %s not archived within 30 s: %s", seg,
		s.superSQL(t, "SELECT coalesce(last_failed_wal, '') || ' ' || failed_count FROM pg_stat_archiver"))
}

// repoScan reads every file under the repository: it reports the files
// holding needle and those that are not OpenSSL "Salted__" envelopes
// (pgBackRest's repository encryption).
func repoScan(t *testing.T, repo string, needle []byte) (found, plain []string) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(repo, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		n++
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if bytes.Contains(b, needle) {
			found = append(found, p)
		}
		if len(b) > 0 && !bytes.HasPrefix(b, []byte("Salted__")) {
			plain = append(plain, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 10 {
		t.Fatalf("the repository holds only %d files: the scan would prove nothing", n)
	}
	return found, plain
}

func pgAmcheck(t *testing.T, s *server) {
	t.Helper()
	amcheck := exec.Command("/usr/lib/postgresql/15/bin/pg_amcheck", "--install-missing", "--heapallindexed",
		"-h", filepath.Join(s.dataDir, "run", "pg"), "-U", "postgres", "-d", "postgres")
	if out, err := amcheck.CombinedOutput(); err != nil {
		t.Fatalf("pg_amcheck on %s: %v %s", s.name, err, out)
	}
}

func TestBackupPointInTimeRestore(t *testing.T) {
	s := startedServer(t, "bk")
	marker := fmt.Sprintf("PGSHIELD-BACKUP-MARKER-%d", time.Now().UnixNano())
	dsn := s.dsn("user=" + admin + " sslmode=require")
	sql := func(q string) string {
		t.Helper()
		out, err := psql(t, dsn, adminPassword, "-c", q)
		if err != nil {
			t.Fatalf("%s: %v %s", q, err, out)
		}
		return out
	}
	sql("CREATE TABLE rows(batch int, v text)")
	sql(fmt.Sprintf("INSERT INTO rows SELECT 1, '%s ' || g FROM generate_series(1, 5000) g", marker))

	// Bad input before any backup.
	if out, err := s.cli("backup", "restore", "--target-data-dir", filepath.Join(baseDir, "bk-none")); err == nil ||
		!strings.Contains(out, "no backup") {
		t.Fatalf("restore without a backup = %v %s; want a clear refusal", err, out)
	}
	if _, err := os.Stat(filepath.Join(baseDir, "bk-none")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a refused restore left its target directory behind: %v", err)
	}
	if out, err := s.cli("backup", "create", "--type", "weekly"); exitCode(err) != 2 || !strings.Contains(out, "full, diff or incr") {
		t.Fatalf("backup create --type weekly = %v %s; want exit 2", err, out)
	}

	// The first backup is full even when an incremental is asked for.
	full := createBackup(t, s, "--type", "incr")
	bs := listBackups(t, s)
	if len(bs) != 1 || bs[0].Label != full || bs[0].Type != "full" || bs[0].Size <= 0 || bs[0].WALStart == "" || bs[0].Stop.Before(bs[0].Start) {
		t.Fatalf("backup list after the first backup = %+v", bs)
	}
	if out := mustCLI(t, s, "backup", "list"); !strings.Contains(out, "LABEL") || !strings.Contains(out, full) {
		t.Fatalf("backup list (table) = %s", out)
	}
	// pgBackRest records the end of a backup in whole seconds.
	time.Sleep(1100 * time.Millisecond)
	sql(fmt.Sprintf("INSERT INTO rows SELECT 2, '%s ' || g FROM generate_series(1, 3000) g", marker))
	target := sql("SELECT clock_timestamp()")
	time.Sleep(200 * time.Millisecond)
	sql(fmt.Sprintf("INSERT INTO rows SELECT 3, '%s ' || g FROM generate_series(1, 1000) g", marker))
	walArchived(t, s)

	// More bad input, each refused without leaving anything behind.
	nonEmpty := filepath.Join(baseDir, "bk-nonempty")
	if err := os.MkdirAll(nonEmpty, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(nonEmpty, "keep"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--target-data-dir", nonEmpty}, 5, "not empty"},
		{[]string{"--target-data-dir", filepath.Join(baseDir, "bk-x"), "--backup", "20200101-000000F"}, 6, "no such backup"},
		{[]string{"--target-data-dir", filepath.Join(baseDir, "bk-x"), "--to-time", bs[0].Start.Add(-time.Hour).Format(time.RFC3339)}, 5, "before the end of the oldest backup"},
		{[]string{"--target-data-dir", filepath.Join(baseDir, "bk-x"), "--to-time", time.Now().Add(time.Hour).Format(time.RFC3339)}, 5, "in the future"},
		{[]string{"--target-data-dir", filepath.Join(baseDir, "bk-x"), "--to-time", "yesterday"}, 2, "invalid --to-time"},
		{[]string{"--target-data-dir", filepath.Join(s.dataDir, "inside")}, 2, "overlaps"},
	} {
		out, err := s.cli(append([]string{"backup", "restore"}, tc.args...)...)
		if exitCode(err) != tc.code || !strings.Contains(out, tc.want) {
			t.Errorf("backup restore %v = exit %d %q; want exit %d and %q", tc.args, exitCode(err), out, tc.code, tc.want)
		}
	}
	if _, err := os.Stat(filepath.Join(baseDir, "bk-x")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a refused restore left its target directory behind: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(nonEmpty, "keep")); string(b) != "x" {
		t.Errorf("a refused restore touched the non-empty directory")
	}

	// Point-in-time restore into a new server, started as a user would.
	d, out := restoredServer(t, s, "bk-pitr", "--to-time", target)
	if !strings.Contains(out, "pgshield up --data-dir "+d.dataDir) {
		t.Fatalf("restore output does not say how to start the server:\n%s", out)
	}
	if out, err := d.cli("up", "--timeout", "3m"); err != nil {
		log, _ := os.ReadFile(filepath.Join(d.dataDir, "log", "pgshield.log"))
		t.Fatalf("up on the restored server: %v\n%s\n%s", err, out, log)
	}
	ddsn := d.dsn("user=" + admin + " sslmode=verify-full")
	got, err := psql(t, ddsn, adminPassword, "-c", "SELECT batch || ':' || count(*) FROM rows GROUP BY batch ORDER BY batch")
	if err != nil || got != "1:5000\n2:3000" {
		t.Fatalf("restored rows up to %s = %v %q; want batches 1 and 2 only", target, err, got)
	}
	if id := d.superSQL(t, "SELECT pg_is_in_recovery()"); id != "false" {
		t.Fatalf("restored server still in recovery: %s", id)
	}
	// The new server is a server of its own: its own id and data key, its
	// own repository (archiving works, a backup can be taken), and the
	// recovery settings that named the source's repository are gone.
	var sc, dc struct {
		ServerID string `json:"server_id"`
	}
	b1, _ := os.ReadFile(filepath.Join(s.dataDir, "pgshield.json"))
	b2, _ := os.ReadFile(filepath.Join(d.dataDir, "pgshield.json"))
	_ = json.Unmarshal(b1, &sc)
	_ = json.Unmarshal(b2, &dc)
	if sc.ServerID == "" || sc.ServerID == dc.ServerID {
		t.Fatalf("server ids %q and %q: want a new one", sc.ServerID, dc.ServerID)
	}
	k1, _ := os.ReadFile(filepath.Join(s.dataDir, "secrets", "volume-key.json"))
	k2, _ := os.ReadFile(filepath.Join(d.dataDir, "secrets", "volume-key.json"))
	if len(k2) == 0 || bytes.Equal(k1, k2) {
		t.Fatalf("the restored server has no data key of its own")
	}
	if rc := d.superSQL(t, "SELECT coalesce(current_setting('restore_command', true), '')"); rc != "" {
		t.Fatalf("restore_command still set after recovery: %q", rc)
	}
	if _, err := os.Stat(filepath.Join(d.dataDir, "volume", "data", "backup", "restore.conf")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the restore configuration (source passphrase) is still on the new volume: %v", err)
	}
	if out, err := psql(t, ddsn, adminPassword, "-c", "INSERT INTO rows VALUES (4, 'after restore')"); err != nil {
		t.Fatalf("writing to the restored server: %v %s", err, out)
	}
	createBackup(t, d)
	walArchived(t, d)
	pgAmcheck(t, d)

	// The repository holds no plaintext: the marker is nowhere, and every
	// file is a pgBackRest-encrypted envelope. A control file planted in
	// the same tree proves the scan finds what is there.
	repo := filepath.Join(s.dataDir, "backups")
	fi, err := os.Stat(repo)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("repository %s: %v %v; want mode 0700", repo, fi.Mode(), err)
	}
	if found, plain := repoScan(t, repo, []byte(marker)); len(found) > 0 || len(plain) > 0 {
		t.Fatalf("repository holds the marker in %v and unencrypted files %v", found, plain)
	}
	control := filepath.Join(repo, "backup", "pgshield", "control-plaintext")
	if err := os.WriteFile(control, []byte("control "+marker), 0o600); err != nil {
		t.Fatal(err)
	}
	found, plain := repoScan(t, repo, []byte(marker))
	os.Remove(control)
	if len(found) != 1 || found[0] != control || len(plain) != 1 {
		t.Fatalf("the scan missed the planted control file: found %v, plain %v", found, plain)
	}

	// The passphrase: only on the volume (0600, postgres), never in the
	// configuration, logs or audit log outside it.
	conf := filepath.Join(s.dataDir, "volume", "data", "backup", "pgbackrest.conf")
	fi, err = os.Stat(conf)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Sys().(*syscall.Stat_t).Uid == 0 {
		t.Fatalf("%s: %v %v; want 0600 owned by postgres", conf, fi.Mode(), err)
	}
	cb, _ := os.ReadFile(conf)
	m := regexp.MustCompile(`(?m)^repo1-cipher-pass=(\S{32,})$`).FindSubmatch(cb)
	if m == nil {
		t.Fatalf("no passphrase in %s", conf)
	}
	pass := m[1]
	for _, dir := range []string{filepath.Join(s.dataDir, "log"), filepath.Join(s.dataDir, "audit"),
		filepath.Join(s.dataDir, "secrets"), filepath.Join(s.dataDir, "pgshield.json"), repo} {
		_ = filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
			if err == nil && de.Type().IsRegular() {
				if b, _ := os.ReadFile(p); bytes.Contains(b, pass) {
					t.Errorf("the repository passphrase is in clear in %s", p)
				}
			}
			return nil
		})
	}
	if found, _ := repoScan(t, repo, pass); len(found) > 0 {
		t.Errorf("the passphrase is in clear in the repository: %v", found)
	}

	// Backups and listing need the daemon.
	mustCLI(t, d, "down")
	if _, err := d.cli("backup", "list"); exitCode(err) != 4 {
		t.Fatalf("backup list with the daemon down = exit %d; want 4", exitCode(err))
	}
	if out, err := d.cli("backup", "create"); exitCode(err) != 4 || !strings.Contains(out, "not running") {
		t.Fatalf("backup create with the daemon down = exit %d %q; want 4", exitCode(err), out)
	}

	// A restore needs neither the source's daemon nor its volume (locked
	// and detached once it is down): the latest restore reaches every
	// archived commit.
	mustCLI(t, s, "down")
	o, out := restoredServer(t, s, "bk-offline")
	if !strings.Contains(out, "not running") {
		t.Fatalf("restore from a stopped source does not say so:\n%s", out)
	}
	if out, err := o.cli("up", "--timeout", "3m"); err != nil {
		t.Fatalf("up on the server restored offline: %v\n%s", err, out)
	}
	got, err = psql(t, o.dsn("user="+admin+" sslmode=require"), adminPassword, "-c", "SELECT batch || ':' || count(*) FROM rows GROUP BY batch ORDER BY batch")
	if err != nil || got != "1:5000\n2:3000\n3:1000" {
		t.Fatalf("rows restored from a stopped source = %v %q; want all three batches", err, got)
	}
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err == nil {
		return 0
	}
	return -1
}

// TestBackupCustomerManagedKey: a backup taken before the data key moved to
// another KMS key (and the old key was disabled) still restores; a restored
// server whose key is disabled starts Inaccessible and comes back when the
// key is enabled and revalidated.
func TestBackupCustomerManagedKey(t *testing.T) {
	kms := localkms.Start(t)
	kms.SetEnv(t)
	key1, _ := kms.CreateKey(t)
	s := startedServer(t, "bkcmk", "--key-uri", kms.KeyURI(key1))
	dsn := s.dsn("user=" + admin + " sslmode=require")
	if out, err := psql(t, dsn, adminPassword, "-c", "CREATE TABLE kept(v int)", "-c", "INSERT INTO kept SELECT generate_series(1, 100)"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	label := createBackup(t, s)
	w1, _ := os.ReadFile(filepath.Join(s.dataDir, "secrets", "backup-key.json"))

	// Rotation, then a move to a new key; the first key is then disabled.
	mustCLI(t, s, "key", "rotate")
	key2, _ := kms.CreateKey(t)
	mustCLI(t, s, "key", "set", "--key-uri", kms.KeyURI(key2))
	kms.DisableKey(t, key1)
	w2, _ := os.ReadFile(filepath.Join(s.dataDir, "secrets", "backup-key.json"))
	if bytes.Equal(w1, w2) || !bytes.Contains(w2, []byte(key2)) {
		t.Fatalf("the backup passphrase was not re-wrapped with the new key:\n%s", w2)
	}
	// The pre-rotation backup restores, by its label, with only the new key.
	d, _ := restoredServer(t, s, "bkcmk-restored", "--backup", label)
	var dc struct {
		KeyURI string `json:"key_uri"`
	}
	b, _ := os.ReadFile(filepath.Join(d.dataDir, "pgshield.json"))
	if err := json.Unmarshal(b, &dc); err != nil || dc.KeyURI != kms.KeyURI(key2) {
		t.Fatalf("restored server's key URI = %q; want the source's customer-managed key", dc.KeyURI)
	}

	// The key is disabled before the restored server first starts: it
	// starts Inaccessible, refusing sessions with a clear message.
	kms.DisableKey(t, key2)
	out, err := d.cli("up", "--timeout", "2m")
	if err == nil || !strings.Contains(out, "Inaccessible") {
		log, _ := os.ReadFile(filepath.Join(d.dataDir, "log", "pgshield.log"))
		t.Fatalf("up with the key disabled = %v %s; want Inaccessible\n%s", err, out, log)
	}
	if st := d.status(t)["state"]; st != "Inaccessible" {
		t.Fatalf("restored server state = %v; want Inaccessible", st)
	}
	ddsn := d.dsn("user=" + admin + " sslmode=require")
	if out, err := psql(t, ddsn, adminPassword, "-c", "SELECT 1"); err == nil || !strings.Contains(out, "customer-managed key is unavailable") {
		t.Fatalf("login to the Inaccessible restored server = %v %q", err, out)
	}
	kms.EnableKey(t, key2)
	mustCLI(t, d, "key", "revalidate")
	waitState(t, d, "Available", time.Minute)
	if got, err := psql(t, ddsn, adminPassword, "-c", "SELECT count(*) FROM kept"); err != nil || got != "100" {
		t.Fatalf("restored rows = %v %q; want 100", err, got)
	}
	pgAmcheck(t, d)
}
