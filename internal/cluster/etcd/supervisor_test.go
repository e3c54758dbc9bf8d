package etcd

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// waitFor polls cond for up to 10 s: a bound, not a timing assertion.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The member gets none of pgshield's environment (where a KMS credential
// may be) and is started again after it exits.
func TestSupervisorRestartsAndKeepsEnvironment(t *testing.T) {
	t.Setenv("PGSHIELD_TEST_SECRET", "hunter2")
	t.Setenv("ETCD_NAME", "overridden")
	dir := t.TempDir()
	out := filepath.Join(dir, "env")
	s := &Supervisor{Bin: "/bin/sh", Args: []string{"-c", `env >> "$0"; echo --- >> "$0"; exit 1`, out}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	waitFor(t, "two starts", func() bool {
		b, _ := os.ReadFile(out)
		return strings.Count(string(b), "---") >= 2
	})
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v", err)
	}
	b, _ := os.ReadFile(out)
	for _, leak := range []string{"hunter2", "PGSHIELD_TEST_SECRET", "ETCD_NAME"} {
		if strings.Contains(string(b), leak) {
			t.Errorf("%s reached the child's environment:\n%s", leak, b)
		}
	}
	if s.Starts() < 2 {
		t.Errorf("starts = %d", s.Starts())
	}
}

// A member that ignores SIGTERM is killed; Run returns only once it is
// gone.
func TestSupervisorKillsStubbornChild(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	s := &Supervisor{Bin: "/bin/sh", Args: []string{"-c", `trap "" TERM; echo $$ > "$0"; while :; do sleep 1; done`, pidFile}, StopGrace: 200 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var pid string
	waitFor(t, "the child's pid", func() bool {
		b, _ := os.ReadFile(pidFile)
		pid = strings.TrimSpace(string(b))
		return pid != ""
	})
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if _, err := os.Stat("/proc/" + pid); err == nil {
		t.Errorf("the child %s is still there", pid)
	}
}

func TestSupervisorMissingBinary(t *testing.T) {
	s := &Supervisor{Bin: filepath.Join(t.TempDir(), "no-etcd")}
	if err := s.Run(context.Background()); err == nil {
		t.Fatal("Run of a missing executable returned no error")
	}
}
