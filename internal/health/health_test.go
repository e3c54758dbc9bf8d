package health

import (
	"crypto/x509"
	"slices"
	"testing"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
)

func TestAggregate(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 20, 0, 0, 0, time.UTC)
	var tr Tracker
	if h := tr.Aggregate(t0); h.State != apitype.HealthOK || h.Conditions == nil || len(h.Conditions) != 0 {
		t.Errorf("nothing = %+v; want ok with an empty list", h)
	}
	warn := apitype.HealthCondition{Name: "disk", Severity: apitype.SeverityWarning}
	crit := apitype.HealthCondition{Name: "pg", Severity: apitype.SeverityCritical, Since: t0.Add(-time.Minute)}
	h := tr.Aggregate(t0, []apitype.HealthCondition{warn})
	if h.State != apitype.HealthDegraded || !h.Conditions[0].Since.Equal(t0) {
		t.Errorf("a warning = %+v; want degraded, since first seen", h)
	}
	h = tr.Aggregate(t0.Add(time.Hour), []apitype.HealthCondition{warn}, []apitype.HealthCondition{crit})
	if h.State != apitype.HealthUnavailable {
		t.Errorf("a critical condition = %+v; want unavailable", h)
	}
	if got := []string{h.Conditions[0].Name, h.Conditions[1].Name}; !slices.Equal(got, []string{"pg", "disk"}) {
		t.Errorf("order %q; want critical first", got)
	}
	// Since: the owner's when it knows, else the first time seen (kept).
	if !h.Conditions[0].Since.Equal(crit.Since) || !h.Conditions[1].Since.Equal(t0) {
		t.Errorf("since = %v, %v; want %v, %v", h.Conditions[0].Since, h.Conditions[1].Since, crit.Since, t0)
	}
	// A condition that clears and comes back starts again.
	tr.Aggregate(t0.Add(2 * time.Hour))
	h = tr.Aggregate(t0.Add(3*time.Hour), []apitype.HealthCondition{warn})
	if !h.Conditions[0].Since.Equal(t0.Add(3 * time.Hour)) {
		t.Errorf("since after clearing = %v; want the new first sight", h.Conditions[0].Since)
	}
}

func TestDisk(t *testing.T) {
	for _, tc := range []struct {
		total, avail uint64
		want         string
	}{
		{100, 11, ""}, {100, 10, apitype.SeverityWarning}, {100, 3, apitype.SeverityWarning},
		{100, 2, apitype.SeverityCritical}, {100, 0, apitype.SeverityCritical}, {0, 0, ""}, {100, 200, ""},
	} {
		h := Disk("x", "it", tc.total, tc.avail)
		got := ""
		if len(h) == 1 {
			got = h[0].Severity
		}
		if got != tc.want {
			t.Errorf("Disk(%d, %d) = %+v; want %q", tc.total, tc.avail, h, tc.want)
		}
	}
}

func TestCertificate(t *testing.T) {
	now := time.Date(2026, 12, 6, 20, 0, 0, 0, time.UTC)
	leaf := func(left time.Duration) *x509.Certificate { return &x509.Certificate{NotAfter: now.Add(left)} }
	if h := Certificate(leaf(31*24*time.Hour), now); len(h) != 0 {
		t.Errorf("31 days left = %+v; want nothing", h)
	}
	if h := Certificate(leaf(29*24*time.Hour), now); len(h) != 1 || h[0].Severity != apitype.SeverityWarning || h[0].Name != "certificate_expiring" {
		t.Errorf("29 days left = %+v; want a warning", h)
	}
	if h := Certificate(leaf(-time.Second), now); len(h) != 1 || h[0].Severity != apitype.SeverityCritical {
		t.Errorf("expired = %+v; want critical", h)
	}
	if h := Certificate(nil, now); len(h) != 0 {
		t.Errorf("no certificate = %+v", h)
	}
}
