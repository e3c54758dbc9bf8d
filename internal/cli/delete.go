package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgshield/pgshield/internal/ctl/volume"
	"github.com/pgshield/pgshield/internal/pidfile"
	"github.com/pgshield/pgshield/internal/provision"
)

func newDelete(g *globals) *cobra.Command {
	var yes, deleteBackups, orphanedKeys bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "delete",
		Short: "Delete the server: stop it, destroy its volume and keys (backups are kept unless --delete-backups)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireRoot(); err != nil {
				return err
			}
			if orphanedKeys {
				return deleteOrphanedKeys(cmd, g, yes)
			}
			l := g.layout()
			d, _, err := provision.PlanDelete(l, deleteBackups)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if !yes {
				describeDeletion(out, d, "This would delete")
				return usageError{errors.New("nothing was deleted: add --yes to delete the server")}
			}
			if err := stopForDelete(cmd.Context(), g, l.PIDFile(), timeout); err != nil {
				return err
			}
			report := func(e provision.Event) {
				if e.Kind == provision.StepStarted && e.Message != "" && g.output != "json" {
					fmt.Fprintln(out, e.Message)
				}
			}
			d, err = provision.Delete(cmd.Context(), l, deleteBackups, report)
			if err != nil {
				return fmt.Errorf("deleting the server (run delete again to finish): %w", err)
			}
			if g.output == "json" {
				return emit(out, g, d, nil)
			}
			if !d.Audited {
				fmt.Fprintf(out, "The deletion is not in the audit log: %s.\n", d.AuditNote)
			}
			describeDeletion(out, d, "Deleted")
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&yes, "yes", false, "delete without asking (required)")
	f.BoolVar(&deleteBackups, "delete-backups", false, "delete the backup repository too (and with it the last way to restore the data)")
	f.BoolVar(&orphanedKeys, "orphaned-keys", false, "instead: move to quarantine the system-managed key files in "+volume.SystemKeyDir+" of servers whose data directory now holds another server")
	f.DurationVar(&timeout, "timeout", 2*time.Minute, "how long to wait for a running server to stop")
	return cmd
}

func describeDeletion(w io.Writer, d provision.Deletion, verb string) {
	fmt.Fprintf(w, "%s the server in %s (id %s):\n", verb, d.DataDir, d.ServerID)
	if d.Volume == "" {
		fmt.Fprintf(w, "  - not the volume: %s\n", d.VolumeNote)
	} else {
		fmt.Fprintf(w, "  - the encrypted volume %s and its wrapped data key %s: the data cannot be decrypted afterwards, even from a copy of the volume\n", d.Volume, d.WrappedDataKey)
	}
	if d.SystemKey != "" {
		if d.KeptSystemKey {
			fmt.Fprintf(w, "  - not the system-managed key-encryption key %s: the kept backups need it\n", d.SystemKey)
		} else {
			fmt.Fprintf(w, "  - the system-managed key-encryption key %s\n", d.SystemKey)
		}
	}
	if d.CustomerKey != "" {
		fmt.Fprintf(w, "  - not the customer-managed key %s: pgshield cannot delete a key in your KMS; only the data key it wrapped is deleted\n", d.CustomerKey)
	}
	if d.BackupsKept {
		var kit []string
		for _, k := range d.Kept {
			if k != d.Backups && k != d.SystemKey {
				kit = append(kit, k)
			}
		}
		fmt.Fprintf(w, "  - not the backups in %s: they are kept, with what restoring them needs (%s); delete --delete-backups --yes removes them\n",
			d.Backups, strings.Join(kit, ", "))
	} else {
		fmt.Fprintf(w, "  - the backup repository %s\n", d.Backups)
	}
	if d.BackupsKept {
		fmt.Fprintf(w, "  - everything else in the data directory %s\n", d.DataDir)
	} else {
		fmt.Fprintf(w, "  - the data directory %s\n", d.DataDir)
	}
}

// stopForDelete stops a running daemon as `down` does.
func stopForDelete(ctx context.Context, g *globals, pidFile string, timeout time.Duration) error {
	pid, alive := pidfile.Read(pidFile)
	if !alive {
		return nil
	}
	if err := g.client().Shutdown(ctx); err != nil {
		_ = syscall.Kill(pid, syscall.SIGTERM)
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if !pidfile.Alive(pid) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("pgshield (pid %d) did not stop within %s: nothing was deleted", pid, timeout)
}

// deleteOrphanedKeys lists (without --yes: exit 2) or moves to quarantine
// the key files whose data directory now holds another server. Key files
// with no owner file, or whose directory cannot be found, are never moved.
func deleteOrphanedKeys(cmd *cobra.Command, g *globals, yes bool) error {
	out := cmd.OutOrStdout()
	scan, err := provision.OrphanedKeys(volume.SystemKeyDir)
	if err != nil {
		return err
	}
	if yes {
		scan, err = provision.RemoveOrphanedKeys(volume.SystemKeyDir)
		if err != nil {
			return err
		}
	}
	if g.output == "json" {
		if err := emit(out, g, scan, nil); err != nil {
			return err
		}
	} else {
		verb := "Would move"
		if yes {
			verb = "Moved"
		}
		for _, o := range scan.Orphans {
			fmt.Fprintf(out, "%s %s to %s (server %s; %s now holds another server)\n", verb, o.Path,
				volume.SystemKeyDir+"/quarantine", o.ServerID, o.DataDir)
		}
		for _, o := range scan.Unverified {
			fmt.Fprintf(out, "Kept %s (server %s): %s cannot be found from here, which does not prove the server gone (another mount namespace, an unmounted filesystem, a moved directory)\n", o.Path, o.ServerID, o.DataDir)
		}
		for _, u := range scan.Unknown {
			fmt.Fprintf(out, "Kept %s: no owner file says which data directory it belongs to\n", u)
		}
		fmt.Fprintf(out, "%d orphaned, %d in use, %d unverified, %d of unknown owner.\n", len(scan.Orphans), scan.InUse, len(scan.Unverified), len(scan.Unknown))
		if !yes && len(scan.Orphans) > 0 {
			// The owner file holds the path init was given.
			fmt.Fprintln(out, "A server whose data directory was moved and another server made at its old path is listed too: its key is its only way in. Check the list before --yes; a moved key can be moved back from the quarantine.")
		}
	}
	if !yes && len(scan.Orphans) > 0 {
		return usageError{errors.New("nothing was moved: add --yes to move the orphaned key files to quarantine")}
	}
	return nil
}
