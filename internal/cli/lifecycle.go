package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgshield/pgshield/internal/apiclient"
	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/config"
	// The daemon runs in this process with `up --foreground`.
	"github.com/pgshield/pgshield/internal/daemon"
	"github.com/pgshield/pgshield/internal/pidfile"
)

func newUp(g *globals) *cobra.Command {
	var foreground bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Start the server: PostgreSQL, the gateway and the management API",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireRoot(); err != nil {
				return err
			}
			l := g.layout()
			if _, err := config.Load(l); err != nil {
				return err
			}
			if pid, alive := pidfile.Read(l.PIDFile()); alive {
				return fmt.Errorf("pgshield is already running on %s (pid %d)", l.Root, pid)
			}
			if foreground {
				return runForeground(cmd.Context(), l)
			}
			return startBackground(cmd, g, l, timeout)
		},
	}
	cmd.Flags().BoolVar(&foreground, "foreground", false, "run in the foreground (for systemd and tests)")
	cmd.Flags().DurationVar(&timeout, "timeout", 3*time.Minute, "how long to wait for the server to become ready")
	return cmd
}

func runForeground(ctx context.Context, l config.Layout) error {
	// One JSON object per line (journald, log shippers); the level is
	// pgshield.log_level, set by the daemon at start and on change.
	level := new(slog.LevelVar)
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	// What still logs through the log package (net/http's servers) comes
	// out as JSON too.
	slog.SetDefault(log)
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// The daemon stops listening for SIGHUP (reload) when the shutdown
	// begins; one sent during the drain (systemctl reload) must not end
	// it: SIGHUP stays caught, and is dropped, until it exits.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	d := &daemon.Daemon{Layout: l, Log: log, LogLevel: level}
	if err := d.Run(ctx); err != nil {
		// Its last line is JSON like every other.
		log.Error("pgshield stopped with an error.", "error", err)
		return loggedError{err}
	}
	return nil
}

// loggedError is an error the daemon has logged already: Execute does
// not print it again (its exit code stays the error's).
type loggedError struct{ error }

func (e loggedError) Unwrap() error { return e.error }

// startBackground re-runs this binary as `up --foreground` in a new session
// with its output in the daemon log, and waits until it answers as ready.
func startBackground(cmd *cobra.Command, g *globals, l config.Layout, timeout time.Duration) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(l.DaemonLog()), 0o700); err != nil {
		return err
	}
	logf, err := os.OpenFile(l.DaemonLog(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return err
	}
	defer devnull.Close()
	child := exec.Command(self, "up", "--foreground", "--data-dir", l.Root)
	child.Stdin, child.Stdout, child.Stderr = devnull, logf, logf
	child.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	child.Env = os.Environ()
	if err := child.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- child.Wait() }()
	c := g.client()
	deadline := time.After(timeout)
	for {
		select {
		case err := <-exited:
			return fmt.Errorf("pgshield exited during startup (%v); see %s", err, l.DaemonLog())
		case <-deadline:
			return fmt.Errorf("pgshield did not become ready within %s; see %s", timeout, l.DaemonLog())
		case <-time.After(200 * time.Millisecond):
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Second)
		st, err := c.Status(ctx)
		cancel()
		if err == nil && st.State == "Inaccessible" {
			return fmt.Errorf("pgshield is up (pid %d) but Inaccessible: %s; see 'pgshield key show'", st.PID, st.Key.Reason)
		}
		if err == nil && st.State == "Available" {
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "pgshield is up (pid %d), PostgreSQL %s behind the gateway on %s.\n", st.PID, st.Postgres.Version, st.Listen)
			cfg, err := config.Load(l)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "Connect with:\n  %s\n", connInfo(cfg, l, cfg.AdminUser, "postgres").PSQL)
			return nil
		}
	}
}

func newDown(g *globals) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Stop the server (sessions end, PostgreSQL shuts down cleanly)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireRoot(); err != nil {
				return err
			}
			l := g.layout()
			cfg, err := config.Load(l)
			if err != nil {
				return err
			}
			pid, alive := pidfile.Read(l.PIDFile())
			if !alive {
				fmt.Fprintln(cmd.OutOrStdout(), "pgshield is not running.")
				return nil
			}
			if err := g.client().Shutdown(cmd.Context()); err != nil {
				// The API may be wedged; a signal still drains and stops.
				_ = syscall.Kill(pid, syscall.SIGTERM)
			}
			if timeout == 0 {
				// Sessions get pgshield.shutdown_grace before anything stops.
				timeout = 2 * time.Minute
				if p, err := config.ResolveParams(cfg.Parameters); err == nil {
					timeout += p.ShutdownGrace()
				}
			}
			deadline := time.Now().Add(timeout)
			for time.Now().Before(deadline) {
				if !pidfile.Alive(pid) {
					fmt.Fprintln(cmd.OutOrStdout(), "pgshield stopped.")
					return nil
				}
				time.Sleep(100 * time.Millisecond)
			}
			return fmt.Errorf("pgshield (pid %d) did not stop within %s", pid, timeout)
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "how long to wait for the server to stop (default: pgshield.shutdown_grace + 2m)")
	return cmd
}

func newStatus(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the server's state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l := g.layout()
			cfg, err := config.Load(l)
			if err != nil {
				return err
			}
			st, err := g.client().Status(cmd.Context())
			if errors.Is(err, apiclient.ErrNotRunning) {
				st = &apitype.Status{State: "Stopped", Listen: cfg.Listen, AdminUser: cfg.AdminUser, DataDir: l.Root}
				st.Postgres.State = "Stopped"
			} else if err != nil {
				return err
			}
			return emit(cmd.OutOrStdout(), g, st, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "state\t%s\n", st.State)
				fmt.Fprintf(tw, "data directory\t%s\n", st.DataDir)
				fmt.Fprintf(tw, "listen\t%s\n", st.Listen)
				fmt.Fprintf(tw, "administrator\t%s\n", st.AdminUser)
				if st.State == "Stopped" {
					return
				}
				printHealth(tw, st.Health)
				fmt.Fprintf(tw, "pid\t%d\n", st.PID)
				fmt.Fprintf(tw, "uptime\t%s\n", (time.Duration(st.UptimeSeconds) * time.Second).String())
				fmt.Fprintf(tw, "postgresql\t%s, %s since %s (pid %d)\n", st.Postgres.Version, st.Postgres.State,
					st.Postgres.Since.Format(time.RFC3339), st.Postgres.PID)
				if len(st.PendingRestart) > 0 {
					fmt.Fprintf(tw, "pending restart\t%s (run 'pgshield restart')\n", strings.Join(st.PendingRestart, ", "))
				}
				if st.Postgres.Restarts > 0 {
					fmt.Fprintf(tw, "postgresql restarts\t%d (last at %s: %s)\n", st.Postgres.Restarts,
						st.Postgres.LastCrashAt.Format(time.RFC3339), st.Postgres.LastExit)
				}
				fmt.Fprintf(tw, "require_secure_transport\t%s\n", st.TLS.RequireSecureTransport)
				fmt.Fprintf(tw, "ssl_min_protocol_version\t%s\n", st.TLS.MinProtocolVersion)
				fmt.Fprintf(tw, "ssl_max_protocol_version\t%s\n", st.TLS.MaxProtocolVersion)
				fmt.Fprintf(tw, "connections\t%d open, %d since start\n", st.Connections.Active, st.Connections.Total)
				fips := "off"
				if st.FIPS140 {
					fips = "on (Go cryptography in its FIPS 140-3 module)"
				}
				fmt.Fprintf(tw, "fips140\t%s\n", fips)
			})
		},
	}
}
