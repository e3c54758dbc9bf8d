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

// TestRealFence runs node 3's fence against the real cluster: Patroni's
// leader key names m3 under a 10 s lease that "node 3's Patroni" renews
// every 2 s (ttl/loop_wait 10/2 as the tests' Patroni timings), margin 1 s.
// Then node 3 is partitioned. Its member still answers serializable reads
// with "m3"; linearizable reads fail; the fence fires within the 7 s
// budget of the partition, before the majority lets the key expire (the
// moment a replica could promote).
func TestRealFence(t *testing.T) {
	bin := skipUnlessReal(t)
	ctx := context.Background()
	r := startRealCluster(t, bin)
	const node = 2 // m3
	all := etcdctl{ns: r.lab.ns[node], endpoint: strings.Join(r.c.Endpoints(), ","), args: r.tlsArgs}

	out, err := all.run(ctx, "lease", "grant", "10")
	m := regexp.MustCompile(`lease ([0-9a-f]+) granted`).FindStringSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("lease grant: %v %s", err, out)
	}
	lease := m[1]
	const key = "/pgshield/pg1/leader"
	if out, err := all.run(ctx, "put", "--lease="+lease, key, "m3"); err != nil {
		t.Fatalf("put leader key: %v %s", err, out)
	}
	// Node 3's Patroni: a keepalive every loop_wait, from node 3.
	kaCtx, stopKA := context.WithCancel(ctx)
	var kaWG sync.WaitGroup
	kaWG.Add(1)
	go func() {
		defer kaWG.Done()
		for kaCtx.Err() == nil {
			_, _ = all.run(kaCtx, "lease", "keep-alive", "--once", lease)
			select {
			case <-kaCtx.Done():
			case <-time.After(2 * time.Second):
			}
		}
	}()
	defer func() { stopKA(); kaWG.Wait() }()

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
	local := ClientURL(r.c.Members[node])
	eps := []string{local, ClientURL(r.c.Members[0]), ClientURL(r.c.Members[1])}
	fenced := make(chan fence.Event, 4)
	confirmed := make(chan struct{}, 4)
	f, err := fence.New(fence.Config{
		Endpoints: eps,
		TLS:       &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}},
		Namespace: "/pgshield/", Scope: "pg1", Node: "m3",
		TTL: 10 * time.Second, LoopWait: 2 * time.Second, Margin: time.Second,
		OnFence:     func(ev fence.Event) { fenced <- ev },
		OnConfirm:   func() { confirmed <- struct{}{} },
		DialContext: nsDialer(r.lab.ns[node]),
	})
	if err != nil {
		t.Fatal(err)
	}
	fctx, stopFence := context.WithCancel(ctx)
	fdone := make(chan error, 1)
	go func() { fdone <- f.Run(fctx) }()
	defer func() {
		stopFence()
		if err := <-fdone; !errors.Is(err, context.Canceled) {
			t.Errorf("fence Run = %v", err)
		}
	}()
	select {
	case <-confirmed:
	case <-time.After(15 * time.Second):
		t.Fatalf("leadership never confirmed: %+v", f.Status())
	}
	st := f.Status()
	t.Logf("before the partition: %s, may write until %s after the last confirmation", st.State, st.Deadline.Sub(st.LastConfirmed))
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

	var ev fence.Event
	select {
	case ev = <-fenced:
	case <-time.After(20 * time.Second):
		t.Fatalf("no fence 20 s after the partition: %+v", f.Status())
	}
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

	// The majority lets the key expire some time later: only then could a
	// replica's Patroni take the key and promote. A linearizable read on
	// the majority that began after the fence and still found the key
	// shows the fence came first.
	maj := etcdctl{ns: r.lab.ns[0], endpoint: ClientURL(r.c.Members[0]), args: r.tlsArgs}
	var stillThere, gone time.Time
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		began := time.Now()
		out, err := maj.run(ctx, "get", "--consistency=l", "--print-value-only", key)
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
	if stillThere.IsZero() || !ev.At.Before(stillThere) {
		t.Fatalf("no read after the fence (%s) found the key still held: last %s", ev.At.Format("15:04:05.000"), stillThere.Format("15:04:05.000"))
	}
	t.Logf("the key expired on the majority between %.2f s and %.2f s after the partition; the fence came at least %.2f s before",
		stillThere.Sub(partitioned).Seconds(), gone.Sub(partitioned).Seconds(), stillThere.Sub(ev.At).Seconds())
}
