package volume

import (
	"bufio"
	"context"
	"errors"
	"os"
	"strings"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/storage"
)

// repairRetry is the least time between two repairs of the volume's
// filesystem, and between two "waiting for room" messages.
const repairRetry = 30 * time.Second

// mountsFile is read to tell whether the volume's filesystem gave up
// (a variable for tests).
var mountsFile = "/proc/self/mounts"

// failedReadOnly reports whether the ext4 mounted at mount went read-only
// by itself: with errors=remount-ro, ext4 does so when a write of its own
// metadata fails, as when the host filesystem under a sparse image is
// full (the loop device cannot allocate the image's blocks). Kernels since
// 6.6 say "emergency_ro" and keep "rw"; older ones remount "ro". A
// filesystem shut down (EXT4_IOC_SHUTDOWN, "shutdown") fails every write
// the same way until it is mounted again.
func failedReadOnly(mount string) bool {
	f, err := os.Open(mountsFile)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 || storage.UnescapeMountInfo(fields[1]) != mount {
			continue
		}
		for _, o := range strings.Split(fields[3], ",") {
			if o == "ro" || o == "emergency_ro" || o == "shutdown" {
				return true
			}
		}
	}
	return false
}

// mounted reports whether anything is mounted at mount.
func mounted(mount string) bool {
	f, err := os.Open(mountsFile)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) >= 2 && storage.UnescapeMountInfo(fields[1]) == mount {
			return true
		}
	}
	return false
}

// repairIfFailed brings back a volume whose filesystem went read-only
// after a failed write, once the host filesystem has room again: sessions
// end, PostgreSQL stops, the volume is unmounted and checked
// (e2fsck -f -p, which replays the journal), mounted and unlocked again,
// and PostgreSQL starts and replays its WAL. What PostgreSQL had synced
// was written before the failure, so nothing acknowledged is lost.
// Only image volumes: a --storage-path filesystem is the operator's.
func (s *Controller) repairIfFailed(ctx context.Context, hostFull bool) {
	b := s.atRest.volume()
	mount := s.c.Layout.VolumeMount()
	if b.CanResize() != nil || s.keys.State() != apitype.KeyAvailable || !failedReadOnly(mount) {
		return
	}
	// The message while waiting and the repairs are limited apart: a
	// repair may follow the message at once, when the host has room.
	s.stats.mu.Lock()
	last := &s.stats.lastRepair
	if hostFull {
		last = &s.stats.lastRepairWait
	}
	due := time.Since(*last) >= repairRetry
	if due {
		*last = time.Now()
	}
	s.stats.mu.Unlock()
	if !due {
		return
	}
	if hostFull {
		s.c.Log.Error("The volume's filesystem went read-only after a failed write; it is repaired once the host filesystem under its image has room.")
		return
	}
	_ = s.keys.Locked(func() error {
		if s.keys.State() != apitype.KeyAvailable || !failedReadOnly(mount) {
			return nil
		}
		s.repairLocked(ctx)
		return nil
	})
}

// repairLocked is repairIfFailed under the key lock.
func (s *Controller) repairLocked(ctx context.Context) {
	start := time.Now()
	s.c.Log.Error("The volume's filesystem went read-only after a failed write: stopping PostgreSQL, checking the filesystem, mounting it again.")
	s.server.Quiesce("terminating connection because the storage is being repaired", nil)
	rctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	err := s.atRest.Close(rctx)
	if !mounted(s.c.Layout.VolumeMount()) {
		// Resize to the size it has: offline, that is e2fsck -f -p and a
		// resize2fs with nothing to do.
		b := s.atRest.volume()
		cur, _, serr := b.Size()
		if serr == nil {
			serr = b.Resize(rctx, cur)
		}
		err = serr
	} else if err == nil {
		err = errors.New("the volume is still mounted after closing it")
	}
	err = errors.Join(err, s.reopenLocked(rctx))
	fields := map[string]any{"downtime_seconds": time.Since(start).Seconds()}
	if err != nil {
		s.c.Log.Error("Repairing the volume failed; retrying.", "error", err, "retry_in", repairRetry)
		s.c.Audit(audit.Event{Type: "storage.repair", Outcome: audit.OutcomeFailure, Reason: err.Error(), Fields: fields})
		return
	}
	s.c.Log.Info("Volume repaired and PostgreSQL restarted.", "downtime", time.Since(start))
	s.c.Audit(audit.Event{Type: "storage.repair", Outcome: audit.OutcomeSuccess, Fields: fields})
}
