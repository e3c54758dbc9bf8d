package etcd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pgshield/pgshield/internal/cluster/fence"
)

// nsDialer dials from inside network namespace ns: the socket is made on
// a thread that has entered it (a socket stays in the namespace it was
// made in), so the fence runs in this process but reaches etcd as node
// ns's gateway would.
func nsDialer(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type res struct {
			c   net.Conn
			err error
		}
		ch := make(chan res, 1)
		go func() {
			runtime.LockOSThread()
			orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				runtime.UnlockOSThread()
				ch <- res{nil, err}
				return
			}
			defer unix.Close(orig)
			target, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				runtime.UnlockOSThread()
				ch <- res{nil, err}
				return
			}
			defer unix.Close(target)
			if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
				runtime.UnlockOSThread()
				ch <- res{nil, err}
				return
			}
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			// A thread that cannot go back stays locked, and so dies with
			// this goroutine instead of running others in ns.
			if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
				runtime.UnlockOSThread()
			}
			ch <- res{c, err}
		}()
		r := <-ch
		return r.c, r.err
	}
}

// fenceLab is a real cluster where "node 3's Patroni" holds the leader
// key (m3, a 10 s lease renewed every 2 s from node 3's namespace: the
// tests' Patroni timings 10/2) and node 3's fence runs with margin 1 s.
type fenceLab struct {
	r         *realCluster
	f         *fence.Fence
	local     string // node 3's member
	fenced    chan fence.Event
	stopRenew func() // stops the renewals (node 3's Patroni frozen)
	// lastRenewal is when the last successful renewal began.
	lastRenewal func() time.Time
}

const (
	fenceNode = 2 // m3
	leaderKey = "/pgshield/pg1/leader"
)

func startFenceLab(t *testing.T, bin string) *fenceLab {
	ctx := context.Background()
	r := startRealCluster(t, bin)
	all := etcdctl{ns: r.lab.ns[fenceNode], endpoint: strings.Join(r.c.Endpoints(), ","), args: r.tlsArgs}

	out, err := all.run(ctx, "lease", "grant", "10")
	m := regexp.MustCompile(`lease ([0-9a-f]+) granted`).FindStringSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("lease grant: %v %s", err, out)
	}
	lease := m[1]
	if out, err := all.run(ctx, "put", "--lease="+lease, leaderKey, "m3"); err != nil {
		t.Fatalf("put leader key: %v %s", err, out)
	}
	// Node 3's Patroni: a keepalive every loop_wait, from node 3.
	kaCtx, stopKA := context.WithCancel(ctx)
	var kaWG sync.WaitGroup
	var kaMu sync.Mutex
	var lastRenew time.Time
	kaWG.Add(1)
	go func() {
		defer kaWG.Done()
		for kaCtx.Err() == nil {
			began := time.Now()
			// etcdctl 3.4 says "lease ID keepalived with TTL(n)".
			if out, err := all.run(kaCtx, "lease", "keep-alive", "--once", lease); err == nil && strings.Contains(out, "keepalived with TTL(") {
				kaMu.Lock()
				lastRenew = began
				kaMu.Unlock()
			}
			select {
			case <-kaCtx.Done():
			case <-time.After(2 * time.Second):
			}
		}
	}()
	var once sync.Once
	stopRenew := func() {
		once.Do(func() { stopKA(); kaWG.Wait() })
	}
	t.Cleanup(stopRenew)
	fl := &fenceLab{r: r, local: ClientURL(r.c.Members[fenceNode]), fenced: make(chan fence.Event, 4)}
	fl.stopRenew = stopRenew
	fl.lastRenewal = func() time.Time {
		kaMu.Lock()
		defer kaMu.Unlock()
		return lastRenew
	}

	cert, err := tls.LoadX509KeyPair(r.pki.ClientCert(), r.pki.ClientKey())
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(r.pki.CACert())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	eps := []string{fl.local, ClientURL(r.c.Members[0]), ClientURL(r.c.Members[1])}
	confirmed := make(chan struct{}, 4)
	f, err := fence.New(fence.Config{
		Endpoints: eps,
		TLS:       &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}},
		Namespace: "/pgshield/", Scope: "pg1", Node: "m3",
		TTL: 10 * time.Second, LoopWait: 2 * time.Second, Margin: time.Second,
		OnFence:     func(ev fence.Event) { fl.fenced <- ev },
		OnConfirm:   func() { confirmed <- struct{}{} },
		DialContext: nsDialer(r.lab.ns[fenceNode]),
	})
	if err != nil {
		t.Fatal(err)
	}
	fl.f = f
	fctx, stopFence := context.WithCancel(ctx)
	fdone := make(chan error, 1)
	go func() { fdone <- f.Run(fctx) }()
	t.Cleanup(func() {
		stopFence()
		if err := <-fdone; !errors.Is(err, context.Canceled) {
			t.Errorf("fence Run = %v", err)
		}
	})
	select {
	case <-confirmed:
	case <-time.After(15 * time.Second):
		t.Fatalf("leadership never confirmed: %+v", f.Status())
	}
	st := f.Status()
	t.Logf("confirmed: may write until %s after the last confirmation", st.Deadline.Sub(st.LastConfirmed))
	return fl
}

// awaitFence waits (20 s at most) for the fence.
func (fl *fenceLab) awaitFence(t *testing.T) fence.Event {
	t.Helper()
	select {
	case ev := <-fl.fenced:
		return ev
	case <-time.After(20 * time.Second):
		t.Fatalf("no fence in 20 s: %+v", fl.f.Status())
		return fence.Event{}
	}
}

// awaitExpiry polls the majority (member 1), linearizably, until the
// leader key is gone, and returns when a read last found it (begun after
// the fence, it shows the fence came first) and when it was first gone.
func (fl *fenceLab) awaitExpiry(t *testing.T, fencedAt time.Time) (stillThere, gone time.Time) {
	t.Helper()
	ctx := context.Background()
	maj := etcdctl{ns: fl.r.lab.ns[0], endpoint: ClientURL(fl.r.c.Members[0]), args: fl.r.tlsArgs}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		began := time.Now()
		out, err := maj.run(ctx, "get", "--consistency=l", "--print-value-only", leaderKey)
		if err != nil {
			continue
		}
		if out == "m3" {
			stillThere = began
			continue
		}
		if out == "" {
			gone = time.Now()
			break
		}
		t.Fatalf("the leader key on the majority: %q", out)
	}
	if gone.IsZero() {
		t.Fatal("the leader key never expired on the majority")
	}
	if stillThere.IsZero() || !fencedAt.Before(stillThere) {
		t.Fatalf("no read after the fence (%s) found the key still held: last %s", fencedAt.Format("15:04:05.000"), stillThere.Format("15:04:05.000"))
	}
	return stillThere, gone
}

// TestRealFence: node 3 is partitioned. Its member still answers
// serializable reads with "m3"; linearizable reads fail; the fence fires
// within the 7 s budget of the partition, before the majority lets the
// key expire (the moment a replica could promote).
func TestRealFence(t *testing.T) {
	bin := skipUnlessReal(t)
	ctx := context.Background()
	fl := startFenceLab(t, bin)
	f, r, local, node := fl.f, fl.r, fl.local, fenceNode
	// Both kinds of read agree while the member has quorum.
	for _, ser := range []bool{false, true} {
		if v, err := f.ReadLeader(ctx, local, ser); err != nil || v != "m3" {
			t.Fatalf("read (serializable %v) at m3 before the partition: %q %v", ser, v, err)
		}
	}

	partitioned := time.Now()
	r.lab.partition(node)
	t.Logf("node 3 partitioned at %s", partitioned.Format("15:04:05.000"))

	// Node 3's member, cut off, still says "m3" to a serializable read;
	// a linearizable one cannot be answered there.
	if v, err := f.ReadLeader(ctx, local, true); err != nil || v != "m3" {
		t.Errorf("serializable read at the partitioned member: %q %v; want the stale m3", v, err)
	} else {
		t.Logf("serializable read at the partitioned member: %q", v)
	}
	if v, err := f.ReadLeader(ctx, local, false); err == nil {
		t.Errorf("linearizable read at the partitioned member answered %q", v)
	} else {
		t.Logf("linearizable read at the partitioned member: %v", err)
	}

	ev := fl.awaitFence(t)
	afterPartition := ev.At.Sub(partitioned)
	sinceConfirmed := ev.At.Sub(ev.LastConfirmed)
	t.Logf("fenced %.2f s after the partition, %.2f s after the last confirming read began (budget %v): %s",
		afterPartition.Seconds(), sinceConfirmed.Seconds(), f.Budget(), ev.Reason)
	// Timers are not exact to the millisecond on a loaded machine.
	const slack = 100 * time.Millisecond
	if sinceConfirmed > f.Budget()+slack || afterPartition > f.Budget()+slack {
		t.Errorf("fenced %v after the partition, %v after the last confirmation: over the %v budget", afterPartition, sinceConfirmed, f.Budget())
	}
	if f.MayWrite() {
		t.Error("MayWrite after the fence")
	}

	// Only once the key is gone on the majority could a replica's Patroni
	// take it and promote.
	stillThere, gone := fl.awaitExpiry(t, ev.At)
	t.Logf("the key expired on the majority between %.2f s and %.2f s after the partition; the fence came at least %.2f s before",
		stillThere.Sub(partitioned).Seconds(), gone.Sub(partitioned).Seconds(), stillThere.Sub(ev.At).Seconds())
}

// TestRealFenceFrozenPatroni: node 3's Patroni stops renewing (as under
// SIGSTOP) while the network is whole. Linearizable reads go on naming m3
// until the lease runs out, so ttl - loop_wait from each read alone would
// let node 3 write past the expiry; the lease's time left makes the fence
// fire before it.
func TestRealFenceFrozenPatroni(t *testing.T) {
	bin := skipUnlessReal(t)
	fl := startFenceLab(t, bin)
	// Freeze right after a renewal, as a SIGSTOP between two would.
	for deadline := time.Now().Add(10 * time.Second); fl.lastRenewal().IsZero(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no renewal succeeded in 10 s")
		}
	}
	fl.stopRenew()
	frozen := time.Now()
	last := fl.lastRenewal()
	t.Logf("renewals stopped at %s; the last began %.2f s before", frozen.Format("15:04:05.000"), frozen.Sub(last).Seconds())
	ev := fl.awaitFence(t)
	st := fl.f.Status()
	t.Logf("fenced %.2f s after the last renewal began (%s): %s; the last confirming read began %.2f s before the fence",
		ev.At.Sub(last).Seconds(), ev.State, ev.Reason, ev.At.Sub(ev.LastConfirmed).Seconds())
	if ev.State != fence.Confirmed {
		t.Errorf("fence state %s: the reads should still have confirmed m3 (network whole)", ev.State)
	}
	// The lease lasts 10 s from the last renewal's arrival, which came an
	// etcdctl start-up (tenths of a second) after it began; the fence
	// comes at least the 1 s margin before that. The safety property
	// itself is awaitExpiry's: the key still there after the fence.
	if d := ev.At.Sub(last); d > 9*time.Second+500*time.Millisecond {
		t.Errorf("fenced %v after the last renewal began; want within ttl - margin = 9 s", d)
	}
	stillThere, gone := fl.awaitExpiry(t, ev.At)
	t.Logf("the key expired on the majority between %.2f s and %.2f s after the last renewal began; the fence came at least %.2f s before; "+
		"a deadline of ttl - loop_wait - margin from the last confirming read alone would have been %.2f s after the key was still seen",
		stillThere.Sub(last).Seconds(), gone.Sub(last).Seconds(), stillThere.Sub(ev.At).Seconds(),
		st.LastConfirmed.Add(7*time.Second).Sub(stillThere).Seconds())
}
