package pool

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type fakeConn struct {
	id     int
	closed atomic.Int32
}

func (c *fakeConn) Close() error { c.closed.Add(1); return nil }

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newPool(cfg Config) (*Pool[*fakeConn], *fakeClock) {
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	cfg.Now = clk.Now
	return New[*fakeConn](cfg), clk
}

var (
	alice = Key{Role: "alice", Database: "db"}
	bob   = Key{Role: "bob", Database: "db"}
)

// get leases k, opening a new fake backend if none is idle.
func get(t *testing.T, p *Pool[*fakeConn], k Key, next *int) *Lease[*fakeConn] {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l, err := p.Get(ctx, k)
	if err != nil {
		t.Fatalf("Get(%v) error = %v; want a lease", k, err)
	}
	if !l.Reused {
		*next++
		l.Conn = &fakeConn{id: *next}
	}
	return l
}

func TestReuseSameKeyOnly(t *testing.T) {
	p, _ := newPool(Config{})
	n := 0
	l := get(t, p, alice, &n)
	c := l.Conn
	p.Put(l)
	if l2 := get(t, p, bob, &n); l2.Reused || l2.Conn == c {
		t.Fatalf("bob got alice's backend")
	}
	for _, k := range []Key{{Role: "alice", Database: "other"}, {Role: "alice", Database: "db", Params: "application_name=x"}} {
		if l2 := get(t, p, k, &n); l2.Reused {
			t.Fatalf("Get(%v) reused alice/db's backend", k)
		}
	}
	l3 := get(t, p, alice, &n)
	if !l3.Reused || l3.Conn != c {
		t.Fatalf("Get(alice) = %v reused %v; want backend %d again", l3.Conn.id, l3.Reused, c.id)
	}
}

func TestIdleAndLifetimeEviction(t *testing.T) {
	p, clk := newPool(Config{IdleTimeout: time.Minute, Lifetime: time.Hour})
	n := 0
	l := get(t, p, alice, &n)
	c := l.Conn
	p.Put(l)
	clk.Add(59 * time.Second)
	p.Evict()
	if c.closed.Load() != 0 {
		t.Fatal("closed before the idle timeout")
	}
	clk.Add(time.Second)
	p.Evict()
	if c.closed.Load() != 1 {
		t.Fatal("not closed at the idle timeout")
	}
	if l := get(t, p, alice, &n); l.Reused {
		t.Fatal("an evicted backend was reused")
	}

	// Lifetime: used all the time, closed when it comes back too old.
	l = get(t, p, bob, &n)
	c = l.Conn
	for i := 0; i < 70; i++ {
		clk.Add(time.Minute - time.Second)
		p.Put(l)
		l = get(t, p, bob, &n)
		if l.Conn != c {
			break
		}
	}
	if c.closed.Load() != 1 || l.Conn == c {
		t.Fatalf("backend older than the lifetime still in use (closed %d)", c.closed.Load())
	}
	// Expired on Get, too (no Evict in between).
	p.Put(l)
	clk.Add(2 * time.Minute)
	if l2 := get(t, p, bob, &n); l2.Reused {
		t.Fatal("Get handed out a backend past its idle timeout")
	}
}

func TestLimitsAndWait(t *testing.T) {
	var waits atomic.Int32
	p, _ := newPool(Config{MaxPerKey: 2, MaxTotal: 3, OnWait: func(time.Duration) { waits.Add(1) }})
	n := 0
	a1, a2 := get(t, p, alice, &n), get(t, p, alice, &n)
	// Alice is at her limit: the next Get waits, and times out.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	_, err := p.Get(ctx, alice)
	cancel()
	if err != ErrTimeout {
		t.Fatalf("Get over the per-key limit = %v; want ErrTimeout", err)
	}
	// The same with the wait given as a duration, on a context without one.
	start := time.Now()
	if _, err := p.GetPreferWithin(context.Background(), alice, nil, 20*time.Millisecond); err != ErrTimeout || time.Since(start) > 5*time.Second {
		t.Fatalf("GetPreferWithin over the per-key limit = %v after %v; want ErrTimeout after 20ms", err, time.Since(start))
	}
	// Bob may still open one (total 3).
	b1 := get(t, p, bob, &n)
	// A waiter is woken when a slot frees.
	got := make(chan *Lease[*fakeConn], 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		l, err := p.Get(ctx, alice)
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	for i := 0; i < 1000 && statsOf(p, "alice").Waiting == 0; i++ {
		time.Sleep(time.Millisecond)
	}
	p.Put(a1)
	l := <-got
	if l == nil || !l.Reused || l.Conn != a1.Conn {
		t.Fatalf("the waiter did not get the returned backend")
	}
	if waits.Load() != 3 {
		t.Errorf("OnWait called %d times; want 3", waits.Load())
	}
	// Total full (a2, l, b1): bob's idle backend is closed to make room for carol.
	p.Put(b1)
	carol := get(t, p, Key{Role: "carol", Database: "db"}, &n)
	if b1.Conn.closed.Load() != 1 || carol.Reused {
		t.Fatalf("bob's idle backend was not evicted for carol")
	}
	p.Discard(a2)
	if a2.Conn.closed.Load() != 1 {
		t.Fatal("Discard did not close")
	}
	p.Discard(a2) // a second end is a no-op
	if s := statsOf(p, "alice"); s.Active != 1 || s.Idle != 0 || s.Waits != 3 {
		t.Errorf("alice stats = %+v; want 1 active, 0 idle, 3 waits", s)
	}
}

func TestMaxIdleAndDrain(t *testing.T) {
	p, _ := newPool(Config{MaxIdlePerKey: 1})
	n := 0
	a1, a2 := get(t, p, alice, &n), get(t, p, alice, &n)
	p.Put(a1)
	p.Put(a2)
	if a2.Conn.closed.Load() != 1 || a1.Conn.closed.Load() != 0 {
		t.Fatal("more than MaxIdlePerKey kept")
	}
	inUse := get(t, p, alice, &n) // a1
	b := get(t, p, bob, &n)
	p.Put(b)
	p.DrainRole("bob")
	if b.Conn.closed.Load() != 1 {
		t.Fatal("DrainRole left bob's idle backend open")
	}
	p.Drain()
	p.Put(inUse) // leased before the drain: closed
	if inUse.Conn.closed.Load() != 1 {
		t.Fatal("a backend leased before Drain was kept")
	}
	if s := p.Stats(); len(s) != 0 {
		t.Fatalf("Stats after drain = %+v; want none", s)
	}
}

func TestSetConfigShrinks(t *testing.T) {
	p, _ := newPool(Config{})
	n := 0
	var ls []*Lease[*fakeConn]
	for i := 0; i < 4; i++ {
		ls = append(ls, get(t, p, alice, &n))
	}
	for _, l := range ls {
		p.Put(l)
	}
	p.SetConfig(Config{MaxIdlePerKey: 1})
	closed := 0
	for _, l := range ls {
		closed += int(l.Conn.closed.Load())
	}
	if closed != 3 {
		t.Fatalf("%d closed after shrinking to 1 idle; want 3", closed)
	}
}

func TestConcurrent(t *testing.T) {
	p, _ := newPool(Config{MaxPerKey: 3, MaxTotal: 5, MaxIdlePerKey: 2})
	var opened atomic.Int32
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k := Key{Role: fmt.Sprint("r", g%4), Database: "db"}
			for i := 0; i < 200; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				l, err := p.Get(ctx, k)
				cancel()
				if err != nil {
					t.Error(err)
					return
				}
				if !l.Reused {
					opened.Add(1)
					l.Conn = &fakeConn{}
				}
				if l.Conn.closed.Load() != 0 {
					t.Error("got a closed backend")
				}
				s := p.Stats()
				total := 0
				for _, ks := range s {
					total += ks.Active + ks.Idle
				}
				if total > 5 {
					t.Errorf("%d backends open; want ≤ 5", total)
				}
				if i%7 == 0 {
					p.Discard(l)
				} else {
					p.Put(l)
				}
				if i%50 == 0 {
					p.Evict()
				}
			}
		}()
	}
	wg.Wait()
	p.Drain()
	if s := p.Stats(); len(s) != 0 {
		t.Fatalf("Stats after all returned and drained = %+v; want none", s)
	}
}

func statsOf(p *Pool[*fakeConn], role string) KeyStats {
	for _, s := range p.Stats() {
		if s.Role == role {
			return s
		}
	}
	return KeyStats{}
}

// TestGetPrefer: the preferred idle backend of the key is taken over the
// most recent one; none preferred, Get's choice; never another key's.
func TestGetPrefer(t *testing.T) {
	p, _ := newPool(Config{})
	n := 0
	a, b, o := get(t, p, alice, &n), get(t, p, alice, &n), get(t, p, bob, &n)
	p.Put(a)
	p.Put(b)
	p.Put(o)
	ctx := context.Background()
	is := func(want *fakeConn) func(*fakeConn) bool { return func(c *fakeConn) bool { return c == want } }
	l, err := p.GetPrefer(ctx, alice, is(a.Conn))
	if err != nil || l.Conn != a.Conn || !l.Reused {
		t.Fatalf("GetPrefer(a) = %v, %v; want a's backend", l, err)
	}
	if l2, err := p.GetPrefer(ctx, alice, is(o.Conn)); err != nil || l2.Conn != b.Conn {
		t.Fatalf("GetPrefer(bob's) for alice = %v, %v; want alice's other backend", l2, err)
	}
}

// TestMaxPerKeyOf: a per-key cap (transaction pooling for one database)
// holds that key to it while another key opens as many as it likes.
func TestMaxPerKeyOf(t *testing.T) {
	capped := Key{Role: "alice", Database: "reports"}
	p, _ := newPool(Config{MaxPerKey: 1, MaxPerKeyOf: func(k Key) int {
		if k.Database == "reports" {
			return 1
		}
		return 0
	}})
	n := 0
	c1 := get(t, p, capped, &n)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	_, err := p.Get(ctx, capped)
	cancel()
	if err != ErrTimeout {
		t.Fatalf("second Get of the capped key = %v; want ErrTimeout", err)
	}
	// alice in db has no cap, though MaxPerKey says 1: MaxPerKeyOf wins.
	for i := 0; i < 3; i++ {
		get(t, p, alice, &n)
	}
	if s := statsOf(p, "alice"); s.Database != "db" || s.Active != 3 {
		t.Fatalf("alice's backends in db = %+v; want 3 active", s)
	}
	// Put of the capped key keeps it (open 1 = cap), the next Get reuses it.
	p.Put(c1)
	if l := get(t, p, capped, &n); !l.Reused || l.Conn != c1.Conn {
		t.Fatal("the capped key's backend was not kept and reused")
	}
}

// TestHandOffFIFO: with clients waiting for a full key, a backend put back
// goes to the one waiting longest, and a slot freed by a Discard to the
// next (to open a new backend); the idle list is bypassed.
func TestHandOffFIFO(t *testing.T) {
	p, _ := newPool(Config{MaxPerKey: 1})
	n := 0
	a := get(t, p, alice, &n)
	type got struct {
		who int
		l   *Lease[*fakeConn]
	}
	out := make(chan got, 2)
	for who := 1; who <= 2; who++ {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			l, err := p.Get(ctx, alice)
			if err != nil {
				t.Error(err)
			}
			out <- got{who, l}
		}()
		for i := 0; i < 1000 && statsOf(p, "alice").Waiting < who; i++ {
			time.Sleep(time.Millisecond)
		}
	}
	p.Put(a)
	first := <-out
	if first.who != 1 || first.l == nil || !first.l.Reused || first.l.Conn != a.Conn {
		t.Fatalf("first hand-off went to waiter %d (%+v); want waiter 1 with the backend put back", first.who, first.l)
	}
	p.Discard(first.l)
	second := <-out
	if second.who != 2 || second.l == nil || second.l.Reused {
		t.Fatalf("second hand-off went to waiter %d (%+v); want waiter 2 with a slot to open", second.who, second.l)
	}
	if s := statsOf(p, "alice"); s.Active != 1 || s.Idle != 0 || s.Waiting != 0 || s.Waits != 2 {
		t.Errorf("alice stats = %+v; want 1 active, none idle or waiting, 2 waits", s)
	}
}
