package etcd

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Supervisor runs one etcd member as a child process and starts it again
// when it exits, until its context ends.
type Supervisor struct {
	// Bin is the etcd executable (Debian's /usr/bin/etcd).
	Bin string
	// Prefix runs Bin through another program, such as
	// "ip netns exec NAME" to put the member in its network namespace.
	Prefix []string
	// Args are etcd's arguments (see Args): paths, never secrets.
	Args []string
	// Dir is the working directory; the data directory is best.
	Dir string
	// Log receives the member's stdout and stderr; nil discards them.
	Log io.Writer
	// Credential, when set, runs etcd as that user instead of root.
	Credential *syscall.Credential
	// StopGrace is how long a stop waits after SIGTERM before SIGKILL
	// (10 s when zero).
	StopGrace time.Duration

	mu     sync.Mutex
	starts int
}

// Restart delays: doubled after each exit that came sooner than
// steadyAfter, from minBackoff up to maxBackoff.
const (
	minBackoff  = 500 * time.Millisecond
	maxBackoff  = 30 * time.Second
	steadyAfter = time.Minute
)

// Starts is how many times the member was started.
func (s *Supervisor) Starts() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.starts
}

// Run runs the member until ctx ends, then stops it (SIGTERM, SIGKILL
// after StopGrace) and returns ctx's error. A member that cannot be
// started at all (no such executable) ends Run with that error.
func (s *Supervisor) Run(ctx context.Context) error {
	backoff := minBackoff
	for {
		began := time.Now()
		err := s.runOnce(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			return err
		}
		if time.Since(began) > steadyAfter {
			backoff = minBackoff
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

func (s *Supervisor) runOnce(ctx context.Context) error {
	argv := append(append(append([]string(nil), s.Prefix...), s.Bin), s.Args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = s.Dir
	// A minimal environment: nothing of pgshield's (credentials for a KMS,
	// say) reaches the child, and no ETCD_* variable overrides Args.
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C"}
	out := s.Log
	if out == nil {
		out = io.Discard
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid: true,
		// The member dies with pgshield rather than outliving its fencing.
		Pdeathsig:  syscall.SIGKILL,
		Credential: s.Credential,
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	s.mu.Lock()
	s.starts++
	s.mu.Unlock()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	grace := s.StopGrace
	if grace <= 0 {
		grace = 10 * time.Second
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		return <-done
	}
}

// exists reports whether the file at p exists; used by callers that want
// to skip when etcd is not installed.
func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// Installed reports the path of Debian's etcd, or "" when it is not
// installed (scripts/deps.sh installs etcd-server).
func Installed() string {
	for _, p := range []string{"/usr/bin/etcd"} {
		if exists(p) {
			return p
		}
	}
	if p, err := exec.LookPath("etcd"); err == nil {
		return p
	}
	return ""
}
