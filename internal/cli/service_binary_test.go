package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// service install writes the binary into a unit systemd runs as root:
// whoever could replace that file, or a directory on its way, would run
// code as root at the next start.
func TestServiceBinaryMustBeRootOnly(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the files must be root's")
	}
	base, err := os.MkdirTemp("/run", "pgshield-svcbin-") // /run: root's, 0755
	if err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	mk := func(dir string, mode os.FileMode) string {
		t.Helper()
		p := filepath.Join(base, dir)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(p, "pgshield")
		if err := os.WriteFile(f, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return f
	}
	good := mk("good", 0o755)
	if err := checkRootOnly(good); err != nil {
		t.Fatalf("a root-owned 0755 binary in root-owned 0755 directories: %v", err)
	}
	// Through a symbolic link in a safe directory, to a safe file.
	link := filepath.Join(base, "good", "link")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	if err := checkRootOnly(link); err != nil {
		t.Fatalf("link to a safe binary: %v", err)
	}

	open := mk("open", 0o777)
	sticky := mk("sticky", 0o1777)
	groupw := mk("groupw", 0o755)
	if err := os.Chmod(groupw, 0o775); err != nil {
		t.Fatal(err)
	}
	owned := mk("owned", 0o755)
	if err := os.Chown(owned, 1000, 1000); err != nil {
		t.Fatal(err)
	}
	ownedDir := mk("owneddir", 0o755)
	if err := os.Chown(filepath.Dir(ownedDir), 1000, 1000); err != nil {
		t.Fatal(err)
	}
	// A safe link whose target lies in a writable directory.
	badLink := filepath.Join(base, "good", "badlink")
	if err := os.Symlink(open, badLink); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ path, want string }{
		{open, "mode 0777"},
		{sticky, "sticky has mode 0777"}, // a sticky directory is refused too
		{groupw, "mode 0775"},
		{owned, "uid 1000"},
		{ownedDir, "uid 1000"},
		{badLink, "mode 0777"},
		{filepath.Join(base, "good"), "not a regular file"},
	} {
		err := checkRootOnly(c.path)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want an error with %q", c.path, err, c.want)
		}
	}
}

// service install refuses, exit 5, to write a unit whose ExecStart another
// user could replace, and writes it for a root-only binary.
func TestServiceInstallRefusesReplaceableBinary(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	base, err := os.MkdirTemp("/run", "pgshield-svcinst-") // not /tmp: the unit refuses it
	if err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(base, "data")
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := `{"tls_cert_file": "/x/server.crt", "tls_key_file": "/x/server.key"}`
	if err := os.WriteFile(filepath.Join(data, "pgshield.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(base, "pgshield")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	units := filepath.Join(base, "units")
	install := func() int {
		return Execute([]string{"service", "install", "--data-dir", data, "--binary", bin, "--unit-dir", units, "--name", "t"})
	}
	if err := os.Chown(bin, 1000, 1000); err != nil {
		t.Fatal(err)
	}
	if code := install(); code != 5 {
		t.Fatalf("install with a binary uid 1000 owns: exit %d, want 5", code)
	}
	if _, err := os.Stat(filepath.Join(units, "t.service")); !os.IsNotExist(err) {
		t.Fatalf("a unit was written for it: %v", err)
	}
	if err := os.Chown(bin, 0, 0); err != nil {
		t.Fatal(err)
	}
	if code := install(); code != 0 {
		t.Fatalf("install with a root-only binary: exit %d", code)
	}
	if b, err := os.ReadFile(filepath.Join(units, "t.service")); err != nil || !strings.Contains(string(b), "ExecStart="+bin+" up") {
		t.Fatalf("unit: %v\n%s", err, b)
	}
}
