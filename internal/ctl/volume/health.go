package volume

import (
	"fmt"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/health"
	"github.com/pgshield/pgshield/internal/storage"
)

// Health reports the filesystems the volume needs nearly full (thresholds
// in internal/health): the volume itself, and the host filesystem under
// its image or cipher directory, which also gets a warning when a sparse
// image could outgrow what it has left. Nothing is reported while the
// volume is locked: it has no usage to read.
func (s *Controller) Health() []apitype.HealthCondition {
	if s.keys == nil || s.keys.State() != apitype.KeyAvailable {
		return nil
	}
	return volumeHealth(s.atRest.volume())
}

func volumeHealth(b storage.Backend) []apitype.HealthCondition {
	var out []apitype.HealthCondition
	// gocryptfs's Usage is the host filesystem's, reported below.
	if b.Kind() != storage.BackendGocryptfs {
		if total, free, err := b.Usage(); err == nil {
			out = append(out, health.Disk("volume_nearly_full", "the encrypted volume (grow it with 'pgshield storage resize')", total, free)...)
		}
	}
	total, avail, err := b.HostSpace()
	if err != nil || total <= 0 {
		return out
	}
	out = append(out, health.Disk("host_nearly_full", "the host filesystem holding "+hostPath(b), uint64(total), uint64(max(avail, 0)))...)
	if size, allocated, err := b.Size(); err == nil && size-allocated > avail {
		out = append(out, apitype.HealthCondition{Name: "host_overcommitted", Severity: apitype.SeverityWarning,
			Message: fmt.Sprintf("the sparse volume image may still take %s on the host filesystem holding %s, which has %s available: writes to the volume fail once it is full",
				bytesText(size-allocated), hostPath(b), bytesText(avail))})
	}
	return out
}
