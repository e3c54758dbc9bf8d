package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDelete deletes a server as `az postgres flexible-server delete`
// would: without --yes nothing happens; with it the server stops, its
// volume, data key, loop device, mount and data directory go, the last
// audit record (forwarded to syslog, as the log on the volume goes with
// it) says so, and a copy of the image taken before holds nothing
// readable. Backups stay until --delete-backups, with the key that
// unwraps their passphrase.
func TestDelete(t *testing.T) {
	s := startedServer(t, "delete")
	const marker = "pgshield-delete-marker-7f3a9c"
	if out, err := psql(t, s.dsn("user="+admin+" sslmode=require"), adminPassword,
		"-c", "CREATE TABLE secret_rows(v text)", "-c", "INSERT INTO secret_rows SELECT '"+marker+"' FROM generate_series(1, 1000)"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	s.superSQL(t, "CHECKPOINT")
	cfg := readConfig(t, s)
	img := filepath.Join(s.dataDir, "storage", "volume.img")
	keyFile := filepath.Join("/etc/pgshield/keys", cfg.ServerID+".key")

	// Control: the rows are on the volume in clear, where the grep finds them.
	if out, _ := exec.Command("grep", "-rlaF", marker, filepath.Join(s.dataDir, "volume", "data", "pgdata", "base")).Output(); len(out) == 0 {
		t.Fatalf("control: %q not found in the mounted volume's files", marker)
	}
	// The attacker's copy, taken while the server runs.
	cp := filepath.Join(baseDir, "delete-copy.img")
	if out, err := exec.Command("cp", "--sparse=always", img, cp).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	defer os.Remove(cp)
	if grepFile(t, cp, marker) {
		t.Fatalf("%q is in the raw image in clear", marker)
	}

	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	mustCLI(t, s, "parameter", "set", "pgshield.audit_syslog", "udp://"+pc.LocalAddr().String())

	// Without --yes: exit 2, the list of what would go, nothing gone.
	out, err := s.cli("delete")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(out, "This would delete") ||
		!strings.Contains(out, img) || !strings.Contains(out, "add --yes") {
		t.Fatalf("delete without --yes = %v\n%s", err, out)
	}
	if st := s.status(t); st["state"] != "Available" {
		t.Fatalf("after a refused delete, state = %v", st["state"])
	}

	out = mustCLI(t, s, "delete", "--yes")
	if !strings.Contains(out, "Deleted the server") || !strings.Contains(out, "not the backups in "+filepath.Join(s.dataDir, "backups")) {
		t.Errorf("delete --yes said:\n%s", out)
	}
	// The deletion is the last record the receiver got.
	var last string
	buf := make([]byte, 65536)
	for {
		_ = pc.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			break
		}
		last = string(buf[:n])
	}
	if !strings.Contains(last, " server.deleted ") || !strings.Contains(last, `"server_id":"`+cfg.ServerID+`"`) {
		t.Errorf("last audit record over syslog = %q; want server.deleted", last)
	}

	// Gone: the daemon, PostgreSQL, the image, the data key, the loop
	// device, the mount. Kept: the repository and its key.
	if out, err := s.cli("status"); err == nil && !strings.Contains(out, "Stopped") {
		t.Errorf("status after delete: %s", out)
	}
	for _, p := range []string{img, filepath.Join(s.dataDir, "secrets", "volume-key.json"), filepath.Join(s.dataDir, "volume"), filepath.Join(s.dataDir, "tls")} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after delete: %s is left (%v)", p, err)
		}
	}
	if b, _ := exec.Command("losetup", "-a").Output(); bytes.Contains(b, []byte(s.dataDir)) {
		t.Errorf("after delete, a loop device is left: %s", b)
	}
	if b, _ := os.ReadFile("/proc/self/mountinfo"); bytes.Contains(b, []byte(s.dataDir)) {
		t.Errorf("after delete, a mount is left under %s", s.dataDir)
	}
	for _, p := range []string{filepath.Join(s.dataDir, "backups"), keyFile, filepath.Join(s.dataDir, "pgshield.json")} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("kept %s: %v", p, err)
		}
	}
	// The copy: its key existed only wrapped in volume-key.json, now gone;
	// its blocks hold no row in clear.
	if grepFile(t, cp, marker) {
		t.Errorf("%q readable in the copy of the image after delete", marker)
	}

	out = mustCLI(t, s, "delete", "--yes", "--delete-backups")
	if !strings.Contains(out, "the system-managed key-encryption key "+keyFile) {
		t.Errorf("delete --delete-backups said:\n%s", out)
	}
	for _, p := range []string{s.dataDir, keyFile} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after delete --delete-backups: %s is left (%v)", p, err)
		}
	}
	// Once deleted, there is no server: exit 3.
	if _, err := s.cli("delete", "--yes"); !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Errorf("delete of a deleted server = %v; want exit code 3", err)
	}
}

type serverConfig struct {
	ServerID string `json:"server_id"`
}

func readConfig(t *testing.T, s *server) serverConfig {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.dataDir, "pgshield.json"))
	if err != nil {
		t.Fatal(err)
	}
	var c serverConfig
	if err := json.Unmarshal(b, &c); err != nil || c.ServerID == "" {
		t.Fatalf("pgshield.json: %v", err)
	}
	return c
}

// grepFile reports whether s occurs in the file at path (binary, sparse).
func grepFile(t *testing.T, path, s string) bool {
	t.Helper()
	err := exec.Command("grep", "-qaF", s, path).Run()
	var ee *exec.ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 1) {
		t.Fatalf("grep %s: %v", path, err)
	}
	return err == nil
}
