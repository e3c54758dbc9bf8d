package oidc

import "time"

// RecheckEvery bounds how long a session kept to its token's expiry
// (pgshield.oidc_enforce_expiry) goes without comparing exp with the wall
// clock again. exp is a wall-clock time, so a timer armed once for
// exp - now (Go timers run on the monotonic clock) would miss a jump of
// the system clock: forward, the session would outlive its token; back,
// it would end before the clock reached exp.
const RecheckEvery = 30 * time.Second

// UntilExpiry reports whether a token expiring at exp is expired at now by
// the wall clock, and if not, how long to wait before looking again. A
// session ends at exp itself: Skew is what a login tolerates between the
// issuer's clock and ours, not time added to a session.
func UntilExpiry(exp, now time.Time) (wait time.Duration, expired bool) {
	// Round(0) drops now's monotonic reading; exp from a token has none,
	// so this is what Sub would do anyway: said here, not left implicit.
	left := exp.Sub(now.Round(0))
	if left <= 0 {
		return 0, true
	}
	return min(left, RecheckEvery), false
}
