package certs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgshield/pgshield/internal/config"
)

// The server key gets the same checks at start (Load) as on SIGHUP
// (Reload): before, up accepted a 0644 key that reload refused.
func TestLoadChecksKeyFile(t *testing.T) {
	f := newFixture(t)
	if err := os.Chmod(f.l.ServerKey(), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := New(Config{Layout: f.l, Conf: f.store}).Load()
	if err == nil || !strings.Contains(err.Error(), "wider than 0600") {
		t.Fatalf("Load with a 0644 server key: %v; want it refused", err)
	}
	if err := f.c.Reload("test"); err == nil || !strings.Contains(err.Error(), "wider than 0600") {
		t.Fatalf("Reload with a 0644 server key: %v; want it refused", err)
	}
}

// A key file named through a symbolic link in a directory others can
// write: whoever can write there can point the link at their own key
// between the check and the read. Refused at start and on reload.
func TestKeyFileLinkInWritableDirectory(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a directory to another user")
	}
	f := newFixture(t)
	for _, c := range []struct {
		mode os.FileMode
		uid  int
		want string
	}{
		{0o777, 0, "has mode 0777"},
		{0o755, 1000, "owned by uid 1000"},
	} {
		links := filepath.Join(t.TempDir(), "live")
		if err := os.Mkdir(links, 0o755); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(links, "privkey.pem")
		if err := os.Symlink(f.l.ServerKey(), link); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(links, c.mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(links, c.uid, c.uid); err != nil {
			t.Fatal(err)
		}
		if err := f.store.Edit(func(cur *config.Config, commit func(*config.Config) error) error {
			n := *cur
			n.TLSKeyFile = link
			return commit(&n)
		}); err != nil {
			t.Fatal(err)
		}
		if _, err := New(Config{Layout: f.l, Conf: f.store}).Load(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Load, link in a %04o directory of uid %d: %v; want %q", c.mode, c.uid, err, c.want)
		}
		if err := f.c.Reload("test"); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Reload, link in a %04o directory of uid %d: %v; want %q", c.mode, c.uid, err, c.want)
		}
		// The same link in a directory only root can change is accepted.
		if err := os.Chmod(links, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(links, 0, 0); err != nil {
			t.Fatal(err)
		}
		if _, err := New(Config{Layout: f.l, Conf: f.store}).Load(); err != nil {
			t.Errorf("Load, link in a root-only directory: %v", err)
		}
	}
}
