package keys

import (
	"fmt"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
)

// Health reports the data key not Available (critical: locked or
// inaccessible, nothing is served) and a grace period running (a warning:
// the KMS cannot be reached, the server serves until the grace ends).
func (k *Controller) Health() []apitype.HealthCondition {
	st := *k.load()
	k.revalMu.Lock()
	graceStart, lastErr := k.reval.graceStart, k.reval.lastErr
	k.revalMu.Unlock()
	var grace time.Duration
	if !graceStart.IsZero() {
		grace = k.c.Conf.Params().KeyGrace
	}
	return keyHealth(st, graceStart, grace, lastErr)
}

func keyHealth(st apitype.KeyState, graceStart time.Time, grace time.Duration, lastErr string) []apitype.HealthCondition {
	var out []apitype.HealthCondition
	switch st.State {
	case apitype.KeyLocked:
		out = append(out, apitype.HealthCondition{Name: "key_locked", Severity: apitype.SeverityCritical, Since: st.Since,
			Message: "the data key was removed from the kernel ('pgshield key lock'): run 'pgshield key unlock'"})
	case apitype.KeyInaccessible:
		out = append(out, apitype.HealthCondition{Name: "key_inaccessible", Severity: apitype.SeverityCritical, Since: st.Since,
			Message: fmt.Sprintf("the data key cannot be unwrapped (%s): restore access to the key, then run 'pgshield key revalidate'", st.Reason)})
	}
	if !graceStart.IsZero() && st.State == apitype.KeyAvailable {
		out = append(out, apitype.HealthCondition{Name: "key_grace", Severity: apitype.SeverityWarning, Since: graceStart,
			Message: fmt.Sprintf("the key management service cannot be reached (%s); the server stays available until the grace period ends at %s, then becomes Inaccessible",
				lastErr, graceStart.Add(grace).UTC().Format(time.RFC3339))})
	}
	return out
}
