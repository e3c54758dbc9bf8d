package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/config"
)

// State is the postmaster's lifecycle state as the supervisor sees it.
type State string

// Supervisor states.
const (
	StateStopped    State = "Stopped"
	StateStarting   State = "Starting"
	StateRunning    State = "Running"
	StateRestarting State = "Restarting" // crashed; waiting out the backoff
	StateStopping   State = "Stopping"
)

// Status is a snapshot of the supervisor for `pgshield status`.
type Status struct {
	State       State     `json:"state"`
	PID         int       `json:"pid,omitempty"`
	Since       time.Time `json:"since"`
	Restarts    int       `json:"restarts"`
	LastExit    string    `json:"last_exit,omitempty"`
	LastCrashAt time.Time `json:"last_crash_at,omitzero"`
}

// Supervisor runs the postmaster in the foreground as a child and restarts
// it with capped exponential backoff when it dies unexpectedly.
type Supervisor struct {
	Cluster *Cluster
	Log     *slog.Logger
	// ReadyTimeout bounds how long a start may take.
	ReadyTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait before a restart.
	MinBackoff, MaxBackoff time.Duration
	// OnReady, if set, runs each time a postmaster becomes ready (after
	// every restart too), with its pid: its network namespace is new.
	OnReady func(pid int)
	// ServerLog receives PostgreSQL's log, redacted, as audit events (see
	// audit.ServerLog). If nil (init), the supervisor writes them to the
	// audit log on the volume itself for as long as it runs.
	ServerLog func([]audit.Event)
	// Command, when set (a cluster node), is what runs in place of the
	// postmaster: Patroni, which starts PostgreSQL itself in a network
	// namespace of its own (internal/cluster/patroni/netns.go). Ready
	// still means that PostgreSQL answers on the socket; Status.PID is
	// then Patroni's.
	Command func() (*exec.Cmd, error)

	srvLog *audit.ServerLog
	ownLog *audit.Log

	mu struct {
		sync.Mutex
		status Status
		cmd    *exec.Cmd
		exited chan struct{} // closed when cmd has been waited for
		stop   bool
	}
	done chan struct{}
}

// CheckAndSetDefaults fills in defaults.
func (s *Supervisor) CheckAndSetDefaults() error {
	if s.Cluster == nil {
		return errors.New("supervisor: Cluster is required")
	}
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	if s.ReadyTimeout == 0 {
		s.ReadyTimeout = 2 * time.Minute
	}
	if s.MinBackoff == 0 {
		s.MinBackoff = 500 * time.Millisecond
	}
	if s.MaxBackoff == 0 {
		s.MaxBackoff = 30 * time.Second
	}
	return nil
}

// Status returns a snapshot.
func (s *Supervisor) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.mu.status
	if st.State == "" {
		st.State = StateStopped
	}
	return st
}

func (s *Supervisor) setStateLocked(st State) {
	s.mu.status.State = st
	s.mu.status.Since = time.Now()
	if st != StateRunning {
		s.mu.status.PID = 0
	}
}

// Start launches the postmaster, waits until it accepts connections, and
// then keeps supervising it in the background until Stop.
func (s *Supervisor) Start(ctx context.Context) error {
	if err := s.CheckAndSetDefaults(); err != nil {
		return err
	}
	if err := s.stopStale(); err != nil {
		return err
	}
	if err := s.startServerLog(); err != nil {
		return err
	}
	s.done = make(chan struct{})
	if err := s.startOnce(ctx); err != nil {
		close(s.done)
		s.stopServerLog()
		return err
	}
	go s.watch()
	return nil
}

// startOnce starts one postmaster and waits for readiness or exit.
func (s *Supervisor) startOnce(ctx context.Context) error {
	c := s.Cluster
	if err := c.PrepareDirs(); err != nil {
		return err
	}
	var cmd *exec.Cmd
	if s.Command != nil {
		var err error
		if cmd, err = s.Command(); err != nil {
			return err
		}
		// Patroni stops PostgreSQL and gives up its leader key if
		// pgshield dies, so no PostgreSQL outlives its only door.
		cmd.SysProcAttr.Pdeathsig = syscall.SIGINT
	} else {
		cmd = c.User.Command(c.Bin("postgres"), "-D", c.Layout.PGData())
		// The postmaster ends (fast shutdown) if pgshield dies, so no PostgreSQL
		// outlives its only door.
		cmd.SysProcAttr.Pdeathsig = syscall.SIGINT
		// PostgreSQL gets a network namespace of its own with nothing in it:
		// a careless or compromised role cannot reach any network (dblink,
		// postgres_fdw, COPY ... PROGRAM 'curl ...'). The Unix socket lives in
		// the filesystem, so the gateway still reaches it.
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWNET
	}
	// Before the logging collector takes over, early errors go to stderr:
	// a pipe into the audit stream, like the rest of the log. (A Command
	// may send its own output elsewhere: Patroni's goes to pgshield's log.)
	if cmd.Stdout == nil {
		cmd.Stdout, cmd.Stderr = s.srvLog.Stderr(), s.srvLog.Stderr()
	}
	s.mu.Lock()
	s.setStateLocked(StateStarting)
	s.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting postgres: %w", err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	s.mu.Lock()
	s.mu.cmd, s.mu.exited = cmd, exited
	s.mu.Unlock()

	deadline := time.NewTimer(s.ReadyTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-exited:
			return fmt.Errorf("postgres exited during startup (%v): %s", waitErr, s.tailStartupLog())
		case <-deadline.C:
			_ = cmd.Process.Signal(syscall.SIGQUIT)
			<-exited
			return fmt.Errorf("postgres was not ready within %s: %s", s.ReadyTimeout, s.tailStartupLog())
		case <-ctx.Done():
			_ = cmd.Process.Signal(syscall.SIGINT)
			<-exited
			return ctx.Err()
		case <-tick.C:
			if s.ping(ctx) == nil {
				s.mu.Lock()
				s.setStateLocked(StateRunning)
				s.mu.status.PID = cmd.Process.Pid
				s.mu.Unlock()
				s.Log.Info("PostgreSQL is ready.", "pid", cmd.Process.Pid)
				if s.OnReady != nil {
					s.OnReady(cmd.Process.Pid)
				}
				return nil
			}
		}
	}
}

func (s *Supervisor) tailStartupLog() string {
	// Give the reader a moment to see the last lines of a process that
	// just exited.
	time.Sleep(100 * time.Millisecond)
	msg := s.srvLog.Tail()
	if len(msg) > 2000 {
		msg = msg[len(msg)-2000:]
	}
	if msg = strings.TrimSpace(msg); msg == "" {
		msg = "see the audit log (pgshield audit search --event postgres.log)"
	}
	return msg
}

// startServerLog starts reading PostgreSQL's log pipes (before the
// postmaster, which would otherwise block opening them).
func (s *Supervisor) startServerLog() error {
	sink := s.ServerLog
	if sink == nil {
		l, err := audit.Open(s.Cluster.Layout.AuditDir())
		if err != nil {
			return fmt.Errorf("opening the audit log: %w", err)
		}
		s.ownLog = l
		sink = func(es []audit.Event) {
			if _, err := l.WriteBatch(es); err != nil {
				s.Log.Error("Writing PostgreSQL's log to the audit log failed.", "error", err)
			}
		}
	}
	s.srvLog = &audit.ServerLog{Dir: s.Cluster.LogPipeDir(), UID: int(s.Cluster.User.UID), GID: int(s.Cluster.User.GID),
		Sink: sink, Logger: s.Log}
	if err := s.srvLog.Start(); err != nil {
		if s.ownLog != nil {
			s.ownLog.Close()
			s.ownLog = nil
		}
		return fmt.Errorf("PostgreSQL's log pipes: %w", err)
	}
	return nil
}

// stopServerLog reads PostgreSQL's last messages; the postmaster has exited.
func (s *Supervisor) stopServerLog() {
	if s.srvLog != nil {
		if err := s.srvLog.Stop(10 * time.Second); err != nil {
			s.Log.Error("PostgreSQL's log was not read to the end.", "error", err)
		}
		s.srvLog = nil
	}
	if s.ownLog != nil {
		if err := s.ownLog.Close(); err != nil {
			s.Log.Error("Closing the audit log failed.", "error", err)
		}
		s.ownLog = nil
	}
}

func (s *Supervisor) ping(ctx context.Context) error { return s.Cluster.Ping(ctx) }

// Ping reports whether PostgreSQL answers a query on the private socket.
func (c *Cluster) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := c.ConnectPrivileged(ctx, c.Cfg.ServiceRole)
	if err != nil {
		// Before the service role exists (bootstrap), the superuser answers.
		conn, err = c.ConnectPrivileged(ctx, config.SuperuserRole)
		if err != nil {
			return err
		}
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sqlPing)
	return err
}

// watch restarts the postmaster whenever it exits without being asked to.
func (s *Supervisor) watch() {
	defer close(s.done)
	backoff := s.MinBackoff
	for {
		s.mu.Lock()
		exited, cmd := s.mu.exited, s.mu.cmd
		s.mu.Unlock()
		startedAt := time.Now()
		<-exited
		s.mu.Lock()
		if s.mu.stop {
			s.setStateLocked(StateStopped)
			s.mu.Unlock()
			return
		}
		s.mu.status.Restarts++
		s.mu.status.LastExit = cmd.ProcessState.String()
		s.mu.status.LastCrashAt = time.Now()
		s.setStateLocked(StateRestarting)
		s.mu.Unlock()
		if time.Since(startedAt) > time.Minute {
			backoff = s.MinBackoff
		}
		s.Log.Error("PostgreSQL exited unexpectedly; restarting.", "exit", cmd.ProcessState.String(), "backoff", backoff)
		for {
			if !s.sleepUnlessStopped(backoff) {
				return
			}
			backoff = min(backoff*2, s.MaxBackoff)
			err := s.startOnce(context.Background())
			if err == nil {
				break
			}
			s.mu.Lock()
			if s.mu.stop {
				s.setStateLocked(StateStopped)
				s.mu.Unlock()
				return
			}
			s.setStateLocked(StateRestarting)
			s.mu.status.LastExit = err.Error()
			s.mu.Unlock()
			s.Log.Error("PostgreSQL restart failed; retrying.", "error", err, "backoff", backoff)
		}
	}
}

// sleepUnlessStopped waits d; it returns false if Stop was called meanwhile.
func (s *Supervisor) sleepUnlessStopped(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		stop := s.mu.stop
		s.mu.Unlock()
		if stop {
			s.mu.Lock()
			s.setStateLocked(StateStopped)
			s.mu.Unlock()
			return false
		}
		time.Sleep(min(50*time.Millisecond, time.Until(deadline)))
	}
	return true
}

// Stop shuts PostgreSQL down: fast shutdown, then immediate, then kill.
func (s *Supervisor) Stop(timeout time.Duration) {
	s.mu.Lock()
	s.mu.stop = true
	cmd, exited := s.mu.cmd, s.mu.exited
	if s.mu.status.State == StateRunning || s.mu.status.State == StateStarting {
		s.setStateLocked(StateStopping)
	}
	s.mu.Unlock()
	if cmd != nil && exited != nil {
		signalUntilExit(cmd.Process, exited, timeout)
	}
	if s.done != nil {
		<-s.done
	}
	s.stopServerLog()
	s.mu.Lock()
	s.setStateLocked(StateStopped)
	s.mu.Unlock()
}

func signalUntilExit(p *os.Process, exited <-chan struct{}, timeout time.Duration) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGQUIT, syscall.SIGKILL} {
		_ = p.Signal(sig)
		select {
		case <-exited:
			return
		case <-time.After(timeout):
		}
	}
	<-exited
}

// stopStale stops a postmaster left running from an earlier pgshield that
// died without stopping it, so the new start does not fail on the lock file.
func (s *Supervisor) stopStale() error {
	b, err := os.ReadFile(filepath.Join(s.Cluster.Layout.PGData(), "postmaster.pid"))
	if err != nil {
		return nil
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil || pid <= 1 {
		return nil
	}
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil || !strings.HasPrefix(string(comm), "postgres") {
		return nil // stale file; postgres itself will clean it up
	}
	s.Log.Warn("Stopping a PostgreSQL left running by an earlier pgshield.", "pid", pid)
	p, _ := os.FindProcess(pid)
	for i, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGQUIT, syscall.SIGKILL} {
		_ = p.Signal(sig)
		for j := 0; j < 100; j++ { // 10 s per signal
			// Signal 0, not pidfile.Alive: PostgreSQL's own lock-file
			// check (kill(pid, 0)) counts a zombie as running, so the
			// start must wait until the old postmaster is reaped too (by
			// init after a whole-tree kill, or by this daemon when it was
			// its own child).
			if err := p.Signal(syscall.Signal(0)); err != nil {
				return nil
			}
			time.Sleep(100 * time.Millisecond)
		}
		_ = i
	}
	return fmt.Errorf("a PostgreSQL (pid %d) is still running on this data directory", pid)
}
