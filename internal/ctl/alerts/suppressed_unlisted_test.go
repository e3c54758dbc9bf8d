package alerts

import (
	"testing"

	"github.com/pgshield/pgshield/internal/alerting"
)

// The attack (review finding 6): an attacker fills the suppressed alert's
// 32 source slots with cheap sources (IPv6 /64s), then the real trigger
// comes from a new one. It is still audited by source and role, in a
// record of its own; the audit of unlisted names is bounded per type.
func TestSuppressedUnlistedStillAudited(t *testing.T) {
	c, rec, clock := newController(t, nil)
	raise := func(src, role string) {
		c.mu.Lock()
		out := c.raiseLocked(alerting.Finding{Type: alerting.TypeDecoyRole, Key: src + role, User: role,
			Details: map[string]string{"source": src}})
		c.mu.Unlock()
		c.emit(out)
	}
	for i := 0; i < burst+maxSuppressedSources; i++ { // the bucket, then the lists
		raise("2001:db8:0:"+itoa(i)+"::/64", "")
	}
	// Made-up names under a listed source, past its roles, spend a
	// budget of their own.
	for i := 0; i < 2*unlistedBurst; i++ {
		raise("2001:db8:0:"+itoa(burst)+"::/64", "fake_"+itoa(i))
	}
	raise("2001:db8:ffff:1::/64", "payroll_admin") // the real trigger, unlisted
	a, m := suppressedOf(t, c, alerting.TypeDecoyRole)
	if _, ok := m["2001:db8:ffff:1::/64"]; ok || len(m) != maxSuppressedSources {
		t.Fatalf("the real trigger is listed (the lists were not full): %d sources", len(m))
	}
	audited := func(src, role string) bool {
		for _, e := range rec.events() {
			if e.Type == alerting.TypeSuppressed && e.Fields["source"] == src && e.Fields["alert_id"] == a.ID &&
				(role == "" || e.Fields["role"] == role && e.User == role) {
				return true
			}
		}
		return false
	}
	if !audited("2001:db8:ffff:1::/64", "payroll_admin") {
		t.Fatalf("the unlisted real trigger was not audited: %v", a.Details)
	}
	// Bounded: past the budget, counted instead.
	unlistedRecords := func() (n int) {
		for _, e := range rec.events() {
			if e.Fields["listed"] == false {
				n++
			}
		}
		return n
	}
	n0 := unlistedRecords()
	for i := 0; i < 2*unlistedBurst; i++ {
		raise("2001:db8:eeee:"+itoa(i)+"::/64", "")
	}
	if got := unlistedRecords() - n0; got >= unlistedBurst {
		t.Errorf("%d audit records for %d unlisted sources; want fewer than %d", got, 2*unlistedBurst, unlistedBurst)
	}
	a, _ = suppressedOf(t, c, alerting.TypeDecoyRole)
	if a.Details[detSupUnaudited] == "" || a.Details[detSupUnaudited] == "0" {
		t.Errorf("unaudited not counted: %v", a.Details)
	}
	// The budget refills.
	clock.advance(10 * unlistedRefill)
	raise("2001:db8:dddd:1::/64", "dba")
	if !audited("2001:db8:dddd:1::/64", "dba") {
		t.Errorf("no audit after the budget refilled")
	}
}
