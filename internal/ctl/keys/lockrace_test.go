package keys

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/keys"
)

// TestLockHoldsAgainstRacingRevalidation (a hostile review's attack): the
// operator locks while a nudge-driven revalidation (KeyChecks.Run,
// every 5 s on demand of any etcd writer) has passed its "Locked?" test
// and waits for mu (held here by a slow interval revalidation, a grow or
// a remount). The KMS denies (the key was revoked as part of the same
// incident): Locked becomes Inaccessible. When the key is re-enabled, the
// next revalidation brings the server back Available: the operator's lock
// was undone without the operator.
func TestLockHoldsAgainstRacingRevalidation(t *testing.T) {
	h := newHarness(t)
	h.open(t)
	release := make(chan struct{})
	held := make(chan struct{})
	go h.Locked(func() error { close(held); <-release; return nil }) // mu held (grow, remount, slow KMS)
	<-held
	lockDone := make(chan error, 1)
	go func() { _, err := h.Lock(); lockDone <- err }() // operator: queued first on mu
	time.Sleep(50 * time.Millisecond)
	h.vol.mu.Lock()
	h.vol.checkErr = fmt.Errorf("unwrap: %w", keys.ErrCorrupt) // key revoked
	h.vol.mu.Unlock()
	revDone := make(chan struct{})
	go func() { h.Revalidate(context.Background()); close(revDone) }() // passes the Locked test, waits
	time.Sleep(50 * time.Millisecond)
	close(release)
	if err := <-lockDone; err != nil {
		t.Fatal(err)
	}
	<-revDone
	t.Logf("after lock + racing revalidation: %s", h.State())
	h.vol.mu.Lock()
	h.vol.checkErr = nil // key re-enabled
	h.vol.mu.Unlock()
	h.Revalidate(context.Background())
	if h.State() != apitype.KeyLocked {
		t.Errorf("the operator's lock was undone; state %s (transitions %v)", h.State(), h.metrics.transitions)
	}
}
