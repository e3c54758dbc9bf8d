package node

// Second hostile review: the shared network policy. Kept as regression
// tests: each fails if its attack gets through.

import (
	"context"
	"math"
	"net/netip"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/ctl/conf"
	"github.com/pgshield/pgshield/internal/ctl/network"
	"github.com/pgshield/pgshield/internal/netpolicy"
	"github.com/pgshield/pgshield/internal/testutil/pgtest"
)

// TestAttack2SharedLockOrder: Shared.once holds s.mu while it calls apply
// (ApplyShared takes the controller's updMu); a local change holds updMu
// (and the engine's update lock) while its persist calls Publish, which
// takes s.mu. On a standby, an API change (refused anyway) racing the
// arrival of a new version deadlocks both: the node never applies another
// shared version, never expires a rule (Tick needs the engine's lock), and
// every later network API call hangs. Reproduced deterministically: the
// watch has taken s.mu (shared.go:165) when the local change takes updMu.
func TestAttack2SharedLockOrder(t *testing.T) {
	l := config.Layout{Root: t.TempDir()}
	pol, _ := network.InitialPolicy(netpolicy.ModePublic, "127.0.0.1:5432")
	if err := network.SavePolicy(l, pol); err != nil {
		t.Fatal(err)
	}
	var s *Shared
	ctl, err := network.New(network.Config{Layout: l, Conf: conf.New(l, &config.Config{ServerID: "0123456789abcdef", Listen: "127.0.0.1:5432", Parameters: map[string]string{}}),
		Persist: func(*netpolicy.Policy) error { return nil },
		Publish: func(b []byte) error { return s.Publish(context.Background(), b) }})
	if err != nil {
		t.Fatal(err)
	}
	n := sharedNode(t, "0123456789abcdef-config")
	// A standby: no pool here, so Publish refuses (after taking s.mu), as
	// the read-only transaction would.
	s = n.Share("network policy", func() *pgxpool.Pool { return nil }, ctl.ApplyShared, ctl.Encoded)

	recv := &netpolicy.Policy{Mode: netpolicy.ModePublic}
	recv.SetFirewallRule(netpolicy.FirewallRule{Name: "from-primary", StartIP: mustAddr("10.0.2.1"), EndIP: mustAddr("10.0.2.2")})
	body, _ := recv.Encode()

	// once(): a new authentic version was read; s.mu taken.
	s.mu.Lock()
	localDone := make(chan error, 1)
	go func() { // the administrator's API call on this standby
		_, err := ctl.WriteFirewallRule(apitype.RuleRequest{Name: "x", StartIPAddress: "10.9.9.9", EndIPAddress: "10.9.9.9"}, true)
		localDone <- err
	}()
	time.Sleep(200 * time.Millisecond) // it holds updMu, waits for s.mu
	watchDone := make(chan error, 1)
	go func() { // once(): s.apply(row.Body) with s.mu held
		err := s.apply(body)
		s.mu.Unlock()
		watchDone <- err
	}()
	select {
	case <-watchDone:
	case <-time.After(3 * time.Second):
		t.Errorf("DEADLOCK: the watch's apply and a local change wait on each other (s.mu vs updMu)")
		select {
		case <-localDone:
		case <-time.After(time.Second):
			t.Errorf("the local change is stuck too; the engine's update lock is held: expiry (Tick) stops on this node")
		}
	}
}

func mustAddr(s string) (a netipAddr) { return mustParse(s) }

// TestAttack2SharedVersionGames (PGSHIELD_E2E=1): what a superuser (or
// PostgreSQL's OS user) on the primary can do with authentic rows and the
// version column alone, without the config key.
func TestAttack2SharedVersionGames(t *testing.T) {
	srv := pgtest.Shared(t)
	ctx := context.Background()
	cat := srv.Catalog(t)
	pool := func() *pgxpool.Pool { return cat.Pool }
	conn := srv.Conn(t)
	const name = "attack2"
	if _, err := conn.Exec(ctx, "DELETE FROM pgshield.cluster_config WHERE name = $1", name); err != nil {
		t.Fatal(err)
	}
	key := "0123456789abcdef-config"
	var onPrimary, onB, onC [][]byte
	prim := sharedNode(t, key)
	a := prim.Share(name, pool, func(b []byte) error { onPrimary = append(onPrimary, b); return nil }, func() ([]byte, error) { return []byte(`{"v":"a0"}`), nil })
	b := sharedNode(t, key).Share(name, pool, func(x []byte) error { onB = append(onB, x); return nil }, func() ([]byte, error) { return nil, nil })
	wide, narrow := []byte(`{"v":"wide: 0.0.0.0-255.255.255.255"}`), []byte(`{"v":"narrow"}`)
	if err := a.Publish(ctx, wide); err != nil {
		t.Fatal(err)
	}
	if _, err := b.once(ctx); err != nil {
		t.Fatal(err)
	}
	var oldV int64
	var oldBody, oldMAC []byte
	if err := conn.QueryRow(ctx, "SELECT version, body, mac FROM pgshield.cluster_config WHERE name = $1", name).Scan(&oldV, &oldBody, &oldMAC); err != nil {
		t.Fatal(err)
	}
	if err := a.Publish(ctx, narrow); err != nil {
		t.Fatal(err)
	}
	if _, err := b.once(ctx); err != nil {
		t.Fatal(err)
	}
	putBack := func() {
		if _, err := conn.Exec(ctx, "UPDATE pgshield.cluster_config SET version = $2, body = $3, mac = $4 WHERE name = $1", name, oldV, oldBody, oldMAC); err != nil {
			t.Fatal(err)
		}
	}

	// 1. A node that joins later (or was down since before "wide"):
	// the superuser puts the old authentic row back; the new node applies
	// it, and the primary never corrects it (it republishes only a
	// missing row, not one below its applied version).
	putBack()
	c := sharedNode(t, key).Share(name, pool, func(x []byte) error { onC = append(onC, x); return nil }, func() ([]byte, error) { return nil, nil })
	if _, err := a.once(ctx); err != nil {
		t.Logf("primary: %v", err)
	}
	if _, err := c.once(ctx); err == nil && len(onC) == 1 && string(onC[0]) == string(wide) {
		t.Errorf("ROLLBACK: a joining node applied an old authentic policy (version %d): %s", oldV, onC[0])
	}
	var v int64
	_ = conn.QueryRow(ctx, "SELECT version FROM pgshield.cluster_config WHERE name = $1", name).Scan(&v)
	if v == oldV {
		t.Errorf("the primary left the rolled-back row (version %d) in place", v)
	}

	// 2. Version overflow: a forged row at MaxInt64 (refused: bad MAC)
	// makes the primary's next publication wrap to MinInt64, which it
	// signs and records as its applied version.
	if _, err := conn.Exec(ctx, "UPDATE pgshield.cluster_config SET version = $2, mac = '\\x00'::bytea WHERE name = $1", name, int64(math.MaxInt64)); err != nil {
		t.Fatal(err)
	}
	_, _ = a.once(ctx)
	newer := []byte(`{"v":"newest change"}`)
	if err := a.Publish(ctx, newer); err != nil {
		t.Logf("publish after the forged max version: %v", err)
	}
	if got := prim.applied(name); got < 0 {
		t.Errorf("OVERFLOW: the primary's applied version is now %d", got)
	}
	nb := len(onB)
	_, _ = b.once(ctx)
	if len(onB) == nb {
		t.Errorf("DIVERGED: the standby never applies the primary's newest change (row version wrapped)")
	}
	// ... and now any old authentic row is above the primary's floor.
	putBack()
	np := len(onPrimary)
	_, _ = a.once(ctx)
	if len(onPrimary) > np && string(onPrimary[len(onPrimary)-1]) == string(wide) {
		t.Errorf("ROLLBACK ON THE PRIMARY: it applied the old authentic version %d after the wrap", oldV)
	}
}

type netipAddr = netip.Addr

func mustParse(s string) netip.Addr { return netip.MustParseAddr(s) }
