package keys

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCreateSystemKEK(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "etc", "keys")
	path := filepath.Join(dir, "srv.key")
	if err := CreateSystemKEK(path); err != nil {
		t.Fatalf("CreateSystemKEK(%q) error = %v", path, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Size() != KEKSize {
		t.Errorf("KEK file mode %v size %d; want 0600, %d", fi.Mode().Perm(), fi.Size(), KEKSize)
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm()&^0o700 != 0 {
		t.Errorf("KEK directory mode %v; want 0700 or narrower", di.Mode().Perm())
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("KEK directory holds %d entries; want only the KEK (no temporary file left)", len(entries))
	}
	if b, _ := os.ReadFile(path); string(b) == string(make([]byte, KEKSize)) {
		t.Errorf("KEK is all zeros")
	}
}

func TestCreateSystemKEKRefusesOverwrite(t *testing.T) {
	path, _ := systemKEK(t)
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	err = CreateSystemKEK(path)
	if !errors.Is(err, fs.ErrExist) {
		t.Errorf("CreateSystemKEK(existing) error = %v; want fs.ErrExist", err)
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(before) != string(after) {
		t.Errorf("CreateSystemKEK(existing) changed the KEK")
	}
	// A dangling symbolic link is an existing name too.
	link := filepath.Join(filepath.Dir(path), "link.key")
	if err := os.Symlink(filepath.Join(filepath.Dir(path), "nowhere"), link); err != nil {
		t.Fatal(err)
	}
	if err := CreateSystemKEK(link); !errors.Is(err, fs.ErrExist) {
		t.Errorf("CreateSystemKEK(dangling symlink) error = %v; want fs.ErrExist", err)
	}
}

func TestCreateSystemKEKRefusesWideDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "srv.key")
	if err := CreateSystemKEK(path); !errors.Is(err, ErrInsecurePermissions) {
		t.Errorf("CreateSystemKEK(in 0755 dir) error = %v; want ErrInsecurePermissions", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("CreateSystemKEK(in 0755 dir) left a file: %v", err)
	}
	for _, p := range []string{"", "relative.key", "/tmp/../etc/x.key"} {
		if err := CreateSystemKEK(p); err == nil {
			t.Errorf("CreateSystemKEK(%q) error = nil; want an error", p)
		}
	}
}

func TestOpenSystemKeyRefusesInsecureModes(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		desc    string
		fileMod fs.FileMode
		dirMode fs.FileMode
		wantErr bool
		wantIn  string
	}{
		{desc: "0600 in 0700", fileMod: 0o600, dirMode: 0o700},
		{desc: "0400 in 0500", fileMod: 0o400, dirMode: 0o500},
		{desc: "0640 file", fileMod: 0o640, dirMode: 0o700, wantErr: true, wantIn: "has mode 0640, wider than 0600"},
		{desc: "0604 file", fileMod: 0o604, dirMode: 0o700, wantErr: true, wantIn: "has mode 0604"},
		{desc: "0700 file", fileMod: 0o700, dirMode: 0o700, wantErr: true, wantIn: "has mode 0700, wider than 0600"},
		{desc: "0750 dir", fileMod: 0o600, dirMode: 0o750, wantErr: true, wantIn: "has mode 0750, wider than 0700"},
		{desc: "0701 dir", fileMod: 0o600, dirMode: 0o701, wantErr: true, wantIn: "has mode 0701"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			path, uri := systemKEK(t)
			dir := filepath.Dir(path)
			if err := os.Chmod(path, tc.fileMod); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, tc.dirMode); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.Chmod(dir, 0o700) })
			k, err := Open(ctx, uri)
			if !tc.wantErr {
				if err != nil {
					t.Fatalf("Open(%q) error = %v; want nil", uri, err)
				}
				k.Close()
				return
			}
			if err == nil {
				k.Close()
				t.Fatalf("Open(%q) error = nil; want an error", uri)
			}
			if !errors.Is(err, ErrInsecurePermissions) || !strings.Contains(err.Error(), tc.wantIn) {
				t.Errorf("Open(%q) error = %v; want ErrInsecurePermissions and %q", uri, err, tc.wantIn)
			}
		})
	}
}

func TestOpenSystemKeyRefusesBadFiles(t *testing.T) {
	ctx := context.Background()
	path, _ := systemKEK(t)
	dir := filepath.Dir(path)

	link := filepath.Join(dir, "link.key")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, SystemKeyURI(link)); !errors.Is(err, ErrInsecurePermissions) {
		t.Errorf("Open(symlinked KEK) error = %v; want ErrInsecurePermissions", err)
	}

	linkDir := filepath.Join(t.TempDir(), "linkdir")
	if err := os.Symlink(dir, linkDir); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, SystemKeyURI(filepath.Join(linkDir, filepath.Base(path)))); !errors.Is(err, ErrInsecurePermissions) {
		t.Errorf("Open(KEK in symlinked dir) error = %v; want ErrInsecurePermissions", err)
	}

	for name, size := range map[string]int{"short.key": KEKSize - 1, "long.key": KEKSize + 1, "empty.key": 0} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, make([]byte, size), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(ctx, SystemKeyURI(p)); err == nil || !strings.Contains(err.Error(), "want 32") {
			t.Errorf("Open(%d-byte KEK) error = %v; want a size error", size, err)
		}
	}

	sub := filepath.Join(dir, "sub.key")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, SystemKeyURI(sub)); err == nil {
		t.Errorf("Open(directory as KEK) error = nil; want an error")
	}
}

func TestOpenSystemKeyRefusesForeignOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown")
	}
	path, uri := systemKEK(t)
	if err := os.Chown(path, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(context.Background(), uri); !errors.Is(err, ErrInsecurePermissions) || !strings.Contains(err.Error(), "owned by uid 65534") {
		t.Errorf("Open(KEK owned by another user) error = %v; want ErrInsecurePermissions", err)
	}
}

func TestSystemKeyURI(t *testing.T) {
	if got, want := SystemKeyURI("/etc/pgshield/keys/a1.key"), "pgshield-local:///etc/pgshield/keys/a1.key"; got != want {
		t.Errorf("SystemKeyURI = %q; want %q", got, want)
	}
}
