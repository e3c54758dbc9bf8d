// Package e2e runs pgshield end to end: the real binary, a real PostgreSQL 15
// from Debian, real psql/libpq and pgx clients. It needs root and is enabled
// by PGSHIELD_E2E=1, which the README's test command (scripts/test.sh) sets.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

var (
	pgshieldBin string // the pgshield binary under test
	baseDir     string // parent of every data directory; postgres may traverse it
	shared      *server
)

const adminPassword = "Adm1n-Pass-e2e!"

func TestMain(m *testing.M) {
	if os.Getenv("PGSHIELD_E2E") != "1" {
		fmt.Println("e2e: skipped (set PGSHIELD_E2E=1; scripts/test.sh does)")
		os.Exit(0)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2e: must run as root")
		os.Exit(1)
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	baseDir, err = os.MkdirTemp("", "pgshield-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(baseDir)
	_ = os.Chmod(baseDir, 0o711)
	pgshieldBin = filepath.Join(baseDir, "pgshield")
	_, file, _, _ := runtime.Caller(0)
	build := exec.Command("go", "build", "-race", "-o", pgshieldBin, "./cmd/pgshield")
	build.Dir = filepath.Dir(filepath.Dir(file))
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: build failed: %v\n%s", err, out)
		return 1
	}
	shared, err = newServer("shared")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		if shared != nil {
			shared.stop()
		}
		return 1
	}
	code := m.Run()
	shared.stop()
	deleteLeftovers()
	return code
}

// deleteLeftovers runs `pgshield delete --yes --delete-backups` on every
// server still under baseDir (after the secrets sweep has read them), so
// that no key file, image, loop device or mount outlives the suite, even
// of a server a test made without stop().
func deleteLeftovers() {
	ents, _ := os.ReadDir(baseDir)
	for _, e := range ents {
		dir := filepath.Join(baseDir, e.Name())
		if _, err := os.Stat(filepath.Join(dir, "pgshield.json")); err != nil {
			continue
		}
		s := &server{dataDir: dir}
		if out, err := s.cli("delete", "--yes", "--delete-backups"); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: delete %s: %v\n%s", dir, err, out)
		}
	}
}

// server is one pgshield data directory with its daemon.
type server struct {
	name    string
	dataDir string
	port    int
	// env is added to every pgshield command's environment (and so the
	// daemon's), e.g. GODEBUG=fips140=on.
	env []string
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// newServer inits and starts a server in the background, as a user would.
func newServer(name string, initArgs ...string) (*server, error) {
	return newServerEnv(name, nil, initArgs...)
}

// newServerEnv is newServer with env added to pgshield's environment.
func newServerEnv(name string, env []string, initArgs ...string) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &server{name: name, dataDir: filepath.Join(baseDir, name), port: port, env: env}
	pw := filepath.Join(baseDir, name+".pw")
	if err := os.WriteFile(pw, []byte(adminPassword+"\n"), 0o600); err != nil {
		return nil, err
	}
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	var rest []string
	for i := 0; i < len(initArgs); i++ {
		if initArgs[i] == "--listen" && i+1 < len(initArgs) {
			// ":0" asks for the free port chosen above.
			listen = strings.TrimSuffix(initArgs[i+1], ":0") + fmt.Sprintf(":%d", port)
			i++
			continue
		}
		rest = append(rest, initArgs[i])
	}
	args := append([]string{"init", "--listen", listen, "--admin-password-file", pw, "--storage-size", "1GiB"}, rest...)
	if out, err := s.cli(args...); err != nil {
		return nil, fmt.Errorf("init: %v\n%s", err, out)
	}
	if out, err := s.cli("up", "--timeout", "2m"); err != nil {
		log, _ := os.ReadFile(filepath.Join(s.dataDir, "log", "pgshield.log"))
		return s, fmt.Errorf("up: %v\n%s\n%s", err, out, log)
	}
	registerServerSecrets(s) // for the secrets sweep (secrets_test.go)
	return s, nil
}

// cli runs the pgshield binary against this server's data directory.
func (s *server) cli(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, pgshieldBin, append(args, "--data-dir", s.dataDir)...)
	if len(s.env) > 0 {
		cmd.Env = append(os.Environ(), s.env...)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// stop takes the daemon down and makes sure nothing it started survives.
func (s *server) stop() {
	_, _ = s.cli("down", "--timeout", "60s")
	if b, err := os.ReadFile(filepath.Join(s.dataDir, "run", "pgshield.pid")); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if b, err := os.ReadFile(filepath.Join(s.dataDir, "volume", "data", "pgdata", "postmaster.pid")); err == nil {
		if pid, err := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0]); err == nil && pid > 1 {
			if syscall.Kill(pid, 0) == nil {
				_ = syscall.Kill(pid, syscall.SIGQUIT)
				time.Sleep(time.Second)
			}
		}
	}
	// A daemon that died leaves its volume mounted and attached.
	mnt := filepath.Join(s.dataDir, "volume")
	if out, _ := exec.Command("findmnt", "-n", mnt).Output(); len(out) > 0 {
		_ = exec.Command("umount", "-l", mnt).Run()
	}
	// With gocryptfs, its FUSE process too (it exits once unmounted; one
	// that hangs is killed).
	killFUSE(filepath.Join(s.dataDir, "storage", "gocryptfs"))
	img := filepath.Join(s.dataDir, "storage", "volume.img")
	if out, err := exec.Command("losetup", "--noheadings", "--output", "NAME", "--associated", img).Output(); err == nil {
		for _, dev := range strings.Fields(string(out)) {
			_ = exec.Command("losetup", "-d", dev).Run()
		}
	}
	// The system-managed key-encryption key lives outside the data directory.
	if b, err := os.ReadFile(filepath.Join(s.dataDir, "pgshield.json")); err == nil {
		var c struct {
			ServerID string `json:"server_id"`
		}
		if json.Unmarshal(b, &c) == nil && c.ServerID != "" {
			_ = os.Remove(filepath.Join("/etc/pgshield/keys", c.ServerID+".key"))
			_ = os.Remove(filepath.Join("/etc/pgshield/keys", c.ServerID+".owner"))
			// Kernel state a daemon that died could not remove.
			for _, table := range []string{"pgshield_" + c.ServerID, "pgshield_out_" + c.ServerID} {
				_ = exec.Command("nft", "delete", "table", "inet", table).Run()
			}
			_ = exec.Command("ip", "link", "del", "pgso"+c.ServerID[:8]).Run()
		}
	}
}

// killFUSE ends the gocryptfs processes serving cipherDir, waiting up to
// 5 s for each to exit after its unmount before killing it.
func killFUSE(cipherDir string) {
	for _, pid := range gocryptfsPIDs(cipherDir) {
		for i := 0; i < 50 && syscall.Kill(pid, 0) == nil; i++ {
			time.Sleep(100 * time.Millisecond)
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

func (s *server) caFile() string { return filepath.Join(s.dataDir, "tls", "ca.crt") }

// dsn is a libpq/pgx connection string to the gateway.
func (s *server) dsn(extra string) string {
	return fmt.Sprintf("host=localhost port=%d dbname=postgres sslrootcert=%s %s", s.port, s.caFile(), extra)
}

func (s *server) addr() string { return fmt.Sprintf("127.0.0.1:%d", s.port) }

// psql runs the real psql with the password in its environment only.
func psql(t *testing.T, dsn, password string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "psql", append([]string{"-X", "-At", "-v", "ON_ERROR_STOP=1", dsn}, args...)...)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+password, "PGCONNECT_TIMEOUT=10")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return strings.TrimSpace(out.String()), err
}

// pgxConnect connects with pgx through the gateway.
func pgxConnect(t *testing.T, dsn string) (*pgx.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return pgx.Connect(ctx, dsn)
}

// superSQL runs SQL as the postgres superuser over the private socket: the
// test harness stands where only root can.
func (s *server) superSQL(t *testing.T, sql string) string {
	t.Helper()
	return s.superSQLPath(t, "", sql)
}

// pinnedSQL is superSQL with search_path = pg_catalog, pg_temp: among a
// hostile tenant's trojans, the harness must resolve names as pgshield does.
func (s *server) pinnedSQL(t *testing.T, sql string) string {
	t.Helper()
	return s.superSQLPath(t, " search_path='pg_catalog, pg_temp'", sql)
}

func (s *server) superSQLPath(t *testing.T, extra, sql string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=5432 user=postgres dbname=postgres sslmode=disable",
		filepath.Join(s.dataDir, "run", "pg"))+extra)
	if err != nil {
		t.Fatalf("superuser connect: %v", err)
	}
	defer conn.Close(context.Background())
	var out string
	rows, err := conn.Query(ctx, sql)
	if err != nil {
		t.Fatalf("superSQL(%q): %v", sql, err)
	}
	for rows.Next() {
		vals, _ := rows.Values()
		out += fmt.Sprint(vals...)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("superSQL(%q): %v", sql, err)
	}
	return out
}

// sqlState extracts the SQLSTATE of a pgx error.
func sqlState(err error) string {
	if pe, ok := err.(*pgconn.PgError); ok {
		return pe.Code
	}
	var pe *pgconn.PgError
	if ok := asPgError(err, &pe); ok {
		return pe.Code
	}
	return ""
}

func (s *server) status(t *testing.T) map[string]any {
	t.Helper()
	out, err := s.cli("status", "-o", "json")
	if err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	var st map[string]any
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status -o json is not JSON: %v\n%s", err, out)
	}
	return st
}
