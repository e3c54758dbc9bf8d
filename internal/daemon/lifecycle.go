package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/wire"
)

// lifecycle is the state of a shutdown or a restart of PostgreSQL, and
// what the service manager is told (README "Running as a service").
type lifecycle struct {
	// serveCtx is the gateway's: it outlives Run's context by the drain,
	// so sessions can finish after a SIGTERM; endServe ends it.
	serveCtx context.Context
	endServe context.CancelFunc
	// phase is what new sessions are refused for (phaseRunning: nothing).
	phase atomic.Int32
	// restartMu lets one restart run at a time.
	restartMu sync.Mutex
	// notifySocket is $NOTIFY_SOCKET as the daemon found it; the variable
	// is removed so that no child process inherits it.
	notifySocket string
}

// stopAfterGrace bounds what a stop takes after the grace: PostgreSQL's
// fast shutdown (30 s before SIGQUIT, 30 s more before SIGKILL), closing
// the volume and the rest.
const stopAfterGrace = 2 * time.Minute

const (
	phaseRunning int32 = iota
	phaseShuttingDown
	phaseRestarting
)

// adminShutdown is what a session still open at the end of the grace
// gets, in PostgreSQL's words for a fast shutdown or pg_terminate_backend.
func adminShutdown() *pgproto3.ErrorResponse {
	return wire.ErrorMessage(wire.CodeAdminShutdown, "terminating connection due to administrator command")
}

// initLifecycle is called by Run before anything starts.
func (d *Daemon) initLifecycle(ctx context.Context) {
	d.life.serveCtx, d.life.endServe = context.WithCancel(context.WithoutCancel(ctx))
	d.life.notifySocket = os.Getenv("NOTIFY_SOCKET")
	os.Unsetenv("NOTIFY_SOCKET")
}

// refusal refuses new sessions, with PostgreSQL's SQLSTATE for it
// (57P03, through the gateway's Available check), while the server shuts
// down or PostgreSQL restarts.
func (d *Daemon) refusal() error {
	switch d.life.phase.Load() {
	case phaseShuttingDown:
		return errors.New("the database system is shutting down")
	case phaseRestarting:
		return errors.New("the database system is restarting (pgshield restart); try again in a moment")
	}
	return nil
}

// shutdown runs when Run's context ends (SIGTERM, SIGINT, pgshield down):
// the gateway stops accepting, open sessions get pgshield.shutdown_grace
// to finish, those left are ended with 57P01 and the pool is closed; then
// Run stops the components in reverse order, PostgreSQL with a fast
// shutdown (its shutdown checkpoint) and the volume locked last.
func (d *Daemon) shutdown() {
	grace := d.conf.Params().ShutdownGrace()
	// The unit's TimeoutStopSec counts from here; the grace comes on top
	// (sd_notify(3): EXTEND_TIMEOUT_USEC).
	d.notify(fmt.Sprintf("STOPPING=1\nEXTEND_TIMEOUT_USEC=%d", (grace + stopAfterGrace).Microseconds()))
	d.life.phase.Store(phaseShuttingDown)
	defer d.life.endServe()
	gw := d.gateway()
	if gw != nil {
		gw.StopAccepting()
	}
	// A restart under way finishes first (none begins from now on): the
	// components must not stop while it starts PostgreSQL.
	d.life.restartMu.Lock()
	d.life.restartMu.Unlock() // a barrier, not a critical section
	if gw == nil {
		return
	}
	d.Log.Info("Shutting down: new connections refused; open sessions may finish.",
		"grace", grace.String(), "sessions", gw.Stats().Active)
	if n := gw.Drain(grace, adminShutdown()); n > 0 {
		d.Log.Info("Sessions still open at the end of the grace were terminated.", "sessions", n, "sqlstate", wire.CodeAdminShutdown)
	}
}

// restart is `pgshield restart`: PostgreSQL stops (fast shutdown, after
// the sessions had pgshield.shutdown_grace to end) and starts again with
// the volume unlocked and the daemon running, so parameters that are
// pending restart take effect. New sessions are refused with 57P03
// meanwhile. It holds the keys controller's lock, like every transition
// of the volume, so a key lock or revalidation waits for it.
func (d *Daemon) restart(ctx context.Context) (apitype.RestartResult, error) {
	if !d.life.restartMu.TryLock() {
		return apitype.RestartResult{}, clienterr.New(apitype.CodeUnavailable, "a restart is already running")
	}
	defer d.life.restartMu.Unlock()
	if d.life.phase.Load() == phaseShuttingDown {
		return apitype.RestartResult{}, clienterr.New(apitype.CodeUnavailable, "the server is shutting down")
	}
	var res apitype.RestartResult
	err := d.keys.Locked(func() error {
		if st := d.keys.State(); st != apitype.KeyAvailable {
			return clienterr.New(apitype.CodeUnavailable, "the server is %s: PostgreSQL is not running (see 'pgshield key show')", st)
		}
		if !d.life.phase.CompareAndSwap(phaseRunning, phaseRestarting) {
			return clienterr.New(apitype.CodeUnavailable, "the server is shutting down")
		}
		defer d.life.phase.CompareAndSwap(phaseRestarting, phaseRunning)
		start := time.Now()
		grace := d.conf.Params().ShutdownGrace()
		d.Log.Info("Restarting PostgreSQL: new connections refused; open sessions may finish.", "grace", grace.String())
		gw := d.gateway()
		if gw != nil {
			res.SessionsTerminated = gw.Drain(grace, adminShutdown())
			defer gw.EndDrain()
		}
		d.backups.Stop() // a backup running now would fail with PostgreSQL gone
		d.pg.Stop(30 * time.Second)
		d.pg.ResetPool()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Minute)
		defer cancel()
		if err := d.pg.Start(sctx); err != nil {
			d.Log.Error("PostgreSQL did not start again.", "error", err)
			d.audit.Record(audit.Event{Type: "server.restart", Outcome: audit.OutcomeFailure, Reason: err.Error()})
			return clienterr.New(apitype.CodeUnavailable, "PostgreSQL did not start again: %v", err)
		}
		res.Result = "restarted"
		res.PostgresPID = d.pg.PID()
		res.Seconds = time.Since(start).Seconds()
		d.Log.Info("PostgreSQL restarted.", "pid", res.PostgresPID, "sessions_terminated", res.SessionsTerminated,
			"seconds", res.Seconds)
		d.audit.Record(audit.Event{Type: "server.restart", Outcome: audit.OutcomeSuccess,
			Fields: map[string]any{"postgres_pid": res.PostgresPID, "sessions_terminated": res.SessionsTerminated}})
		return nil
	})
	return res, err
}

// notify tells the service manager state (sd_notify(3): a datagram to
// $NOTIFY_SOCKET, sent by systemd for Type=notify); nothing when the
// daemon was not started by one.
func (d *Daemon) notify(state string) {
	if d.life.notifySocket == "" {
		return
	}
	if err := sdNotify(d.life.notifySocket, state); err != nil {
		d.Log.Warn("Telling the service manager failed.", "state", state, "error", err)
	}
}

func sdNotify(socket, state string) error {
	// A leading '@' names an abstract socket; Go's net package maps it.
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: socket, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	_, err = c.Write([]byte(state))
	return err
}

// applyLogLevel sets the log's level from pgshield.log_level; live.
func (d *Daemon) applyLogLevel(level slog.Level) {
	if d.LogLevel != nil {
		d.LogLevel.Set(level)
	}
}

// Restart is POST /v1/restart.
func (a api) Restart(ctx context.Context) (apitype.RestartResult, error) { return a.d.restart(ctx) }

// lifecycleState is the status' state: Restarting or ShuttingDown while
// that runs, otherwise state.
func (d *Daemon) lifecycleState(state string) string {
	switch d.life.phase.Load() {
	case phaseShuttingDown:
		return "ShuttingDown"
	case phaseRestarting:
		return "Restarting"
	}
	return state
}

// pendingRestart names PostgreSQL's parameters that wait for a restart;
// nil when there are none or PostgreSQL cannot say now.
func (d *Daemon) pendingRestart(ctx context.Context) []string {
	if d.keys.State() != apitype.KeyAvailable || d.life.phase.Load() != phaseRunning || d.pg.Catalog() == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	ps, err := d.params.Parameters(ctx)
	if err != nil {
		return nil
	}
	var names []string
	for _, p := range ps {
		if p.PendingRestart {
			names = append(names, p.Name)
		}
	}
	return names
}
