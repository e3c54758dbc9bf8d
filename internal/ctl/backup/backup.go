// Package backup is the controller of a server's backups: pgBackRest's
// configuration on the volume, at most one backup job at a time, listing
// the repository, archiving WAL on demand, finishing a point-in-time
// restore after PostgreSQL starts, and re-wrapping the repository's
// passphrase when the data key moves to another key-encryption key.
//
// Its locks (the job's) are leaves: nothing of another controller is
// called while one is held.
package backup

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/backup"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/ctl/conf"
	"github.com/pgshield/pgshield/internal/keys"
	"github.com/pgshield/pgshield/internal/postgres"
)

// jobs runs at most one backup at a time. The zero value is ready.
type jobs struct {
	mu     sync.Mutex
	job    *apitype.BackupJob // the current or last job; replaced, never mutated outside mu
	cancel context.CancelFunc
	done   chan struct{}
}

func (b *jobs) snapshot() *apitype.BackupJob {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.job == nil {
		return nil
	}
	j := *b.job
	return &j
}

// start runs fn in the background as a new job unless one is running.
func (b *jobs) start(typ string, fn func(ctx context.Context, progress func(float64)) (string, error), finished func(apitype.BackupJob)) (*apitype.BackupJob, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.job != nil && b.job.State == apitype.JobRunning {
		return nil, clienterr.New(apitype.CodeInvalid, "a backup is already running (job %s, started %s)", b.job.ID, b.job.StartedAt.Format(time.RFC3339))
	}
	id := make([]byte, 6)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	job := &apitype.BackupJob{ID: hex.EncodeToString(id), Type: typ, State: apitype.JobRunning, StartedAt: time.Now().UTC()}
	b.job, b.cancel, b.done = job, cancel, make(chan struct{})
	done := b.done
	go func() {
		defer close(done)
		defer cancel()
		label, err := fn(ctx, func(p float64) {
			b.mu.Lock()
			if b.job.ID == job.ID && p > b.job.Progress {
				nj := *b.job
				nj.Progress = p
				b.job = &nj
			}
			b.mu.Unlock()
		})
		b.mu.Lock()
		nj := *b.job
		now := time.Now().UTC()
		nj.FinishedAt = &now
		if err != nil {
			nj.State, nj.Error = apitype.JobFailed, err.Error()
		} else {
			nj.State, nj.Label, nj.Progress = apitype.JobSucceeded, label, 100
			nj.Type = labelType(label, nj.Type)
		}
		b.job = &nj
		b.mu.Unlock()
		finished(nj)
	}()
	j := *job
	return &j, nil
}

// stop cancels a running job and waits for it to end.
func (b *jobs) stop() {
	b.mu.Lock()
	cancel, done := b.cancel, b.done
	b.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// labelType reads the backup type from a pgBackRest label's last letter.
func labelType(label, fallback string) string {
	switch {
	case strings.HasSuffix(label, "F"):
		return "full"
	case strings.HasSuffix(label, "D"):
		return "diff"
	case strings.HasSuffix(label, "I"):
		return "incr"
	}
	return fallback
}

// Config is what the controller needs.
type Config struct {
	Layout  config.Layout
	Log     *slog.Logger
	Conf    *conf.Store
	Cluster *postgres.Cluster
	Audit   func(audit.Event)
	// KeyState is the data key's state (apitype.Key*): backups need the
	// volume, where their configuration lives.
	KeyState func() string
	// PGStatus is the supervised PostgreSQL's state.
	PGStatus func() postgres.Status
	// Pool is the service role's pool (search path pinned).
	Pool func() *pgxpool.Pool
}

// Controller is the backups of one server.
type Controller struct {
	c    Config
	jobs jobs // at most one backup running
}

// New makes the controller.
func New(c Config) *Controller {
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Audit == nil {
		c.Audit = func(audit.Event) {}
	}
	return &Controller{c: c}
}

// Stop cancels a running backup and waits for it to end: before
// PostgreSQL stops, and before the volume is locked or unmounted.
func (b *Controller) Stop() { b.jobs.stop() }

// backupTool runs pgBackRest as the postgres OS user with this server's
// configuration on the volume.
func (b *Controller) backupTool() *backup.Tool {
	return &backup.Tool{Command: b.c.Cluster.User.Command, Config: b.c.Layout.BackupConfig(), Log: b.c.Log.With("component", "backup")}
}

// Settings are the pgBackRest settings of the server in l: its
// repository, its cluster, its work directory on the volume.
func Settings(l config.Layout, cfg *config.Config) backup.Settings {
	return backup.Settings{RepoPath: cfg.BackupRepo(l), PGData: l.PGData(), SocketDir: l.SocketDir(),
		PGPort: cfg.PGPort, WorkDir: l.BackupWorkDir(), ProcessMax: min(4, max(1, runtime.NumCPU()))}
}

// Prepare runs before PostgreSQL starts, with the volume unlocked:
// it makes the repository directory, creates the repository passphrase on
// first use (servers initialized before backups existed get theirs here),
// and writes pgBackRest's configuration on the volume from the wrapped
// passphrase, which is the only copy kept outside the volume.
func (b *Controller) Prepare(ctx context.Context) error {
	cfg := b.c.Conf.Get()
	u := b.c.Cluster.User
	uid, gid := int(u.UID), int(u.GID)
	if err := backup.PrepareDir(cfg.BackupRepo(b.c.Layout), uid, gid); err != nil {
		return fmt.Errorf("backup repository: %w", err)
	}
	if err := backup.PrepareWorkDir(b.c.Layout.BackupWorkDir(), uid, gid); err != nil {
		return fmt.Errorf("backup work directory: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	k, err := keys.Open(ctx, cfg.KeyURI)
	if err != nil {
		return err
	}
	defer k.Close()
	path := b.c.Layout.WrappedBackupKey()
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		if err := backup.CreateWrappedPassphrase(ctx, k, path); err != nil {
			return err
		}
		b.c.Log.Info("Created the backup repository's passphrase, wrapped by the key-encryption key.")
	}
	// An existing envelope that does not unwrap is an error, never a
	// reason to make a new passphrase: the repository's backups need it.
	pass, err := backup.UnwrapPassphrase(ctx, k, path)
	if err != nil {
		return fmt.Errorf("unwrapping the backup passphrase: %w", err)
	}
	defer keys.Wipe(pass)
	rendered, err := backup.Render(Settings(b.c.Layout, cfg), pass)
	if err != nil {
		return err
	}
	defer keys.Wipe(rendered)
	return backup.WriteConfig(b.c.Layout.BackupConfig(), rendered, uid, gid)
}

// AfterStart finishes a point-in-time restore if one is pending,
// then makes sure the repository's stanza exists so that WAL archiving and
// backups work. Only a failed recovery is an error.
func (b *Controller) AfterStart(ctx context.Context, sup *postgres.Supervisor) error {
	if err := b.finishRestore(ctx, sup); err != nil {
		return err
	}
	b.EnsureStanza(ctx)
	return nil
}

// EnsureStanza makes sure the repository's stanza exists, logging a
// failure: a cluster node calls it each time it becomes the primary (a
// stanza cannot be made from a standby).
func (b *Controller) EnsureStanza(ctx context.Context) {
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := b.backupTool().EnsureStanza(sctx); err != nil {
		b.c.Log.Error("Setting up the backup repository failed; WAL archiving and backups will fail until it works.", "error", err)
	}
}

// restoreRecoveryLimit bounds how long a restored cluster may take to
// replay WAL to its target.
const restoreRecoveryLimit = 24 * time.Hour

// finishRestore waits, when this server was made by `backup restore` and
// has not yet recovered, until PostgreSQL has replayed the archived WAL to
// the target and promoted, so that no session sees the cluster halfway.
// Then it drops the recovery settings and the configuration that named
// the source repository (and held its passphrase).
func (b *Controller) finishRestore(ctx context.Context, sup *postgres.Supervisor) error {
	if _, err := os.Stat(b.c.Layout.BackupRestoreConfig()); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	b.c.Log.Info("Recovering the restored cluster to its target; sessions wait until it is done.")
	start := time.Now()
	for {
		if st := sup.Status(); st.Restarts > 0 || st.State == postgres.StateStopped {
			return fmt.Errorf("recovery of the restored cluster failed: %s", LastFatal(b.c.Layout.PGLogDir()))
		}
		inRecovery, err := b.superQueryBool(ctx, sqlInRecovery)
		if err == nil && !inRecovery {
			break
		}
		if time.Since(start) > restoreRecoveryLimit {
			return fmt.Errorf("the restored cluster did not finish recovery within %s", restoreRecoveryLimit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	// pgBackRest wrote these into postgresql.auto.conf; they only apply
	// during recovery and restore_command names the source repository.
	for _, s := range []string{"restore_command", "recovery_target", "recovery_target_time", "recovery_target_action"} {
		if err := b.superExec(ctx, sqlAlterSystemReset(s)); err != nil {
			b.c.Log.Warn("Resetting a recovery setting failed.", "setting", s, "error", err)
		}
	}
	if err := b.superExec(ctx, sqlReloadConf); err != nil {
		b.c.Log.Warn("Reloading the configuration failed.", "error", err)
	}
	if err := os.Remove(b.c.Layout.BackupRestoreConfig()); err != nil {
		return fmt.Errorf("removing the restore configuration: %w", err)
	}
	b.c.Log.Info("The restored cluster finished recovery and was promoted.", "took", time.Since(start).Round(time.Millisecond))
	b.c.Audit(audit.Event{Type: "backup.restore.recovered", Outcome: audit.OutcomeSuccess,
		Fields: map[string]any{"took_ms": time.Since(start).Milliseconds()}})
	return nil
}

// superConnect reaches PostgreSQL as the superuser over the private socket
// (search path pinned), as pgBackRest does; the catalog is not up yet when
// this is needed.
func (b *Controller) superConnect(ctx context.Context) (*pgx.Conn, error) {
	return b.c.Cluster.ConnectPrivileged(ctx, config.SuperuserRole)
}

func (b *Controller) superQueryBool(ctx context.Context, q string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := b.superConnect(ctx)
	if err != nil {
		return false, err
	}
	defer conn.Close(context.Background())
	var v bool
	err = conn.QueryRow(ctx, q).Scan(&v)
	return v, err
}

func (b *Controller) superExec(ctx context.Context, q string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := b.superConnect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, q)
	return err
}

// LastFatal returns the last FATAL or PANIC line of PostgreSQL's newest
// log file, which says why recovery stopped.
func LastFatal(logDir string) string {
	matches, _ := filepath.Glob(filepath.Join(logDir, "postgresql-*.log"))
	sort.Strings(matches)
	// With the server log streamed into the audit log there is no file to
	// read: say where the message went.
	const fallback = "PostgreSQL stopped during recovery; its messages are in the audit log ('pgshield audit tail') and the daemon log"
	if len(matches) == 0 {
		return fallback
	}
	f, err := os.Open(matches[len(matches)-1])
	if err != nil {
		return fallback
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > 64<<10 {
		_, _ = f.Seek(fi.Size()-64<<10, io.SeekStart)
	}
	b, _ := io.ReadAll(io.LimitReader(f, 64<<10))
	last := ""
	for _, line := range bytes.Split(b, []byte("\n")) {
		if bytes.Contains(line, []byte("FATAL:")) || bytes.Contains(line, []byte("PANIC:")) {
			last = string(line)
		}
	}
	if last == "" {
		return fallback
	}
	return backup.CleanMessage(last)
}

// ready refuses backup work unless the data is available and
// PostgreSQL runs: the configuration lives on the volume.
func (b *Controller) ready(needPostgres bool) error {
	if st := b.c.KeyState(); st != apitype.KeyAvailable {
		return clienterr.New(apitype.CodeUnavailable, "backups are not available while the server is %s", st)
	}
	if needPostgres {
		if ps := b.c.PGStatus(); ps.State != postgres.StateRunning {
			return clienterr.New(apitype.CodeUnavailable, "PostgreSQL is not running (%s)", ps.State)
		}
	}
	return nil
}

func (b *Controller) retentionDays() int {
	n, err := strconv.Atoi(b.c.Conf.Params().Values["pgshield.backup_retention_days"])
	if err != nil || n < 1 {
		return 7
	}
	return n
}

// List lists the backup repository for `pgshield backup list`.
func (b *Controller) List(ctx context.Context) (apitype.BackupList, error) {
	if err := b.ready(false); err != nil {
		return apitype.BackupList{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out := apitype.BackupList{Repository: b.c.Conf.Get().BackupRepo(b.c.Layout), Cipher: backup.CipherType,
		RetentionDays: b.retentionDays(), Backups: []apitype.Backup{}}
	info, err := b.backupTool().Info(ctx)
	if errors.Is(err, backup.ErrNoStanza) {
		return out, nil
	}
	if err != nil {
		return apitype.BackupList{}, clienterr.New(apitype.CodeUnavailable, "reading the backup repository: %v", err)
	}
	out.Cipher, out.WALMin, out.WALMax, out.Running = info.Cipher, info.WALMin, info.WALMax, info.BackupRunning
	for _, bk := range info.Backups {
		// The same fields: this fails to compile if one type changes alone.
		out.Backups = append(out.Backups, apitype.Backup(bk))
	}
	return out, nil
}

// Create starts a backup of type typ (full, diff or incr; empty is
// full) in the background and returns its job.
func (b *Controller) Create(typ string) (*apitype.BackupJob, error) {
	if typ == "" {
		typ = "full"
	}
	switch typ {
	case "full", "diff", "incr":
	default:
		return nil, clienterr.New(apitype.CodeInvalid, "invalid backup type %q: use full, diff or incr", typ)
	}
	if err := b.ready(true); err != nil {
		return nil, err
	}
	retention := b.retentionDays()
	job, err := b.jobs.start(typ, func(ctx context.Context, progress func(float64)) (string, error) {
		tool := b.backupTool()
		// A repository made after `up` (or emptied) gets its stanza here.
		if err := tool.EnsureStanza(ctx); err != nil {
			return "", err
		}
		return tool.Backup(ctx, typ, retention, progress)
	}, func(j apitype.BackupJob) {
		ev := audit.Event{Type: "backup.create", Outcome: audit.OutcomeSuccess,
			Fields: map[string]any{"job": j.ID, "type": j.Type, "label": j.Label}}
		if j.State != apitype.JobSucceeded {
			ev.Outcome, ev.Reason = audit.OutcomeFailure, j.Error
			b.c.Log.Error("Backup failed.", "job", j.ID, "error", j.Error)
		} else {
			b.c.Log.Info("Backup done.", "job", j.ID, "label", j.Label, "type", j.Type,
				"took", j.FinishedAt.Sub(j.StartedAt).Round(time.Millisecond))
		}
		b.c.Audit(ev)
	})
	if err != nil {
		return nil, err
	}
	b.c.Log.Info("Backup started.", "job", job.ID, "type", job.Type)
	return job, nil
}

// Job returns the current or last backup job.
func (b *Controller) Job() (*apitype.BackupJob, error) {
	j := b.jobs.snapshot()
	if j == nil {
		return nil, clienterr.New(apitype.CodeNotFound, "no backup was started since pgshield started")
	}
	return j, nil
}

// ArchiveWAL closes the current WAL segment and waits until it is in the
// repository, so that a restore can reach every commit made so far.
func (b *Controller) ArchiveWAL(ctx context.Context) (apitype.ArchiveResult, error) {
	if err := b.ready(true); err != nil {
		return apitype.ArchiveResult{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	var wal string
	// pg_walfile_name of the switch position names the segment just
	// closed (a position on a boundary belongs to the previous segment).
	if err := b.c.Pool().QueryRow(ctx, sqlSwitchWAL).Scan(&wal); err != nil {
		return apitype.ArchiveResult{}, clienterr.New(apitype.CodeUnavailable, "switching WAL: %v", err)
	}
	for {
		var last, failed string
		err := b.c.Pool().QueryRow(ctx, sqlArchiverState).Scan(&last, &failed)
		if err != nil {
			return apitype.ArchiveResult{}, clienterr.New(apitype.CodeUnavailable, "reading the archiver's state: %v", err)
		}
		// Names of one timeline sort in WAL order; a later timeline sorts after.
		if last >= wal {
			return apitype.ArchiveResult{WAL: wal}, nil
		}
		select {
		case <-ctx.Done():
			msg := "WAL segment " + wal + " was not archived within 90 s"
			if failed != "" {
				msg += " (archiving " + failed + " failed; see PostgreSQL's log)"
			}
			return apitype.ArchiveResult{}, clienterr.New(apitype.CodeUnavailable, "%s", msg)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// RewrapKey prepares the backup passphrase wrapped by the key at
// newURI, proved to unwrap, and returns the function that saves it. The
// passphrase itself does not change, so every backup in the repository
// (taken before the rotation or after) still restores, and the old
// wrapping is not kept.
func (b *Controller) RewrapKey(ctx context.Context, oldURI, newURI string) (func() error, error) {
	path := b.c.Layout.WrappedBackupKey()
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return func() error { return nil }, nil
	}
	oldK, err := keys.Open(ctx, oldURI)
	if err != nil {
		return nil, err
	}
	defer oldK.Close()
	pass, err := backup.UnwrapPassphrase(ctx, oldK, path)
	if err != nil {
		return nil, fmt.Errorf("unwrapping the backup passphrase: %w", err)
	}
	defer keys.Wipe(pass)
	newK, err := keys.Open(ctx, newURI)
	if err != nil {
		return nil, err
	}
	defer newK.Close()
	w, err := newK.WrapKey(ctx, keys.PurposeBackup, pass)
	if err != nil {
		return nil, fmt.Errorf("wrapping the backup passphrase with the new key: %w", err)
	}
	check, err := newK.UnwrapKey(ctx, w)
	if err != nil {
		return nil, fmt.Errorf("the new key cannot unwrap the backup passphrase it wrapped: %w", err)
	}
	same := subtle.ConstantTimeCompare(check, pass) == 1
	keys.Wipe(check)
	if !same {
		return nil, errors.New("the new key unwrapped a different backup passphrase")
	}
	return func() error { return w.Save(path) }, nil
}
