package alerts

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/pgshield/pgshield/internal/alerting"
	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
)

func suppressedOf(t *testing.T, c *Controller, typ string) (apitype.Alert, map[string]suppressedSource) {
	t.Helper()
	for _, a := range c.List() {
		if a.Type == alerting.TypeSuppressed && a.Details["suppressed_type"] == typ {
			m := map[string]suppressedSource{}
			if err := json.Unmarshal([]byte(a.Details[detSupSources]), &m); err != nil {
				t.Fatalf("suppressed_sources %q: %v", a.Details[detSupSources], err)
			}
			return a, m
		}
	}
	t.Fatalf("no alert.suppressed for %s", typ)
	return apitype.Alert{}, nil
}

// An attacker floods brute-force alerts from two sources with made-up
// role names until the type is rate-limited, then the real attack comes
// from elsewhere: its alert is suppressed, but its source and role are
// counted on the suppressed alert and audited at once.
func TestSuppressedKeepsTheRealTrigger(t *testing.T) {
	c, rec, _ := newController(t, map[string]string{"pgshield.alert_bruteforce_failures": "1",
		"pgshield.alert_bruteforce_role_failures": "0"})
	for i := 0; i < 500; i++ {
		c.Observe(failure("10.9.9."+itoa(1+i%2), "fake_"+itoa(i)))
	}
	c.Observe(failure("203.0.113.5", "payroll_admin"))
	for _, a := range c.List() {
		if a.Type == alerting.TypeBruteForceValid && a.Client == "203.0.113.5" {
			t.Fatalf("the real trigger was not suppressed (the flood did not fill the bucket): %+v", a)
		}
	}
	a, m := suppressedOf(t, c, alerting.TypeBruteForceValid)
	real := m["203.0.113.5/32"]
	if real.N != 1 || real.Roles["payroll_admin"] != 1 {
		t.Errorf("the real trigger on the suppressed alert: %+v (all %v)", real, m)
	}
	if len(m) != 3 || m["10.9.9.1/32"].N+m["10.9.9.2/32"].N != 500-burst {
		t.Errorf("sources %v; want the two flooding ones and the real one", m)
	}
	// The flood's names are bounded per source; the rest are counted.
	if n := len(m["10.9.9.1/32"].Roles); n != maxSuppressedRoles {
		t.Errorf("roles kept for a flooding source: %d; want %d", n, maxSuppressedRoles)
	}
	if a.Details[detSupUnlisted] != itoa(500-burst-2*maxSuppressedRoles) {
		t.Errorf("unlisted = %s; want %d", a.Details[detSupUnlisted], 500-burst-2*maxSuppressedRoles)
	}
	// The audit trail names the real trigger, whatever comes after.
	found := false
	for _, e := range rec.events() {
		if s, _ := e.Fields[detSupSources].(string); e.Type == alerting.TypeSuppressed && strings.Contains(s, "payroll_admin") {
			found = true
		}
	}
	if !found {
		t.Errorf("no audit record of the suppressed alert names the real trigger")
	}
}

// Sources past the bound are counted, not listed; names with any bytes
// stay exact.
func TestSuppressedBounded(t *testing.T) {
	c, _, _ := newController(t, nil)
	hostile := "x\"}\n,\"10.0.0.1/32\":{\"n\":99}"
	c.mu.Lock()
	for i := 0; i < burst; i++ {
		c.raiseLocked(alerting.Finding{Type: alerting.TypeDecoyRole, Key: "k" + itoa(i)})
	}
	c.raiseLocked(alerting.Finding{Type: alerting.TypeDecoyRole, Key: "h", User: hostile,
		Details: map[string]string{"source": "192.0.2.1/32"}})
	for i := 0; i < maxSuppressedSources+10; i++ {
		c.raiseLocked(alerting.Finding{Type: alerting.TypeDecoyRole, Key: "s" + itoa(i),
			Details: map[string]string{"source": "198.51.100." + itoa(i) + "/32"}})
	}
	c.mu.Unlock()
	a, m := suppressedOf(t, c, alerting.TypeDecoyRole)
	if len(m) != maxSuppressedSources || m["192.0.2.1/32"].Roles[hostile] != 1 {
		t.Errorf("%d sources, hostile role %v", len(m), m["192.0.2.1/32"])
	}
	if a.Details[detSupUnlisted] != "11" {
		t.Errorf("unlisted = %q; want 11", a.Details[detSupUnlisted])
	}
}

func (r *recorder) events() []audit.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]audit.Event(nil), r.es...)
}
