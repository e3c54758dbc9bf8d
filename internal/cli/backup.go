package cli

import (
	"context"
	"fmt"
	"io"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/backup"
	"github.com/pgshield/pgshield/internal/keys"
	"github.com/pgshield/pgshield/internal/provision"
)

func newBackup(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "backup", Short: "Encrypted backups and point-in-time restore (pgBackRest)"}
	cmd.AddCommand(newBackupCreate(g), newBackupList(g), newBackupRestore(g))
	return cmd
}

func newBackupCreate(g *globals) *cobra.Command {
	var typ string
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "create",
		Short: "Take a backup now (full by default; the first one is always full)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireRoot(); err != nil {
				return err
			}
			switch typ {
			case "full", "diff", "incr":
			default:
				return usageError{fmt.Errorf("invalid --type %q: use full, diff or incr", typ)}
			}
			c := g.client()
			job, err := c.CreateBackup(cmd.Context(), typ)
			if err != nil {
				return err
			}
			progress := newProgress(cmd.ErrOrStderr(), g.output != "json", "Backing up ("+typ+")")
			deadline := time.Now().Add(timeout)
			for job.State == apitype.JobRunning {
				if time.Now().After(deadline) {
					return fmt.Errorf("backup job %s still running after %s; follow it with 'pgshield backup list'", job.ID, timeout)
				}
				select {
				case <-cmd.Context().Done():
					return cmd.Context().Err()
				case <-time.After(250 * time.Millisecond):
				}
				ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
				cur, err := c.BackupJob(ctx)
				cancel()
				if err != nil {
					return fmt.Errorf("following backup job %s: %w", job.ID, err)
				}
				if cur.ID != job.ID {
					return fmt.Errorf("backup job %s is gone (the daemon restarted?); see 'pgshield backup list'", job.ID)
				}
				job = cur
				progress.update(job.Progress)
			}
			progress.done()
			if job.State != apitype.JobSucceeded {
				return fmt.Errorf("backup failed: %s", job.Error)
			}
			return emit(cmd.OutOrStdout(), g, job, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "label\t%s\n", job.Label)
				fmt.Fprintf(tw, "type\t%s\n", job.Type)
				if job.FinishedAt != nil {
					fmt.Fprintf(tw, "took\t%s\n", job.FinishedAt.Sub(job.StartedAt).Round(time.Millisecond))
				}
			})
		},
	}
	c.Flags().StringVar(&typ, "type", "full", "full, diff (changes since the last full) or incr (since the last backup)")
	c.Flags().DurationVar(&timeout, "timeout", 24*time.Hour, "how long to wait for the backup to finish")
	return c
}

func newBackupList(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the backups in the repository, oldest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			bl, err := g.client().Backups(cmd.Context())
			if err != nil {
				return err
			}
			return emit(cmd.OutOrStdout(), g, bl.Backups, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "LABEL\tTYPE\tSTART\tSTOP\tSIZE\tSTORED\tWAL START\tWAL STOP")
				for _, b := range bl.Backups {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", b.Label, b.Type,
						b.Start.Local().Format(time.RFC3339), b.Stop.Local().Format(time.RFC3339),
						humanBytes(b.Size), humanBytes(b.RepoSize), b.WALStart, b.WALStop)
				}
			})
		},
	}
}

// RestoreResult is what `backup restore -o json` prints.
type RestoreResult struct {
	DataDir  string    `json:"data_dir"`
	ServerID string    `json:"server_id"`
	Listen   string    `json:"listen"`
	Backup   string    `json:"backup"`
	Recovery string    `json:"recovery"` // default, immediate or time
	Target   time.Time `json:"target,omitzero"`
	KeyURI   string    `json:"key_uri"` // redacted
}

func newBackupRestore(g *globals) *cobra.Command {
	var o provision.RestoreOptions
	c := &cobra.Command{
		Use:   "restore --target-data-dir D [--to-time T] [--backup LABEL]",
		Short: "Restore into a new server in directory D, as of time T (point-in-time restore)",
		Long: `Restore a backup into a NEW pgshield server in directory D: its own encrypted
volume, a new data key (wrapped by the same customer-managed key, or by a new
system-managed key), a new server id and certificate. The source server keeps
running. Start D with 'pgshield up --data-dir D': PostgreSQL replays the
archived WAL up to T, then promotes.

--to-time takes RFC 3339 (2026-11-25T14:36:36Z) or PostgreSQL's format
(2026-11-25 14:36:36.25+00); without a zone it is local time. Without it, the
restore reaches the last archived WAL. With only --backup, it stops as soon as
that backup is consistent. If the source server is running, its current WAL is
archived first so that every commit made so far can be reached.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireRoot(); err != nil {
				return err
			}
			errOut := cmd.ErrOrStderr()
			var prog *progress // pgBackRest's, while it restores
			o.Source = g.layout()
			o.Report = func(e provision.Event) {
				switch e.Kind {
				case provision.StepStarted, provision.Notice:
					if e.Message != "" {
						fmt.Fprintln(errOut, e.Message)
					}
				case provision.ProgressStarted:
					prog = newProgress(errOut, g.output != "json", e.Message)
				case provision.Progress:
					prog.update(e.Percent)
				case provision.ProgressDone:
					prog.done()
				}
			}
			// Ctrl-C stops pgBackRest and removes the half-made server.
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			res, err := provision.Restore(ctx, o)
			if err != nil {
				return err
			}
			plan := res.Restore
			what := "to the end of the archived WAL"
			switch plan.Type {
			case backup.RestoreImmediate:
				what = "to the end of the backup"
			case backup.RestoreTime:
				what = "to " + backup.TargetString(plan.Target)
			}
			rr := RestoreResult{DataDir: res.DataDir, ServerID: res.ServerID, Listen: res.Listen, Backup: plan.Backup.Label,
				Recovery: plan.Type, Target: plan.Target, KeyURI: keys.RedactURI(res.KeyURI)}
			return emit(cmd.OutOrStdout(), g, rr, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "Restored backup %s (%s) into %s, recovering %s.\n", plan.Backup.Label, plan.Backup.Type, res.DataDir, what)
				fmt.Fprintf(tw, "New server %s, gateway %s, key-encryption key %s.\n", res.ServerID, res.Listen, rr.KeyURI)
				fmt.Fprintf(tw, "Start it with: pgshield up --data-dir %s\n", res.DataDir)
				fmt.Fprintln(tw, "(at its first start PostgreSQL replays the archived WAL to the target, then promotes)")
			})
		},
	}
	f := c.Flags()
	f.StringVar(&o.TargetDir, "target-data-dir", "", "data directory of the new server (must not exist or be empty)")
	f.StringVar(&o.ToTime, "to-time", "", "recover up to this time (default: the end of the archived WAL)")
	f.StringVar(&o.Backup, "backup", "", "restore from this backup (default: the newest one before --to-time)")
	f.StringVar(&o.Listen, "listen", "", "gateway address ADDR:PORT of the new server (default: the source's address on a free port)")
	_ = c.MarkFlagRequired("target-data-dir")
	return c
}

// progress prints a long operation's percentage on stderr, at most every
// 10 points, for people (not with -o json).
type progress struct {
	w       io.Writer
	on      bool
	what    string
	printed float64
	start   time.Time
}

func newProgress(w io.Writer, on bool, what string) *progress {
	if on {
		fmt.Fprintf(w, "%s...\n", what)
	}
	return &progress{w: w, on: on, what: what, printed: -1, start: time.Now()}
}

func (p *progress) update(pct float64) {
	if !p.on || pct < p.printed+10 {
		return
	}
	p.printed = pct - float64(int(pct)%10)
	fmt.Fprintf(p.w, "%s: %3.0f%% (%s)\n", p.what, pct, time.Since(p.start).Round(time.Second))
}

func (p *progress) done() {
	if p.on {
		fmt.Fprintf(p.w, "%s: done in %s\n", p.what, time.Since(p.start).Round(100*time.Millisecond))
	}
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTP"[exp])
}
