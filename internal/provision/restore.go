package provision

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pgshield/pgshield/internal/apiclient"
	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/backup"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
	backupctl "github.com/pgshield/pgshield/internal/ctl/backup"
	"github.com/pgshield/pgshield/internal/ctl/network"
	"github.com/pgshield/pgshield/internal/ctl/volume"
	"github.com/pgshield/pgshield/internal/keys"
	"github.com/pgshield/pgshield/internal/netpolicy"
	"github.com/pgshield/pgshield/internal/postgres"
)

// RestoreOptions are what `pgshield backup restore` is given.
type RestoreOptions struct {
	// Source is the data directory of the server whose backup is restored.
	Source config.Layout
	// TargetDir is the new server's data directory: new or empty.
	TargetDir string
	// ToTime is the recovery target as given (RFC 3339 or PostgreSQL's
	// format); empty means the end of the archived WAL.
	ToTime string
	// Backup is the label of the backup to restore; empty means the
	// newest one before ToTime.
	Backup string
	// Listen is the new server's gateway address; empty means the source's
	// host on a free port.
	Listen string
	// Report, when set, receives progress: step starts, notices and
	// pgBackRest's percentage. Calls never overlap.
	Report func(Event)
}

// restore is one Restore: its checked options.
type restore struct {
	o      RestoreOptions
	src    config.Layout
	srcCfg *config.Config
	dst    config.Layout
	target time.Time
	listen string
	host   string
}

// Restore restores a backup of o.Source into a NEW server in o.TargetDir,
// in this process and without the source's daemon, so that a server whose
// volume is lost or whose daemon is down can still be restored: it needs
// the source's data directory files (configuration, wrapped passphrase),
// its repository and its key-encryption key. The new server has its own
// volume, data key (wrapped by the same customer-managed key, or by a new
// system-managed key), server id and certificate. A failed or cancelled
// Restore stops pgBackRest and leaves nothing behind.
func Restore(ctx context.Context, o RestoreOptions) (Result, error) {
	r := &restore{o: o}
	if err := r.check(); err != nil {
		return Result{}, err
	}
	return r.run(ctx)
}

func (r *restore) check() error {
	r.src = r.o.Source
	var err error
	if r.srcCfg, err = config.Load(r.src); err != nil {
		return err
	}
	if strings.TrimSpace(r.o.TargetDir) == "" {
		return &OptionError{errors.New("--target-data-dir is empty")}
	}
	dst, err := filepath.Abs(r.o.TargetDir)
	if err != nil {
		return &OptionError{err}
	}
	srcRoot, _ := filepath.Abs(r.src.Root)
	if within(dst, srcRoot) || within(srcRoot, dst) {
		return optionErrorf("--target-data-dir %s overlaps the source data directory %s", dst, srcRoot)
	}
	if repo, _ := filepath.Abs(r.srcCfg.BackupRepo(r.src)); within(dst, repo) || within(repo, dst) {
		return optionErrorf("--target-data-dir %s overlaps the backup repository %s", dst, repo)
	}
	if fi, err := os.Stat(dst); err == nil {
		if !fi.IsDir() {
			return clienterr.New(apitype.CodeInvalid, "target data directory %s exists and is not a directory", dst)
		}
		entries, err := os.ReadDir(dst)
		if err != nil {
			return err
		}
		if len(entries) > 0 {
			return clienterr.New(apitype.CodeInvalid, "target data directory %s is not empty: restore makes a new server and needs an empty or new directory", dst)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	r.dst = config.Layout{Root: dst}
	if r.o.ToTime != "" {
		t, err := parseTargetTime(r.o.ToTime)
		if err != nil {
			return &OptionError{err}
		}
		if t.After(time.Now()) {
			return clienterr.New(apitype.CodeInvalid, "--to-time %s is in the future", t.Format(time.RFC3339Nano))
		}
		r.target = t
	}
	listen := r.o.Listen
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
		return optionErrorf("--listen %s is the source server's address", listen)
	}
	r.listen, r.host = listen, host
	return nil
}

func (r *restore) run(ctx context.Context) (Result, error) {
	say := &reporter{f: r.o.Report}
	client := apiclient.New(r.src.APISocket())
	// Ask the source, if it runs, to archive its current WAL: then every
	// commit made so far can be reached.
	switch _, err := client.ArchiveWAL(ctx); {
	case err == nil:
	case errors.Is(err, apiclient.ErrNotRunning):
		say.notice("The source server is not running: restoring from the WAL archived so far.")
	default:
		say.notice(fmt.Sprintf("Warning: the source's current WAL could not be archived (%v); restoring from the WAL archived so far.", err))
	}
	// Unwrap the source's repository passphrase before anything is made: a
	// key that no longer works stops here.
	srcK, err := keys.Open(ctx, r.srcCfg.KeyURI)
	if err != nil {
		return Result{}, fmt.Errorf("opening the source's key-encryption key: %w", err)
	}
	pass, err := backup.UnwrapPassphrase(ctx, srcK, r.src.WrappedBackupKey())
	srcK.Close()
	if errors.Is(err, os.ErrNotExist) {
		return Result{}, clienterr.New(apitype.CodeNotFound, "the source server has no backup repository yet (take a backup with 'pgshield backup create')")
	}
	if err != nil {
		return Result{}, fmt.Errorf("unwrapping the source's backup passphrase: %w", err)
	}
	defer keys.Wipe(pass)

	// Choose the backup from the running source's list when it answers,
	// so that a bad label or time fails before anything is made; it is
	// chosen again from the repository itself below.
	if bl, err := client.Backups(ctx); err == nil {
		if _, err := backup.ChooseBackup(fromAPIBackups(bl.Backups), r.o.Backup, r.target); err != nil {
			return Result{}, planError(err)
		}
	}

	u, err := postgres.LookupOSUser(r.srcCfg.PGOSUser)
	if err != nil {
		return Result{}, err
	}
	dst := r.dst
	cfg := &config.Config{Listen: r.listen, AdminUser: r.srcCfg.AdminUser, ServiceRole: r.srcCfg.ServiceRole,
		PGBinDir: r.srcCfg.PGBinDir, PGPort: r.srcCfg.PGPort, PGOSUser: r.srcCfg.PGOSUser,
		TLSCertFile: dst.ServerCert(), TLSKeyFile: dst.ServerKey(), CAFile: dst.CACert(),
		Parameters: maps.Clone(r.srcCfg.Parameters), StorageSize: r.srcCfg.StorageSize,
		// The source's backend (a host without fscrypt restores with
		// gocryptfs too); a source on a --storage-path filesystem gets an
		// image here, as the new server cannot share that directory.
		Storage: r.srcCfg.Storage}
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return Result{}, err
	}
	// A customer-managed key wraps the new data key too; a system-managed
	// key is per server, so the new server gets its own (an empty KeyURI)
	// and does not depend on the source's.
	if r.srcCfg.KeyURI != keys.SystemKeyURI(volume.SystemKEKPath(r.srcCfg.ServerID)) {
		cfg.KeyURI = r.srcCfg.KeyURI
	}

	s := newServer(dst, cfg, u, "the new server's encrypted volume")
	uid, gid := int(u.UID), int(u.GID)
	tool := &backup.Tool{Command: u.Command, Config: dst.BackupRestoreConfig()}
	var plan backup.Plan
	p := &Plan{Report: say.send, Steps: []Step{
		s.idStep(),
		s.layoutStep(r.host, true, true),
		s.volumeStep(),
		s.clusterDirsStep(),
		{Name: "backup work directory", Do: func(context.Context) error {
			return backup.PrepareWorkDir(dst.BackupWorkDir(), uid, gid)
		}},
		{Name: "restore configuration", Do: func(context.Context) error {
			// The configuration that reads the source's repository lives on
			// the new volume until the new server has recovered (the daemon
			// then removes it): PostgreSQL's restore_command needs it at the
			// first start.
			settings := backupctl.Settings(dst, cfg)
			settings.RepoPath = r.srcCfg.BackupRepo(r.src)
			conf, err := backup.Render(settings, pass)
			if err != nil {
				return err
			}
			err = backup.WriteConfig(dst.BackupRestoreConfig(), conf, uid, gid)
			keys.Wipe(conf)
			return err
		}},
		{Name: "choice of backup", Do: func(ctx context.Context) error {
			info, err := tool.Info(ctx)
			if errors.Is(err, backup.ErrNoStanza) {
				return clienterr.New(apitype.CodeNotFound, "%v", backup.ErrNoBackups)
			}
			if err != nil {
				return err
			}
			if plan, err = backup.ChooseBackup(info.Backups, r.o.Backup, r.target); err != nil {
				return planError(err)
			}
			return nil
		}},
		{Name: "restored data", Do: func(ctx context.Context) error {
			what := "Restoring " + plan.Backup.Label
			say.send(Event{Kind: ProgressStarted, Message: what})
			progress := func(pct float64) { say.send(Event{Kind: Progress, Message: what, Percent: pct}) }
			// Cancelling ctx (Ctrl-C) stops pgBackRest.
			if err := tool.Restore(ctx, backup.RestoreOptions{PGData: dst.PGData(), Plan: plan}, progress); err != nil {
				return err
			}
			say.send(Event{Kind: ProgressDone, Message: what})
			// The restored data directory carries the source's pgshield.conf.
			return s.cluster.WriteManagedFiles()
		}},
		{Name: "backup passphrase", Do: func(ctx context.Context) error {
			// The new server's own repository gets a passphrase of its own.
			dstK, err := keys.Open(ctx, cfg.KeyURI)
			if err != nil {
				return err
			}
			err = backup.CreateWrappedPassphrase(ctx, dstK, dst.WrappedBackupKey())
			dstK.Close()
			return err
		}},
		// The network rules come along, as on a managed service's restore.
		s.networkStep(func() (*netpolicy.Policy, error) {
			pol, err := network.LoadPolicy(r.src)
			if err != nil {
				return nil, fmt.Errorf("the source's network rules: %w", err)
			}
			if err := netpolicy.CheckListen(pol.Mode, r.listen); err != nil {
				return nil, optionErrorf("--listen: %w", err)
			}
			return pol, nil
		}),
		s.configStep(),
		s.closeStep(),
	}}
	if err := p.Run(ctx); err != nil {
		return Result{}, err
	}
	return Result{DataDir: dst.Root, ServerID: cfg.ServerID, Listen: cfg.Listen, AdminUser: cfg.AdminUser,
		KeyURI: cfg.KeyURI, Restore: &plan}, nil
}

// fromAPIBackups turns the source daemon's list back into backup.Backups;
// the two types have the same fields, so a change to one fails to compile
// here until the other follows.
func fromAPIBackups(bs []apitype.Backup) []backup.Backup {
	out := make([]backup.Backup, len(bs))
	for i, b := range bs {
		out[i] = backup.Backup(b)
	}
	return out
}
