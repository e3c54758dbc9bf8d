package pidfile

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// TestReadZombieIsNotAlive: a daemon killed -9 is a zombie until reaped;
// Read must not report it running (`up` would refuse "already running").
func TestReadZombieIsNotAlive(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Skipf("cannot start sleep: %v", err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	path := filepath.Join(t.TempDir(), "pgshield.pid")
	if err := os.WriteFile(path, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if pid, alive := Read(path); pid != cmd.Process.Pid || !alive {
		t.Fatalf("Read(live child) = %d, %v; want %d, true", pid, alive, cmd.Process.Pid)
	}
	// Killed and not reaped: a zombie.
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !zombie(cmd.Process.Pid) {
		if time.Now().After(deadline) {
			t.Fatalf("child %d did not become a zombie", cmd.Process.Pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if pid, alive := Read(path); pid != cmd.Process.Pid || alive {
		t.Fatalf("Read(zombie) = %d, %v; want %d, false", pid, alive, cmd.Process.Pid)
	}
	if err := Write(path); err != nil {
		t.Fatalf("Write over a zombie's pid file: %v; want it taken over", err)
	}
}
