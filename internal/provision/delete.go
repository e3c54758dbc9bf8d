package provision

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/ctl/volume"
	"github.com/pgshield/pgshield/internal/keys"
	"github.com/pgshield/pgshield/internal/pidfile"
	"github.com/pgshield/pgshield/internal/storage"
)

// Deletion says what `pgshield delete` removes and what it keeps.
type Deletion struct {
	DataDir  string `json:"data_dir"`
	ServerID string `json:"server_id"`
	// Volume is the ciphertext removed: the image, the gocryptfs cipher
	// directory, or the volume's directory on --storage-path.
	Volume string `json:"volume"`
	// WrappedDataKey is the only copy of the volume's data key (wrapped);
	// removing it is what makes the volume's blocks unreadable for good.
	WrappedDataKey string `json:"wrapped_data_key"`
	// VolumeNote says why Volume is empty: nothing of it is touched.
	VolumeNote string `json:"volume_note,omitempty"`
	// SystemKey is the system-managed key-encryption key file; "" when
	// there is none. KeptSystemKey: it stays, as the kept backups need it.
	SystemKey     string `json:"system_key,omitempty"`
	KeptSystemKey bool   `json:"kept_system_key,omitempty"`
	// CustomerKey is the customer-managed key (redacted): pgshield cannot
	// delete it; only the data key it wrapped is removed.
	CustomerKey string `json:"customer_key,omitempty"`
	// Backups is the backup repository; BackupsKept: it stays, with what
	// restoring it needs (Kept).
	Backups     string   `json:"backups,omitempty"`
	BackupsKept bool     `json:"backups_kept"`
	Kept        []string `json:"kept,omitempty"`
	// Audited is false when the deletion could not be recorded as the
	// audit log's last record; AuditNote says why.
	Audited   bool   `json:"audited"`
	AuditNote string `json:"audit_note,omitempty"`
}

var serverIDPattern = regexp.MustCompile(`^[0-9a-f]{16}$`)

// restoreKit is what `backup restore` reads from a source's data directory
// besides the repository and the key-encryption key.
func restoreKit(l config.Layout) []string {
	return []string{l.ConfigFile(), l.NetworkFile(), l.WrappedBackupKey()}
}

// PlanDelete says what deleting the server in l would remove and keep.
func PlanDelete(l config.Layout, deleteBackups bool) (Deletion, *config.Config, error) {
	cfg, err := config.Load(l)
	if err != nil {
		return Deletion{}, nil, err
	}
	if !serverIDPattern.MatchString(cfg.ServerID) {
		// The id names a file to delete in /etc/pgshield/keys.
		return Deletion{}, nil, fmt.Errorf("the configuration in %s has an invalid server id %q", l.Root, cfg.ServerID)
	}
	root, err := filepath.Abs(l.Root)
	if err != nil {
		return Deletion{}, nil, err
	}
	// Only the link would go, the secrets behind it staying.
	if st, err := os.Lstat(root); err == nil && st.Mode()&fs.ModeSymlink != 0 {
		target, _ := filepath.EvalSymlinks(root)
		return Deletion{}, nil, fmt.Errorf("%s is a symbolic link (to %s): give the data directory's real path", root, target)
	}
	d := Deletion{DataDir: root, ServerID: cfg.ServerID, WrappedDataKey: l.WrappedDataKey()}
	_, keyErr := os.Lstat(d.WrappedDataKey)
	switch {
	case cfg.StorageBackend() == storage.BackendGocryptfs:
		d.Volume = l.GocryptfsDir()
	case cfg.StoragePath != "" && errors.Is(keyErr, fs.ErrNotExist):
		// The volume was destroyed (its data key goes first); the path
		// may hold another server's volume since: never touched again.
		d.VolumeNote = "the volume was already destroyed; nothing on the storage path " + cfg.StoragePath + " is touched"
	case cfg.StoragePath != "":
		if err := checkStorageOwner(cfg.StoragePath, cfg.ServerID); err != nil {
			return Deletion{}, nil, err
		}
		d.Volume = filepath.Join(cfg.StoragePath, storage.DataDirName)
	default:
		d.Volume = l.VolumeImage()
	}
	kek := volume.SystemKEKPath(cfg.ServerID)
	if _, err := os.Stat(kek); err == nil {
		d.SystemKey = kek
	}
	if cfg.KeyURI != keys.SystemKeyURI(kek) {
		d.CustomerKey = keys.RedactURI(cfg.KeyURI)
	}
	d.Backups = cfg.BackupPath
	if d.Backups == "" {
		d.Backups = l.DefaultBackupRepo()
	}
	if entries, err := os.ReadDir(d.Backups); err == nil && len(entries) > 0 && !deleteBackups {
		d.BackupsKept = true
		d.Kept = append(restoreKit(l), d.Backups)
		// The backup passphrase is wrapped by the key-encryption key.
		d.KeptSystemKey = d.SystemKey != ""
		if d.KeptSystemKey {
			d.Kept = append(d.Kept, d.SystemKey)
		}
	}
	return d, cfg, nil
}

// Delete destroys the stopped server in l: its volume (locked and
// detached, then its ciphertext removed), the wrapped data key (the only
// copy of the key that encrypts it, so its blocks stay unreadable wherever
// they survive), its network state in the kernel and its data directory.
// Its system-managed key-encryption key is removed too, unless backups are
// kept (deleteBackups false and the repository not empty): then the
// repository, the key and the few files restoring it needs stay. Before the
// volume is closed, a server.deleted record is appended to its audit log
// (and so is its last). Delete can be run again after a failure.
func Delete(ctx context.Context, l config.Layout, deleteBackups bool, report func(Event)) (Deletion, error) {
	d, cfg, err := PlanDelete(l, deleteBackups)
	if err != nil {
		return d, err
	}
	r := &reporter{f: report}
	if pid, alive := pidfile.Read(l.PIDFile()); alive {
		return d, fmt.Errorf("pgshield is running on %s (pid %d): stop it first", l.Root, pid)
	}
	if err := stopOrphanPostmaster(l); err != nil {
		return d, err
	}
	at := &volume.AtRest{Layout: l, Cfg: cfg}
	if _, err := os.Stat(d.WrappedDataKey); err == nil {
		r.send(Event{Kind: StepStarted, Step: "audit", Message: "Recording the deletion in the audit log..."})
		d.Audited, d.AuditNote = recordDeletion(ctx, l, cfg, at, d)
	} else {
		d.AuditNote = "the volume was already destroyed"
	}
	r.send(Event{Kind: StepStarted, Step: "volume", Message: "Destroying the encrypted volume..."})
	// Closing locks the key the volume's policy names: with no volume
	// of this server's, that could be another server's key.
	if d.Volume != "" {
		if err := at.Close(ctx); err != nil {
			return d, fmt.Errorf("closing the volume: %w", err)
		}
	}
	// Removing a directory with a mount below it would reach into that
	// filesystem: Close must have left none.
	if m := mountedUnder(d.DataDir); m != "" {
		return d, fmt.Errorf("%s is still mounted: unmount it, then run delete again", m)
	}
	// The data key goes first: from here the ciphertext is noise.
	if err := removeSynced(d.WrappedDataKey); err != nil {
		return d, err
	}
	if d.Volume != "" {
		if err := os.RemoveAll(d.Volume); err != nil {
			return d, err
		}
		if cfg.StoragePath != "" && cfg.StorageBackend() != storage.BackendGocryptfs {
			if err := removeSynced(filepath.Join(cfg.StoragePath, storageOwnerName)); err != nil {
				return d, err
			}
		}
	}
	removeKernelState(cfg.ServerID)
	if !d.KeptSystemKey {
		if d.SystemKey != "" {
			if err := removeSynced(d.SystemKey); err != nil {
				return d, err
			}
		}
		// Also when the key file went another way (e2e's stop).
		if err := removeOwner(volume.SystemKeyDir, cfg.ServerID); err != nil {
			return d, err
		}
	}
	if !d.BackupsKept {
		if !filepath.IsAbs(d.Backups) || filepath.Dir(d.Backups) == d.Backups {
			return d, fmt.Errorf("refusing to remove the backup path %q", d.Backups)
		}
		if err := os.RemoveAll(d.Backups); err != nil {
			return d, err
		}
		return d, os.RemoveAll(l.Root)
	}
	return d, removeAllBut(l.Root, d.Kept)
}

// recordDeletion appends server.deleted to the volume's audit log, opening
// the volume for it, and forwards it to syslog if the server does. It reports whether that worked and, if not, why.
func recordDeletion(ctx context.Context, l config.Layout, cfg *config.Config, at *volume.AtRest, d Deletion) (bool, string) {
	if err := at.Open(ctx); err != nil {
		return false, fmt.Sprintf("the volume could not be opened: %v", err)
	}
	// Also to syslog when the server forwards there: the log on the
	// volume goes with the volume, the copy at the receiver stays.
	var opts []audit.Option
	if p, err := config.ResolveParams(cfg.Parameters); err == nil && p.AuditSyslog != "" {
		if fwd, err := audit.NewForwarder(p.AuditSyslog, nil); err == nil {
			defer fwd.Close() // sends what is queued, for up to 2 s
			opts = append(opts, audit.WithObserver(fwd.Send))
		}
	}
	log, err := audit.Open(l.AuditDir(), opts...)
	if err != nil {
		return false, fmt.Sprintf("the audit log could not be opened: %v", err)
	}
	fields := map[string]any{"server_id": d.ServerID, "backups_kept": d.BackupsKept}
	if d.SystemKey != "" && !d.KeptSystemKey {
		fields["system_key"] = "deleted"
	}
	if d.CustomerKey != "" {
		fields["customer_key"] = "kept by its owner; the wrapped data key is deleted"
	}
	werr := log.Write(audit.Event{Type: "server.deleted", Outcome: audit.OutcomeSuccess, Fields: fields})
	if err := errors.Join(werr, log.Close()); err != nil {
		return false, fmt.Sprintf("the audit log could not be written: %v", err)
	}
	return true, ""
}

// stopOrphanPostmaster stops a PostgreSQL left running on the volume by a
// daemon that died, so the volume can be closed.
func stopOrphanPostmaster(l config.Layout) error {
	b, err := os.ReadFile(filepath.Join(l.PGData(), "postmaster.pid"))
	if err != nil {
		return nil
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil || pid <= 1 || !pidfile.Alive(pid) || !isPostmasterOf(pid, l.PGData()) {
		return nil
	}
	// Its data is about to be destroyed: an immediate shutdown will do.
	_ = syscall.Kill(pid, syscall.SIGQUIT)
	for i := 0; i < 300 && syscall.Kill(pid, 0) == nil; i++ {
		time.Sleep(100 * time.Millisecond)
	}
	if syscall.Kill(pid, 0) == nil {
		return fmt.Errorf("PostgreSQL (pid %d) still runs on the volume after 30 s", pid)
	}
	return nil
}

// isPostmasterOf reports whether pid runs the postgres binary in pgdata
// (the postmaster makes its data directory its working directory): a
// postmaster.pid left behind may name a PID some other process holds now.
func isPostmasterOf(pid int, pgdata string) bool {
	proc := "/proc/" + strconv.Itoa(pid)
	exe, err := os.Readlink(proc + "/exe")
	if err != nil || strings.TrimSuffix(filepath.Base(exe), " (deleted)") != "postgres" {
		return false
	}
	cwd, err := os.Readlink(proc + "/cwd")
	if err != nil {
		return false
	}
	want, err := filepath.EvalSymlinks(pgdata)
	return err == nil && cwd == want
}

// removeKernelState removes the nftables tables and the outbound path's
// interface that a daemon that died could not (a clean stop removes them).
func removeKernelState(id string) {
	for _, table := range []string{"pgshield_" + id, "pgshield_out_" + id} {
		if exec.Command("nft", "list", "table", "inet", table).Run() == nil {
			_ = exec.Command("nft", "delete", "table", "inet", table).Run()
		}
	}
	if dev := "pgso" + id[:8]; exec.Command("ip", "link", "show", dev).Run() == nil {
		_ = exec.Command("ip", "link", "del", dev).Run()
	}
}

func removeSynced(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if f, err := os.Open(filepath.Dir(path)); err == nil {
		_ = f.Sync()
		f.Close()
	}
	return nil
}

// removeAllBut empties dir except for the paths in keep (and the
// directories that lead to them).
func removeAllBut(dir string, keep []string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if slices.Contains(keep, p) {
			continue
		}
		if slices.ContainsFunc(keep, func(k string) bool { return strings.HasPrefix(k, p+"/") }) {
			if e.IsDir() && e.Type()&fs.ModeSymlink == 0 {
				errs = append(errs, removeAllBut(p, keep))
				continue
			}
		}
		errs = append(errs, os.RemoveAll(p))
	}
	return errors.Join(errs...)
}

// mountedUnder returns a mount point at or below dir, or "".
func mountedUnder(dir string) string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		// Field 5 is the mount point, with spaces and the like octal-escaped.
		if f := strings.Fields(l); len(f) > 4 {
			if mp := storage.UnescapeMountInfo(f[4]); mp == dir || strings.HasPrefix(mp, dir+"/") {
				return mp
			}
		}
	}
	return ""
}
