package oidc_test

import (
	"context"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/pgshield/pgshield/internal/auth/oidc"
	"github.com/pgshield/pgshield/internal/testutil/oidcissuer"
)

// A token's exp, nbf and iat are wall-clock times: the verifier's clock
// jumping back or forward moves the verdict, by no more than Skew either
// way (the token is valid from iat to exp, one hour).
func TestVerifyClockJumps(t *testing.T) {
	is := oidcissuer.Start(t)
	c := is.Access(aud, "oid-alice", time.Hour)
	issued := time.Unix(c["iat"].(int64), 0)
	tok := sign(t, is.Key(jose.RS256), "", c)
	for _, tc := range []struct {
		name   string
		at     time.Duration // from iat
		reason string        // "": accepted
	}{
		{"at issue", 0, ""},
		{"back within the skew", -oidc.Skew + time.Second, ""},
		{"back beyond the skew", -oidc.Skew - time.Second, "not valid before"},
		{"back a day", -24 * time.Hour, "not valid before"},
		{"forward to exp", time.Hour, ""},
		{"forward within the skew", time.Hour + oidc.Skew - time.Second, ""},
		{"forward beyond the skew", time.Hour + oidc.Skew + time.Second, "expired"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := issued.Add(tc.at)
			v := newVerifier(t, is, func(cfg *oidc.Config) { cfg.Now = func() time.Time { return now } })
			_, err := v.Verify(context.Background(), tok)
			switch {
			case tc.reason == "" && err != nil:
				t.Errorf("Verify() at iat%+v = %v; want accepted", tc.at, err)
			case tc.reason != "" && (err == nil || !strings.Contains(err.Error(), tc.reason)):
				t.Errorf("Verify() at iat%+v = %v; want refused (%s)", tc.at, err, tc.reason)
			}
		})
	}
}

// UntilExpiry, which keeps a session under oidc_enforce_expiry to its
// token, ends it at exp by the wall clock and never sleeps longer than
// RecheckEvery, so a jump of the clock is seen within that.
func TestUntilExpiry(t *testing.T) {
	exp := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		now     time.Time
		wait    time.Duration
		expired bool
	}{
		{exp.Add(-time.Hour), oidc.RecheckEvery, false},
		{exp.Add(-24 * time.Hour), oidc.RecheckEvery, false}, // the clock went back a day
		{exp.Add(-time.Second), time.Second, false},
		{exp, 0, true},
		{exp.Add(24 * time.Hour), 0, true}, // the clock went forward a day
	} {
		wait, expired := oidc.UntilExpiry(exp, tc.now)
		if wait != tc.wait || expired != tc.expired {
			t.Errorf("UntilExpiry(exp, exp%+v) = %v, %v; want %v, %v", tc.now.Sub(exp), wait, expired, tc.wait, tc.expired)
		}
	}
	// A now from time.Now (monotonic reading) is compared by its wall time.
	now := time.Now()
	if wait, expired := oidc.UntilExpiry(now.Round(0).Add(-time.Second), now); !expired || wait != 0 {
		t.Errorf("UntilExpiry(a second past exp, time.Now()) = %v, %v; want expired", wait, expired)
	}
}
