package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgshield/pgshield/internal/api"
	"github.com/pgshield/pgshield/internal/backup"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/daemon"
	"github.com/pgshield/pgshield/internal/keys"
	"github.com/pgshield/pgshield/internal/netpolicy"
	"github.com/pgshield/pgshield/internal/postgres"
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
			var job daemon.BackupJob
			if err := c.Do(cmd.Context(), "POST", "/v1/backups", daemon.BackupCreateRequest{Type: typ}, &job); err != nil {
				return err
			}
			progress := newProgress(cmd.ErrOrStderr(), g.output != "json", "Backing up ("+typ+")")
			deadline := time.Now().Add(timeout)
			for job.State == daemon.JobRunning {
				if time.Now().After(deadline) {
					return fmt.Errorf("backup job %s still running after %s; follow it with 'pgshield backup list'", job.ID, timeout)
				}
				select {
				case <-cmd.Context().Done():
					return cmd.Context().Err()
				case <-time.After(250 * time.Millisecond):
				}
				var cur daemon.BackupJob
				ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
				err := c.Do(ctx, "GET", "/v1/backups/job", nil, &cur)
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
			if job.State != daemon.JobSucceeded {
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
			var bl daemon.BackupList
			if err := g.client().Do(cmd.Context(), "GET", "/v1/backups", nil, &bl); err != nil {
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
	var targetDir, toTime, label, listen string
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
		RunE: func(cmd *cobra.Command, _ []string) (retErr error) {
			if err := requireRoot(); err != nil {
				return err
			}
			r := &restorer{g: g, out: cmd.OutOrStdout(), errOut: cmd.ErrOrStderr(), label: label}
			if err := r.check(targetDir, toTime, listen); err != nil {
				return err
			}
			// Ctrl-C stops pgBackRest and removes the half-made server.
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return r.run(ctx)
		},
	}
	f := c.Flags()
	f.StringVar(&targetDir, "target-data-dir", "", "data directory of the new server (must not exist or be empty)")
	f.StringVar(&toTime, "to-time", "", "recover up to this time (default: the end of the archived WAL)")
	f.StringVar(&label, "backup", "", "restore from this backup (default: the newest one before --to-time)")
	f.StringVar(&listen, "listen", "", "gateway address ADDR:PORT of the new server (default: the source's address on a free port)")
	_ = c.MarkFlagRequired("target-data-dir")
	return c
}

// restorer does `backup restore`, in this process (as root) and without
// the source's daemon, so that a server whose volume is lost or whose
// daemon is down can still be restored: it needs the source's data
// directory files (configuration, wrapped passphrase), its repository and
// its key-encryption key.
type restorer struct {
	g           *globals
	out, errOut io.Writer
	label       string

	src    config.Layout
	srcCfg *config.Config
	dst    config.Layout
	target time.Time
	listen string
	host   string
}

func (r *restorer) check(targetDir, toTime, listen string) error {
	r.src = r.g.layout()
	var err error
	if r.srcCfg, err = config.Load(r.src); err != nil {
		return err
	}
	if strings.TrimSpace(targetDir) == "" {
		return usageError{errors.New("--target-data-dir is empty")}
	}
	dst, err := filepath.Abs(targetDir)
	if err != nil {
		return usageError{err}
	}
	srcRoot, _ := filepath.Abs(r.src.Root)
	if within(dst, srcRoot) || within(srcRoot, dst) {
		return usageError{fmt.Errorf("--target-data-dir %s overlaps the source data directory %s", dst, srcRoot)}
	}
	if repo, _ := filepath.Abs(r.srcCfg.BackupRepo(r.src)); within(dst, repo) || within(repo, dst) {
		return usageError{fmt.Errorf("--target-data-dir %s overlaps the backup repository %s", dst, repo)}
	}
	if fi, err := os.Stat(dst); err == nil {
		if !fi.IsDir() {
			return api.Errorf(api.CodeInvalid, "target data directory %s exists and is not a directory", dst)
		}
		entries, err := os.ReadDir(dst)
		if err != nil {
			return err
		}
		if len(entries) > 0 {
			return api.Errorf(api.CodeInvalid, "target data directory %s is not empty: restore makes a new server and needs an empty or new directory", dst)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	r.dst = config.Layout{Root: dst}
	if toTime != "" {
		t, err := parseTargetTime(toTime)
		if err != nil {
			return usageError{err}
		}
		if t.After(time.Now()) {
			return api.Errorf(api.CodeInvalid, "--to-time %s is in the future", t.Format(time.RFC3339Nano))
		}
		r.target = t
	}
	if listen == "" {
		host, _, err := net.SplitHostPort(r.srcCfg.Listen)
		if err != nil {
			return err
		}
		port, err := freePort(host)
		if err != nil {
			return fmt.Errorf("finding a free port on %s for the new server (choose one with --listen): %w", host, err)
		}
		listen = net.JoinHostPort(host, strconv.Itoa(port))
	}
	host, err := checkListen(listen)
	if err != nil {
		return err
	}
	if listen == r.srcCfg.Listen {
		return usageError{fmt.Errorf("--listen %s is the source server's address", listen)}
	}
	r.listen, r.host = listen, host
	return nil
}

// within reports whether p is dir or below it.
func within(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

func freePort(host string) (int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// targetLayouts are the --to-time formats accepted; those without a zone
// are local time.
var targetLayouts = []struct {
	layout string
	zone   bool
}{
	{time.RFC3339Nano, true},
	{"2006-01-02 15:04:05.999999999Z07:00", true},
	{"2006-01-02 15:04:05.999999999Z07", true}, // PostgreSQL: 2026-11-25 14:36:36.25765+00
	{"2006-01-02 15:04:05.999999999 MST", true},
	{"2006-01-02T15:04:05.999999999", false},
	{"2006-01-02 15:04:05.999999999", false},
	{"2006-01-02 15:04", false},
}

func parseTargetTime(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	for _, l := range targetLayouts {
		var t time.Time
		var err error
		if l.zone {
			t, err = time.Parse(l.layout, s)
		} else {
			t, err = time.ParseInLocation(l.layout, s, time.Local)
		}
		if err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("invalid --to-time %q: use RFC 3339 (2026-11-25T14:36:36Z) or 2026-11-25 14:36:36[.ffffff][+00]", s)
}

func (r *restorer) run(ctx context.Context) (retErr error) {
	// Ask the source, if it runs, to archive its current WAL: then every
	// commit made so far can be reached.
	var ar daemon.ArchiveResult
	switch err := r.g.client().Do(ctx, "POST", "/v1/backups/archive-wal", nil, &ar); {
	case err == nil:
	case errors.Is(err, api.ErrNotRunning):
		fmt.Fprintln(r.errOut, "The source server is not running: restoring from the WAL archived so far.")
	default:
		fmt.Fprintf(r.errOut, "Warning: the source's current WAL could not be archived (%v); restoring from the WAL archived so far.\n", err)
	}
	// Unwrap the source's repository passphrase before anything is made: a
	// key that no longer works stops here.
	srcK, err := keys.Open(ctx, r.srcCfg.KeyURI)
	if err != nil {
		return fmt.Errorf("opening the source's key-encryption key: %w", err)
	}
	pass, err := backup.UnwrapPassphrase(ctx, srcK, r.src.WrappedBackupKey())
	srcK.Close()
	if errors.Is(err, os.ErrNotExist) {
		return api.Errorf(api.CodeNotFound, "the source server has no backup repository yet (take a backup with 'pgshield backup create')")
	}
	if err != nil {
		return fmt.Errorf("unwrapping the source's backup passphrase: %w", err)
	}
	defer keys.Wipe(pass)

	// Choose the backup from the running source's list when it answers,
	// so that a bad label or time fails before anything is made; it is
	// chosen again from the repository itself below.
	var bl daemon.BackupList
	if err := r.g.client().Do(ctx, "GET", "/v1/backups", nil, &bl); err == nil {
		if _, err := backup.ChooseBackup(bl.Backups, r.label, r.target); err != nil {
			return planError(err)
		}
	}

	u, err := postgres.LookupOSUser(r.srcCfg.PGOSUser)
	if err != nil {
		return err
	}
	dst := r.dst
	_, statErr := os.Stat(dst.Root)
	existed := statErr == nil
	cfg := &config.Config{Listen: r.listen, AdminUser: r.srcCfg.AdminUser, ServiceRole: r.srcCfg.ServiceRole,
		PGBinDir: r.srcCfg.PGBinDir, PGPort: r.srcCfg.PGPort, PGOSUser: r.srcCfg.PGOSUser,
		TLSCertFile: dst.ServerCert(), TLSKeyFile: dst.ServerKey(), CAFile: dst.CACert(),
		Parameters: maps.Clone(r.srcCfg.Parameters), StorageSize: r.srcCfg.StorageSize,
		// The source's backend (a host without fscrypt restores with
		// gocryptfs too); a source on a --storage-path filesystem gets an
		// image here, as the new server cannot share that directory.
		Storage: r.srcCfg.Storage}
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return err
	}
	idb := make([]byte, 8)
	if _, err := rand.Read(idb); err != nil {
		return err
	}
	cfg.ServerID = hex.EncodeToString(idb)
	// A customer-managed key wraps the new data key too; a system-managed
	// key is per server, so the new server gets its own and does not
	// depend on the source's.
	systemKey := r.srcCfg.KeyURI == keys.SystemKeyURI(daemon.SystemKEKPath(r.srcCfg.ServerID))
	if !systemKey {
		cfg.KeyURI = r.srcCfg.KeyURI
	}
	atRest := &daemon.AtRest{Layout: dst, Cfg: cfg}
	// A failed restore leaves nothing behind. Deferred calls run last in,
	// first out: the volume is closed before the directory is removed.
	defer func() {
		if retErr == nil {
			return
		}
		if entries, err := os.ReadDir(dst.Root); err == nil {
			for _, e := range entries {
				os.RemoveAll(filepath.Join(dst.Root, e.Name()))
			}
		}
		if !existed {
			os.Remove(dst.Root)
		}
		if systemKey {
			os.Remove(daemon.SystemKEKPath(cfg.ServerID))
		}
	}()
	defer func() {
		if err := atRest.Close(context.Background()); err != nil && retErr == nil {
			retErr = fmt.Errorf("closing the new server's encrypted volume: %w", err)
		}
	}()
	if err := createLayout(dst, cfg, r.host, true); err != nil {
		return err
	}
	fmt.Fprintln(r.errOut, "Creating the new server's encrypted volume...")
	if err := atRest.Create(ctx); err != nil {
		return err
	}
	cluster := &postgres.Cluster{Layout: dst, Cfg: cfg, User: u, Guard: atRest.Guard}
	if err := cluster.PrepareDirs(); err != nil {
		return err
	}
	uid, gid := int(u.UID), int(u.GID)
	if err := backup.PrepareWorkDir(dst.BackupWorkDir(), uid, gid); err != nil {
		return err
	}
	// The configuration that reads the source's repository lives on the
	// new volume until the new server has recovered (the daemon then
	// removes it): PostgreSQL's restore_command needs it at the first start.
	settings := daemon.BackupSettings(dst, cfg)
	settings.RepoPath = r.srcCfg.BackupRepo(r.src)
	conf, err := backup.Render(settings, pass)
	if err != nil {
		return err
	}
	err = backup.WriteConfig(dst.BackupRestoreConfig(), conf, uid, gid)
	keys.Wipe(conf)
	if err != nil {
		return err
	}
	tool := &backup.Tool{Command: u.Command, Config: dst.BackupRestoreConfig()}
	info, err := tool.Info(ctx)
	if errors.Is(err, backup.ErrNoStanza) {
		return api.Errorf(api.CodeNotFound, "%v", backup.ErrNoBackups)
	}
	if err != nil {
		return err
	}
	plan, err := backup.ChooseBackup(info.Backups, r.label, r.target)
	if err != nil {
		return planError(err)
	}
	what := "to the end of the archived WAL"
	switch plan.Type {
	case backup.RestoreImmediate:
		what = "to the end of the backup"
	case backup.RestoreTime:
		what = "to " + backup.TargetString(plan.Target)
	}
	progress := newProgress(r.errOut, r.g.output != "json", "Restoring "+plan.Backup.Label)
	if err := tool.Restore(ctx, backup.RestoreOptions{PGData: dst.PGData(), Plan: plan}, progress.update); err != nil {
		return err
	}
	progress.done()
	// The restored data directory carries the source's pgshield.conf.
	if err := cluster.WriteManagedFiles(); err != nil {
		return err
	}
	// The new server's own repository gets a passphrase of its own.
	dstK, err := keys.Open(ctx, cfg.KeyURI)
	if err != nil {
		return err
	}
	err = backup.CreateWrappedPassphrase(ctx, dstK, dst.WrappedBackupKey())
	dstK.Close()
	if err != nil {
		return err
	}
	// The network rules come along, as on a managed service's restore.
	pol, err := daemon.LoadPolicy(r.src)
	if err != nil {
		return fmt.Errorf("the source's network rules: %w", err)
	}
	if err := netpolicy.CheckListen(pol.Mode, r.listen); err != nil {
		return usageError{fmt.Errorf("--listen: %w", err)}
	}
	if err := daemon.SavePolicy(dst, pol); err != nil {
		return err
	}
	if err := config.Save(dst, cfg); err != nil {
		return err
	}
	res := RestoreResult{DataDir: dst.Root, ServerID: cfg.ServerID, Listen: cfg.Listen, Backup: plan.Backup.Label,
		Recovery: plan.Type, Target: plan.Target, KeyURI: keys.RedactURI(cfg.KeyURI)}
	return emit(r.out, r.g, res, func(tw *tabwriter.Writer) {
		fmt.Fprintf(tw, "Restored backup %s (%s) into %s, recovering %s.\n", plan.Backup.Label, plan.Backup.Type, dst.Root, what)
		fmt.Fprintf(tw, "New server %s, gateway %s, key-encryption key %s.\n", cfg.ServerID, cfg.Listen, res.KeyURI)
		fmt.Fprintf(tw, "Start it with: pgshield up --data-dir %s\n", dst.Root)
		fmt.Fprintln(tw, "(at its first start PostgreSQL replays the archived WAL to the target, then promotes)")
	})
}

// planError turns ChooseBackup's errors into the CLI's exit codes.
func planError(err error) error {
	switch {
	case errors.Is(err, backup.ErrUnknownLabel), errors.Is(err, backup.ErrNoBackups):
		return api.Errorf(api.CodeNotFound, "%v", err)
	case errors.Is(err, backup.ErrTargetTooEarly):
		return api.Errorf(api.CodeInvalid, "%v", err)
	}
	return err
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

// checkBackupPath validates init's --backup-path: absolute, outside the
// encrypted volume (a lost volume must leave the backups), and new or
// empty. It returns the cleaned path, or "" for the default.
func checkBackupPath(l config.Layout, p string) (string, error) {
	if p == "" {
		return "", nil
	}
	if !filepath.IsAbs(p) {
		return "", usageError{fmt.Errorf("invalid --backup-path %q: use an absolute path", p)}
	}
	p = filepath.Clean(p)
	root, _ := filepath.Abs(l.Root)
	if p == root || within(p, filepath.Join(root, "volume")) || within(root, p) {
		return "", usageError{fmt.Errorf("invalid --backup-path %q: it must be outside the encrypted volume and not contain the data directory", p)}
	}
	if strings.ContainsAny(p, "\n\r\x00") {
		return "", usageError{fmt.Errorf("invalid --backup-path %q", p)}
	}
	if entries, err := os.ReadDir(p); err == nil && len(entries) > 0 {
		return "", usageError{fmt.Errorf("invalid --backup-path %s: not empty", p)}
	}
	return p, nil
}
