package link

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgshield/pgshield/internal/testutil/localkms"
)

// keyState is n's data key state (status -o json), or the error.
func keyState(n *daemonNode) (string, string) {
	out, err := n.cli(context.Background(), time.Minute, "status", "-o", "json")
	var st struct{ State string }
	if err == nil {
		err = json.Unmarshal([]byte(out), &st)
	}
	if err != nil {
		return "", fmt.Sprintf("%v %s", err, out)
	}
	return st.State, st.State
}

// checkKeyRevocation: both nodes' data keys are wrapped by one
// customer-managed key. Revoked, it makes the whole cluster Inaccessible
// (one node's check tells the others, which each ask their KMS), no node
// is promoted meanwhile, and nothing acknowledged is lost; back, every
// node comes back and a primary takes writes again. A bump of the
// cluster's key-check key by an etcd client makes nodes check, not change
// state.
func checkKeyRevocation(t *testing.T, ctx context.Context, kms *localkms.Server, keyID string, etcdctl func(...string) (string, error),
	primary, standby *daemonNode, cfg func() *pgx.ConnConfig, scope string) {
	t.Helper()
	nodes := []*daemonNode{primary, standby}
	for _, n := range nodes {
		if s, msg := keyState(n); s != "Available" {
			t.Fatalf("%s: key state %s before the revocation", n.name, msg)
		}
	}
	asked := "Another node asked for a key check"
	countIn := func(n *daemonNode, s string) int { return strings.Count(n.daemonLog(1<<22), s) }

	w := &gatewayWriter{cfg: cfg, next: 3_000_000}
	wctx, wcancel := context.WithCancel(ctx)
	wdone := make(chan struct{})
	go func() { defer close(wdone); w.run(wctx) }()
	stop := func() { wcancel(); <-wdone }
	defer stop()
	waitFor(t, "20 rows before the revocation", time.Minute, nil, func() (bool, string) { return w.count() >= 20, fmt.Sprint(w.lastErr()) })

	// An etcd client (any holder of a client certificate) bumps the key:
	// both nodes check their key, and stay Available.
	before := []int{countIn(primary, asked), countIn(standby, asked)}
	if out, err := etcdctl("put", "/pgshield-keys/"+scope+"/check", `{"node":"attacker","state":"Inaccessible"}`); err != nil {
		t.Fatalf("etcdctl put: %v %s", err, out)
	}
	for i, n := range nodes {
		waitFor(t, n.name+" answering a forged key-check bump", 20*time.Second, nil, func() (bool, string) {
			return countIn(n, asked) > before[i], ""
		})
	}
	at := w.count()
	waitFor(t, "writes going on after the forged bump", 30*time.Second, nil, func() (bool, string) { return w.count() >= at+20, fmt.Sprint(w.lastErr()) })
	for _, n := range nodes {
		if s, msg := keyState(n); s != "Available" {
			t.Fatalf("%s: key state %s after a forged bump", n.name, msg)
		}
	}

	// Revoked: the primary's check (here the operator's `key revalidate`;
	// every pgshield.key_revalidation_interval otherwise) shuts it away,
	// and its bump makes the standby check at once.
	promotions := countIn(standby, "Promotion allowed")
	before[1] = countIn(standby, asked)
	kms.DisableKey(t, keyID)
	revokedAt := time.Now()
	if out, err := primary.cli(ctx, time.Minute, "key", "revalidate"); err != nil || !strings.Contains(out, "Inaccessible") {
		t.Fatalf("%s: key revalidate after the revocation: %v\n%s", primary.name, err, out)
	}
	pDone := time.Since(revokedAt)
	waitFor(t, standby.name+" Inaccessible", 30*time.Second, nil, func() (bool, string) {
		s, msg := keyState(standby)
		return s == "Inaccessible", msg
	})
	sDone := time.Since(revokedAt)
	if countIn(standby, asked) <= before[1] {
		t.Errorf("%s became Inaccessible without being asked by %s (its own interval?)", standby.name, primary.name)
	}
	lastAck := w.count()
	for _, n := range nodes {
		waitFor(t, n.name+"'s PostgreSQL stopped", 45*time.Second, nil, func() (bool, string) {
			return n.postmaster() == 0, ""
		})
	}
	// No node is promoted and nothing is acknowledged while the key is
	// revoked (both gateways refuse every session).
	time.Sleep(5 * time.Second)
	for _, n := range nodes {
		if pm := n.postmaster(); pm != 0 {
			t.Errorf("%s: PostgreSQL (pid %d) runs with the key revoked", n.name, pm)
		}
	}
	if got := countIn(standby, "Promotion allowed"); got != promotions {
		t.Errorf("%s was promoted with the key revoked", standby.name)
	}
	if got := w.count(); got != lastAck {
		t.Errorf("%d writes acknowledged while the key was revoked", got-lastAck)
	}
	t.Logf("HA-DAEMON-KEY revoked -> %s Inaccessible %.2f s (its check), %s %.2f s (asked)", primary.name, pDone.Seconds(), standby.name, sDone.Seconds())

	// Back: the standby's check brings it back and asks the primary's.
	before[0] = countIn(primary, asked)
	kms.EnableKey(t, keyID)
	restoredAt := time.Now()
	w.markKill(restoredAt)
	if out, err := standby.cli(ctx, 3*time.Minute, "key", "revalidate"); err != nil || !strings.Contains(out, "Available") {
		t.Fatalf("%s: key revalidate after the key came back: %v\n%s", standby.name, err, out)
	}
	waitFor(t, primary.name+" Available again", 90*time.Second, nil, func() (bool, string) {
		s, msg := keyState(primary)
		return s == "Available", msg
	})
	if countIn(primary, asked) <= before[0] {
		t.Errorf("%s came back without being asked by %s", primary.name, standby.name)
	}
	both := time.Since(restoredAt)
	waitFor(t, "the first acknowledged write after the key came back", 3*time.Minute, nil, func() (bool, string) {
		return !w.firstAfterKill().IsZero(), fmt.Sprint(w.lastErr())
	})
	first := w.firstAfterKill().Sub(restoredAt)
	at = w.count()
	waitFor(t, "20 more rows after the key came back", time.Minute, nil, func() (bool, string) { return w.count() >= at+20, fmt.Sprint(w.lastErr()) })
	stop()
	t.Logf("HA-DAEMON-KEY restored -> both Available %.2f s, first write acknowledged %.2f s", both.Seconds(), first.Seconds())
	acked := w.acked()
	for _, n := range nodes {
		// The standby replays what the primary took since.
		waitFor(t, "every acknowledged row on "+n.name, time.Minute, nil, func() (bool, string) {
			out, err := n.sql(ctx, "SELECT id FROM public.ledger")
			if err != nil {
				return false, fmt.Sprintf("%v %s", err, out)
			}
			lost := notIn(out, acked)
			return len(lost) == 0, fmt.Sprintf("%d missing", len(lost))
		})
	}
}
