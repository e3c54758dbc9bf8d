package provision

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/postgres"
)

// goodHost is a machine with everything init needs: real directories (for
// modes and owners), all programs and devices, room and a free port.
func goodHost() host {
	h := realHost
	h.stat = func(p string) (fs.FileInfo, error) {
		if strings.HasPrefix(p, "/usr/") || strings.HasPrefix(p, "/sys/") || strings.HasPrefix(p, "/dev/") {
			return os.Stat("/") // present
		}
		return os.Stat(p)
	}
	h.lookPath = func(string) (string, error) { return "/usr/bin/x", nil }
	h.statfs = func(string) (int64, error) { return 1 << 40, nil }
	h.listen = func(string) error { return nil }
	h.freeLoop = func() error { return nil }
	return h
}

// pgUser is an unprivileged user that owns none of the test's directories.
var pgUser = postgres.OSUser{Name: "postgres", UID: 54321, GID: 54321}

func checkOpts(root string) hostCheck {
	return hostCheck{Root: root, Storage: config.StorageFscrypt, ImageSize: 1 << 30, SizeAsked: true,
		Listen: "127.0.0.1:5432", PGBinDir: "/usr/lib/postgresql/15/bin", User: pgUser}
}

func searchable(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	// t.TempDir makes it and its parent 0700.
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for d := dir; d != "/"; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			t.Skipf("%s is not searchable by others; cannot build the fixture", d)
		}
	}
	return dir
}

func TestHostCheckPasses(t *testing.T) {
	base := searchable(t)
	for _, root := range []string{filepath.Join(base, "new"), filepath.Join(base, "a", "b", "c")} {
		if err := goodHost().check(checkOpts(root)); err != nil {
			t.Errorf("check(%s) = %v; want nil", root, err)
		}
	}
	// An empty directory is taken.
	empty := filepath.Join(base, "empty")
	if err := os.Mkdir(empty, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := goodHost().check(checkOpts(empty)); err != nil {
		t.Errorf("check(empty dir) = %v; want nil", err)
	}
	// A storage path is reached through its bind mount in the data
	// directory: its parents may be private.
	private := filepath.Join(base, "private")
	if err := os.Mkdir(private, 0o700); err != nil {
		t.Fatal(err)
	}
	c := checkOpts(filepath.Join(base, "sp"))
	c.StoragePath = filepath.Join(private, "fs")
	if err := goodHost().check(c); err != nil {
		t.Errorf("check(storage path under a 0700 directory) = %v; want nil", err)
	}
}

func TestHostCheckRefusals(t *testing.T) {
	base := searchable(t)
	private := filepath.Join(base, "private") // as mktemp -d makes it
	if err := os.Mkdir(private, 0o700); err != nil {
		t.Fatal(err)
	}
	full := filepath.Join(base, "full")
	if err := os.MkdirAll(filepath.Join(full, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	missing := func(name string) host {
		h := goodHost()
		inner := h.stat
		h.stat = func(p string) (fs.FileInfo, error) {
			if strings.HasSuffix(p, name) {
				return nil, fs.ErrNotExist
			}
			return inner(p)
		}
		return h
	}
	for _, tc := range []struct {
		name string
		h    host
		edit func(*hostCheck)
		want string
	}{
		{"0700 parent", goodHost(), func(c *hostCheck) { c.Root = filepath.Join(private, "d") }, "cannot reach the data directory " + filepath.Join(private, "d") + ": " + private + " is drwx------"},
		{"0700 grandparent", goodHost(), func(c *hostCheck) { c.Root = filepath.Join(private, "a", "d") }, "cannot reach the data directory"},
		{"0700 above the backup path", goodHost(), func(c *hostCheck) { c.BackupPath = filepath.Join(private, "b") }, "cannot reach --backup-path"},
		{"not empty", goodHost(), func(c *hostCheck) { c.Root = full }, "is not empty"},
		{"a file", goodHost(), func(c *hostCheck) { c.Root = file }, "is not a directory"},
		{"no initdb", missing("/initdb"), nil, "initdb is missing"},
		{"no pgbackrest", missing("/pgbackrest"), nil, "pgbackrest is missing"},
		{"no ext4 encryption", missing("/encryption"), nil, "no encryption feature"},
		{"no loop devices", missing("/loop-control"), nil, "no loop devices"},
		{"no free loop device", func() host {
			h := goodHost()
			h.freeLoop = func() error { return errors.New("exit status 1: losetup: cannot find an unused loop device") }
			return h
		}(), nil, "no free loop device"},
		{"no mkfs", func() host {
			h := goodHost()
			h.lookPath = func(p string) (string, error) {
				if p == "mkfs.ext4" {
					return "", errors.New("not found")
				}
				return "/usr/sbin/" + p, nil
			}
			return h
		}(), nil, "mkfs.ext4 is missing"},
		{"too little space", func() host {
			h := goodHost()
			h.statfs = func(string) (int64, error) { return 100 << 20, nil }
			return h
		}(), nil, "--storage-size 1.0 GiB does not fit: the filesystem of " + base + " has 100.0 MiB free"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := checkOpts(filepath.Join(base, "new"))
			if tc.edit != nil {
				tc.edit(&c)
			}
			err := tc.h.check(c)
			if err == nil {
				t.Fatalf("check() = nil; want %q", tc.want)
			}
			if len(err.Problems) != 1 || !strings.Contains(err.Problems[0], tc.want) {
				t.Errorf("check() = %q; want one problem with %q", err.Problems, tc.want)
			}
		})
	}
}

func TestHostCheckBusyPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	h := goodHost()
	h.listen = realHost.listen
	c := checkOpts(filepath.Join(searchable(t), "new"))
	c.Listen = ln.Addr().String()
	perr := h.check(c)
	if perr == nil || !strings.Contains(perr.Error(), "--listen "+c.Listen+" is in use") {
		t.Fatalf("check(busy port) = %v; want it named in use", perr)
	}
	// Exit code 5 on the command line, with every problem in one message.
	ce, ok := clienterr.As(perr.asClientError())
	if !ok || ce.Code != "invalid" || !strings.Contains(ce.Message, "nothing was created") {
		t.Errorf("asClientError() = %v; want code invalid", perr.asClientError())
	}
}

func TestHostCheckSizeOnlyWhenAsked(t *testing.T) {
	h := goodHost()
	h.statfs = func(string) (int64, error) { return 1 << 20, nil }
	c := checkOpts(filepath.Join(searchable(t), "new"))
	c.SizeAsked = false // the default image is sparse
	if err := h.check(c); err != nil {
		t.Errorf("check(default size) = %v; want nil", err)
	}
}

func TestHostCheckAllAtOnce(t *testing.T) {
	h := goodHost()
	h.statfs = func(string) (int64, error) { return 1, nil }
	h.listen = func(string) error { return &net.OpError{Err: os.NewSyscallError("bind", syscall.EADDRINUSE)} }
	err := h.check(checkOpts(filepath.Join(searchable(t), "new")))
	if err == nil || len(err.Problems) != 2 {
		t.Fatalf("check() = %v; want two problems in one message", err)
	}
}
