// Package health aggregates the conditions the controllers report (each
// controller's Health method says what is wrong with what it owns) into
// the server's overall state: ok, degraded or unavailable. It also holds
// the thresholds they share.
package health

import (
	"crypto/x509"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
)

// Thresholds. A filesystem is nearly full when the share of its space in
// use reaches DiskWarnPercent (critical at DiskCriticalPercent); a
// certificate is nearly expired within CertWarnBefore of its NotAfter.
const (
	DiskWarnPercent     = 90.0
	DiskCriticalPercent = 98.0
	CertWarnBefore      = 30 * 24 * time.Hour
)

// Tracker remembers when each condition was first seen, for the ones
// whose owner does not know when they began; a condition that clears is
// forgotten. It is safe for concurrent use.
type Tracker struct {
	mu    sync.Mutex
	first map[string]time.Time
}

// Aggregate returns the overall health of conds at now: unavailable if any
// is critical, degraded if any is a warning, ok otherwise. Conditions are
// sorted, critical first; a zero Since is filled in from t.
func (t *Tracker) Aggregate(now time.Time, conds ...[]apitype.HealthCondition) apitype.Health {
	var all []apitype.HealthCondition
	for _, c := range conds {
		all = append(all, c...)
	}
	t.mu.Lock()
	seen := make(map[string]time.Time, len(all))
	for i := range all {
		c := &all[i]
		first, ok := t.first[c.Name]
		if !ok {
			first = now
		}
		seen[c.Name] = first
		if c.Since.IsZero() {
			c.Since = first
		}
	}
	t.first = seen
	t.mu.Unlock()
	slices.SortStableFunc(all, func(a, b apitype.HealthCondition) int {
		if a.Severity != b.Severity {
			if a.Severity == apitype.SeverityCritical {
				return -1
			}
			return 1
		}
		return 0
	})
	h := apitype.Health{State: apitype.HealthOK, Conditions: all, CheckedAt: now}
	if h.Conditions == nil {
		h.Conditions = []apitype.HealthCondition{}
	}
	for _, c := range all {
		switch c.Severity {
		case apitype.SeverityCritical:
			h.State = apitype.HealthUnavailable
		case apitype.SeverityWarning:
			if h.State == apitype.HealthOK {
				h.State = apitype.HealthDegraded
			}
		}
	}
	return h
}

// Disk returns the condition name for a filesystem of total bytes with
// avail available whose share in use reaches a threshold, or nothing.
// what names it in the message ("the volume").
func Disk(name, what string, total, avail uint64) []apitype.HealthCondition {
	if total == 0 || avail > total {
		return nil
	}
	used := 100 * float64(total-avail) / float64(total)
	sev := ""
	switch {
	case used >= DiskCriticalPercent:
		sev = apitype.SeverityCritical
	case used >= DiskWarnPercent:
		sev = apitype.SeverityWarning
	default:
		return nil
	}
	return []apitype.HealthCondition{{Name: name, Severity: sev,
		Message: fmt.Sprintf("%s is %.1f%% full (%s of %s available; warning at %.0f%%, critical at %.0f%%)",
			what, used, bytesText(avail), bytesText(total), DiskWarnPercent, DiskCriticalPercent)}}
}

// Certificate returns certificate_expiring when leaf, the server
// certificate in force, expires within CertWarnBefore of now (critical once
// it has expired), or nothing.
func Certificate(leaf *x509.Certificate, now time.Time) []apitype.HealthCondition {
	if leaf == nil {
		return nil
	}
	left := leaf.NotAfter.Sub(now)
	switch {
	case left <= 0:
		return []apitype.HealthCondition{{Name: "certificate_expiring", Severity: apitype.SeverityCritical,
			Since: leaf.NotAfter, Message: fmt.Sprintf("the server certificate expired at %s: clients that verify it refuse to connect", leaf.NotAfter.UTC().Format(time.RFC3339))}}
	case left <= CertWarnBefore:
		return []apitype.HealthCondition{{Name: "certificate_expiring", Severity: apitype.SeverityWarning,
			Since: leaf.NotAfter.Add(-CertWarnBefore), Message: fmt.Sprintf("the server certificate expires at %s, in %d days (warning from %d days before): rotate it with 'pgshield certificate rotate'",
				leaf.NotAfter.UTC().Format(time.RFC3339), int(left.Hours()/24), int(CertWarnBefore.Hours()/24))}}
	}
	return nil
}

func bytesText(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d bytes", n)
}
