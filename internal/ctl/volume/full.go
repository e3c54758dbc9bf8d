package volume

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/storage"
)

// Which filesystem is full (apitype.StorageInfo.Full, the storage.full
// record's "filesystem" field).
const (
	FullVolume = "volume"
	FullHost   = "host_filesystem"
)

const (
	// fullVolumeMin: a volume with less than this free (or 1% of it,
	// whichever is more) counts as full. ext4 answers ENOSPC with a few
	// blocks still free (what it holds back for metadata and delayed
	// allocation), so "full" cannot mean zero.
	fullVolumeMin uint64 = 8 << 20
	// fullHostMin: a filesystem holding the image or the cipher directory
	// with less than this available counts as full: a sparse image takes
	// host blocks as the volume fills, and the next one may not be there.
	fullHostMin int64 = 32 << 20
)

// fullness says which filesystem is full, if any, and how: the volume
// itself (PostgreSQL's writes fail with 53100 "No space left on device")
// or the one under its image or cipher directory (the volume may still
// show free space, but writing it needs host blocks that are not there:
// the loop device fails the write with an I/O error, gocryptfs with
// ENOSPC). The host filesystem is named first: growing the volume cannot
// help then, freeing space there can.
func fullness(b storage.Backend) (which, detail string) {
	if total, avail, err := b.HostSpace(); err == nil && total > 0 && avail < fullHostMin {
		return FullHost, fmt.Sprintf("the filesystem holding %s has %s available of %s: free space there (the volume's writes need it)",
			hostPath(b), bytesText(avail), bytesText(total))
	}
	if b.Kind() == storage.BackendGocryptfs {
		return "", "" // its Usage is the host filesystem, checked above
	}
	total, free, err := b.Usage()
	if err != nil || total == 0 {
		return "", ""
	}
	if free < max(fullVolumeMin, total/100) {
		return FullVolume, fmt.Sprintf("the volume has %s free of %s: grow it with 'pgshield storage resize --size S'",
			bytesText(int64(free)), bytesText(int64(total)))
	}
	return "", ""
}

// hostPath is the file or directory whose filesystem HostSpace measures.
func hostPath(b storage.Backend) string {
	st := b.Status(context.Background())
	switch {
	case st.Image != "":
		return filepath.Dir(st.Image)
	case st.CipherDir != "":
		return st.CipherDir
	}
	return "the volume"
}

// checkFull records the moment a filesystem the volume needs becomes full
// and the moment it is not any more: in the daemon's log at once (it is
// not on the volume) and as storage.full / storage.full_cleared audit
// records, which wait in memory while the audit log, on the volume,
// cannot be written (README "Audit": write failures and fail-closed).
func (s *Controller) checkFull() (which string) {
	if s.keys.State() != apitype.KeyAvailable {
		return ""
	}
	which, detail := fullness(s.atRest.volume())
	s.stats.mu.Lock()
	prev := s.stats.full
	s.stats.full = which
	s.stats.mu.Unlock()
	if which == prev {
		return which
	}
	if prev != "" {
		s.c.Log.Info("Storage has room again.", "filesystem", prev)
		s.c.Audit(audit.Event{Type: "storage.full_cleared", Outcome: audit.OutcomeSuccess,
			Fields: map[string]any{"filesystem": prev}})
	}
	if which != "" {
		s.c.Log.Error("Storage is full: PostgreSQL's writes fail until there is room.", "filesystem", which, "detail", detail)
		s.c.Audit(audit.Event{Type: "storage.full", Outcome: audit.OutcomeFailure, Reason: detail,
			Fields: map[string]any{"filesystem": which}})
	}
	return which
}
