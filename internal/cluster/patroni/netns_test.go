package patroni

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteBinDir(t *testing.T) {
	pg := filepath.Join(t.TempDir(), "pgbin")
	if err := os.Mkdir(pg, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"postgres", "pg_ctl", "pg_rewind", "pg_basebackup"} {
		if err := os.WriteFile(filepath.Join(pg, n), []byte("#!/bin/sh\necho real "+n+" \"$@\"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dir := filepath.Join(t.TempDir(), "bin")
	for range 2 { // a second run replaces what the first made
		if err := WriteBinDir(dir, pg); err != nil {
			t.Fatal(err)
		}
	}
	if target, err := os.Readlink(filepath.Join(dir, "pg_ctl")); err != nil || target != filepath.Join(pg, "pg_ctl") {
		t.Errorf("pg_ctl -> %q, %v", target, err)
	}
	// pg_rewind and pg_basebackup run commands and a single-user postgres
	// from the data directory's configuration: wrapped too.
	for _, n := range []string{"pg_rewind", "pg_basebackup"} {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil || !strings.Contains(string(b), "exec /usr/bin/unshare --user --map-current-user --net -- '"+filepath.Join(pg, n)+"' \"$@\"\n") {
			t.Errorf("%s wrapper: %v\n%s", n, err, b)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "exec /usr/bin/unshare --user --map-current-user --net -- '"+filepath.Join(pg, "postgres")+"' \"$@\"") {
		t.Errorf("wrapper:\n%s", b)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "postgres")); fi.Mode().Perm() != 0o755 {
		t.Errorf("wrapper mode %v", fi.Mode())
	}
	// Where unprivileged user namespaces work, the wrapper runs the real
	// program with its arguments, in a network namespace with no TCP socket.
	if _, err := os.Stat("/usr/bin/unshare"); err == nil {
		out, err := exec.Command(filepath.Join(dir, "postgres"), "-V").CombinedOutput()
		want := "real postgres -V -c archive_mode=off -c archive_command= -c restore_command="
		if err == nil && strings.TrimSpace(string(out)) != want {
			t.Errorf("wrapper output %q", out)
		} else if err != nil {
			t.Logf("unshare not usable here: %v %s", err, out)
		}
	}
	// The pinned settings, quoted for the shell (a quote in the value).
	if err := WriteBinDirPinned(dir, pg, map[string]string{"archive_mode": "on", "archive_command": "/usr/bin/x '--config=/a b' %p"}); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(filepath.Join(dir, "postgres"), "-V").CombinedOutput(); err == nil &&
		strings.TrimSpace(string(out)) != "real postgres -V -c archive_mode=on -c archive_command=/usr/bin/x '--config=/a b' %p -c restore_command=" {
		t.Errorf("pinned wrapper output %q", out)
	}
	// The files are pinned only when given.
	if err := WriteBinDirPinned(dir, pg, map[string]string{"hba_file": "/d/pg_hba.conf", "ident_file": "/d/pg_ident.conf", "data_directory": "/d"}); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "postgres")); err != nil ||
		!strings.HasSuffix(string(b), `"$@" -c 'archive_mode=off' -c 'archive_command=' -c 'restore_command=' -c 'data_directory=/d' -c 'hba_file=/d/pg_hba.conf' -c 'ident_file=/d/pg_ident.conf'`+"\n") {
		t.Errorf("wrapper with files pinned: %v\n%s", err, b)
	}
	if err := WriteBinDir(dir, filepath.Join(t.TempDir(), "empty")); err == nil {
		t.Error("a missing PostgreSQL bin dir accepted")
	}
	if err := WriteBinDir(pg, pg); err == nil {
		t.Error("bin dir = PostgreSQL's own accepted")
	}
}

func TestEnv(t *testing.T) {
	s := settings(t)
	env := strings.Join(Env(s), "\n")
	for _, want := range []string{"PGHOST=/run/pgshield/peers", "PGPASSFILE=" + s.PgpassFile} {
		if !strings.Contains(env, want) {
			t.Errorf("env lacks %s:\n%s", want, env)
		}
	}
}
