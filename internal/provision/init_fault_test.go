package provision

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/ctl/volume"
)

// initSteps are Init's steps in order; the test fails if the plan changes
// without it, so that a new step gets its failure tested too.
var initSteps = []string{"server id", "data directory", "encrypted volume", "cluster directories",
	"PostgreSQL cluster", "administrator", "network rules", "configuration", "closing the volume"}

// machineState is what a failed init must leave as it found: the loop
// devices and mounts under dir, and the processes whose command line
// names dir. (Other tests run on this machine at the same time: only what
// names dir is compared.)
func machineState(t *testing.T, dir string) []string {
	t.Helper()
	var st []string
	out, err := exec.Command("losetup", "-a").Output()
	if err != nil {
		t.Fatalf("losetup -a: %v", err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, dir) {
			st = append(st, "loop "+l)
		}
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.Contains(sc.Text(), dir) {
			st = append(st, "mount "+sc.Text())
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && strings.Contains(string(b), dir) {
			st = append(st, "process "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return st
}

// TestInitFailureLeavesNothing fails a real init after each step's work
// (the step's Do done in full) and checks that nothing it made is left: no
// image, loop device, mount, key file, process or data directory entry.
func TestInitFailureLeavesNothing(t *testing.T) {
	if os.Getenv("PGSHIELD_E2E") != "1" || os.Geteuid() != 0 {
		t.Skip("needs root, PostgreSQL 15 and loop devices: set PGSHIELD_E2E=1 (scripts/test.sh does)")
	}
	base := t.TempDir()
	for _, d := range []string{base, filepath.Dir(base)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// A failing test must not leave mounts or loop devices either.
	t.Cleanup(func() { cleanupUnder(base) })
	pw := filepath.Join(base, "pw")
	if err := os.WriteFile(pw, []byte("fault-test-password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var seen []string
	testFault = func(_ *server, step string) error {
		seen = append(seen, step)
		return nil
	}
	t.Cleanup(func() { testFault = nil })

	for b, backend := range []string{config.StorageFscrypt, config.StorageGocryptfs} {
		size := int64(64 << 20)
		if backend == config.StorageGocryptfs {
			size = 0 // no image
		}
		for i, step := range initSteps {
			i := i + b*len(initSteps) // a directory name per run
			t.Run(backend+"/"+strings.ReplaceAll(step, " ", "_"), func(t *testing.T) {
				// An empty data directory made beforehand (mktemp -d) and a
				// new one under a missing parent: both come back as they were.
				for _, made := range []bool{true, false} {
					root := filepath.Join(base, "d"+string(rune('a'+i)), "new", "srv")
					if made {
						root = filepath.Join(base, "e"+string(rune('a'+i)))
						if err := os.Mkdir(root, 0o755); err != nil {
							t.Fatal(err)
						}
					}
					before := machineState(t, root)
					var serverID string
					injected := errors.New("injected fault")
					seen = nil
					testFault = func(s *server, name string) error {
						seen = append(seen, name)
						serverID = s.cfg.ServerID
						if name == step {
							return injected
						}
						return nil
					}
					port, err := freePort("127.0.0.1")
					if err != nil {
						t.Fatal(err)
					}
					ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
					_, err = Init(ctx, InitOptions{Layout: config.Layout{Root: root}, AdminUser: "admin",
						AdminPasswordFile: pw, Listen: "127.0.0.1:" + strconv.Itoa(port), Network: "public",
						Storage: backend, StorageSize: size})
					cancel()
					if !errors.Is(err, injected) {
						t.Fatalf("Init(fault at %q) = %v; want the injected fault", step, err)
					}
					if k := i % len(initSteps); !slices.Equal(seen, initSteps[:k+1]) {
						t.Fatalf("steps run %q; want %q (update initSteps with the plan)", seen, initSteps[:k+1])
					}
					if after := machineState(t, root); !slices.Equal(before, after) {
						t.Errorf("after a failure at %q: machine state %q; was %q", step, after, before)
					}
					if serverID != "" {
						if _, err := os.Stat(ownerPath(volume.SystemKeyDir, serverID)); !errors.Is(err, os.ErrNotExist) {
							t.Errorf("after a failure at %q: owner file left (%v)", step, err)
							_ = os.Remove(ownerPath(volume.SystemKeyDir, serverID))
						}
						if _, err := os.Stat(volume.SystemKEKPath(serverID)); !errors.Is(err, os.ErrNotExist) {
							t.Errorf("after a failure at %q: key file %s left (%v)", step, volume.SystemKEKPath(serverID), err)
							_ = os.Remove(volume.SystemKEKPath(serverID))
						}
					}
					if made {
						entries, err := os.ReadDir(root)
						if err != nil || len(entries) != 0 {
							t.Errorf("after a failure at %q: the data directory holds %v (%v); want it empty", step, entries, err)
						}
					} else if _, err := os.Stat(filepath.Join(base, "d"+string(rune('a'+i)))); !errors.Is(err, os.ErrNotExist) {
						t.Errorf("after a failure at %q: the parents init made are left (%v)", step, err)
					}
				}
			})
		}
	}
}

// cleanupUnder unmounts and detaches whatever is left under dir.
func cleanupUnder(dir string) {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], dir) {
			_ = exec.Command("umount", "-l", f[4]).Run()
		}
	}
	out, _ := exec.Command("losetup", "-a").Output()
	for _, l := range strings.Split(string(out), "\n") {
		if dev, _, ok := strings.Cut(l, ":"); ok && strings.Contains(l, dir) {
			_ = exec.Command("losetup", "-d", dev).Run()
		}
	}
}
