package e2e

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// keyFiles lists /etc/pgshield/keys.
func keyFiles(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir("/etc/pgshield/keys")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// refusedInit runs init in dir and expects exit code 5 with every want in
// its message and nothing created: dir's parent as before, no key file.
func refusedInit(t *testing.T, dir string, args []string, want ...string) {
	t.Helper()
	pw := filepath.Join(baseDir, "precheck.pw")
	if err := os.WriteFile(pw, []byte(adminPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	parent := filepath.Dir(dir)
	before, _ := os.ReadDir(parent)
	keys := keyFiles(t)
	s := &server{dataDir: dir}
	out, err := s.cli(append([]string{"init", "--admin-password-file", pw}, args...)...)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 5 {
		t.Fatalf("init %v = %v\n%s\nwant exit code 5", args, err, out)
	}
	for _, w := range append(want, "nothing was created") {
		if !strings.Contains(out, w) {
			t.Errorf("init %v said %q; want %q in it", args, out, w)
		}
	}
	after, _ := os.ReadDir(parent)
	if len(after) != len(before) {
		t.Errorf("init refused, yet %s changed: %v -> %v", parent, before, after)
	}
	if got := keyFiles(t); !slices.Equal(got, keys) {
		t.Errorf("init refused, yet /etc/pgshield/keys changed: %v -> %v", keys, got)
	}
}

// TestInitPreconditions: what would fail deep inside initdb or mkfs is
// refused before anything is created, with what to change.
func TestInitPreconditions(t *testing.T) {
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	listen := fmt.Sprintf("127.0.0.1:%d", port)

	t.Run("0700 parent", func(t *testing.T) {
		// As `mktemp -d` makes it: postgres cannot traverse it.
		private, err := os.MkdirTemp(baseDir, "mktemp-")
		if err != nil {
			t.Fatal(err)
		}
		refusedInit(t, filepath.Join(private, "srv"), []string{"--listen", listen},
			"the postgres user cannot reach the data directory", private+" is drwx------", "chmod o+x "+private)
	})

	t.Run("busy port", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		refusedInit(t, filepath.Join(baseDir, "busyport"), []string{"--listen", ln.Addr().String()},
			"--listen "+ln.Addr().String()+" is in use")
	})

	t.Run("too little space", func(t *testing.T) {
		small := filepath.Join(baseDir, "smallfs")
		if err := os.Mkdir(small, 0o755); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", small).CombinedOutput(); err != nil {
			t.Fatalf("mount tmpfs: %v %s", err, out)
		}
		t.Cleanup(func() { _ = exec.Command("umount", "-l", small).Run() })
		refusedInit(t, filepath.Join(small, "srv"), []string{"--listen", listen, "--storage-size", "1GiB"},
			"--storage-size 1.0 GiB does not fit: the filesystem of "+small+" has 16.0 MiB free")
	})

	t.Run("not empty", func(t *testing.T) {
		dir := filepath.Join(baseDir, "notempty")
		if err := os.MkdirAll(filepath.Join(dir, "something"), 0o755); err != nil {
			t.Fatal(err)
		}
		refusedInit(t, dir, []string{"--listen", listen}, dir+" is not empty")
		if _, err := os.Stat(filepath.Join(dir, "something")); err != nil {
			t.Errorf("a refused init touched what was in the directory: %v", err)
		}
	})
}
