// Package pool keeps idle backend sessions for reuse, keyed by what makes
// two sessions interchangeable (role, database, startup parameters), with
// per-key and total limits, idle and lifetime eviction and bounded waits.
// It does no I/O of its own: it closes the connections it is given, and
// its clock is injected. Resetting a backend before it is put back, and
// checking it when it is taken, are the caller's (internal/gateway).
package pool

import (
	"context"
	"errors"
	"io"
	"sort"
	"sync"
	"time"
)

// Key names the backends that may serve a client: the same role, the
// same database and the same startup parameters (Params, canonical: the
// gateway's encoding of every parameter it passes on). A backend is never
// handed to a client of another key.
type Key struct {
	Role, Database, Params string
}

// Config is the pool's limits; zero durations mean no limit.
type Config struct {
	// MaxPerKey caps the backends open for one key (in use and idle);
	// MaxIdlePerKey the idle ones kept for it. 0: no cap.
	MaxPerKey     int
	MaxIdlePerKey int
	// MaxPerKeyOf, if set, is MaxPerKey for each key (a cap for the keys
	// in transaction pooling only, when modes differ per role or database).
	MaxPerKeyOf func(Key) int
	// MaxTotal caps the backends open for all keys; an idle backend of
	// another key is closed to make room before anyone waits. 0: no cap.
	MaxTotal int
	// IdleTimeout closes a backend idle for longer; Lifetime one older.
	IdleTimeout time.Duration
	Lifetime    time.Duration
	// Now is the clock (time.Now if nil).
	Now func() time.Time
	// OnWait observes how long each Get that had to wait waited.
	OnWait func(time.Duration)
}

func (c *Config) maxPerKey(k Key) int {
	if c.MaxPerKeyOf != nil {
		return c.MaxPerKeyOf(k)
	}
	return c.MaxPerKey
}

// ErrTimeout is returned by Get when no backend became available before
// its context ended.
var ErrTimeout = errors.New("pool: timed out waiting for a backend")

// Lease is one backend slot, from Get to Put or Discard. Conn is the
// reused backend, or the zero value when the caller must open one (and
// then set Conn).
type Lease[T io.Closer] struct {
	Key     Key
	Conn    T
	Reused  bool
	created time.Time
	gen     uint64
	done    bool
}

// Created is when the backend was opened (when the lease was granted, for
// a new one).
func (l *Lease[T]) Created() time.Time { return l.created }

type idle[T io.Closer] struct {
	conn    T
	created time.Time
	since   time.Time
	gen     uint64
}

type keyState[T io.Closer] struct {
	open    int       // backends in use or idle
	idle    []idle[T] // oldest first
	clients int
	waiting int
	waits   uint64
	// queue is the Gets waiting for this key, oldest first: a backend
	// put back, or a slot freed, goes to the first directly (handOffLocked),
	// instead of waking every waiter to race for it.
	queue []*waiter[T]
}

// waiter is a Get waiting in its key's queue; it is sent one lease.
type waiter[T io.Closer] struct {
	ch    chan *Lease[T]
	start time.Time
}

// Pool is safe for concurrent use.
type Pool[T io.Closer] struct {
	mu struct {
		sync.Mutex
		cfg   Config
		keys  map[Key]*keyState[T]
		total int
		gen   uint64
		// changed is closed and replaced whenever a slot or an idle
		// backend becomes available, to wake waiters.
		changed chan struct{}
	}
}

// New makes a pool.
func New[T io.Closer](cfg Config) *Pool[T] {
	p := &Pool[T]{}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	p.mu.cfg = cfg
	p.mu.keys = map[Key]*keyState[T]{}
	p.mu.changed = make(chan struct{})
	return p
}

// SetConfig changes the limits; idle backends now over them are closed.
// Backends in use are closed when they come back, if still over.
func (p *Pool[T]) SetConfig(cfg Config) {
	p.mu.Lock()
	if cfg.Now == nil {
		cfg.Now = p.mu.cfg.Now
	}
	if cfg.OnWait == nil {
		cfg.OnWait = p.mu.cfg.OnWait
	}
	p.mu.cfg = cfg
	var victims []T
	for _, ks := range p.mu.keys {
		for cfg.MaxIdlePerKey > 0 && len(ks.idle) > cfg.MaxIdlePerKey {
			victims = append(victims, p.dropIdleLocked(ks, 0))
		}
	}
	p.wakeLocked()
	p.mu.Unlock()
	closeAll(victims)
	p.Evict()
}

func (p *Pool[T]) stateLocked(k Key) *keyState[T] {
	ks := p.mu.keys[k]
	if ks == nil {
		ks = &keyState[T]{}
		p.mu.keys[k] = ks
	}
	return ks
}

// forgetLocked drops a key's state once nothing refers to it.
func (p *Pool[T]) forgetLocked(k Key) {
	if ks := p.mu.keys[k]; ks != nil && ks.open == 0 && ks.clients == 0 && ks.waiting == 0 {
		delete(p.mu.keys, k)
	}
}

func (p *Pool[T]) wakeLocked() {
	close(p.mu.changed)
	p.mu.changed = make(chan struct{})
}

// dropIdleLocked removes ks.idle[i] and frees its slot; the caller closes
// the returned backend outside the lock.
func (p *Pool[T]) dropIdleLocked(ks *keyState[T], i int) T {
	c := ks.idle[i].conn
	ks.idle = append(ks.idle[:i], ks.idle[i+1:]...)
	ks.open--
	p.mu.total--
	return c
}

// Get leases a backend for k: the most recently used idle one (its Conn
// set, Reused), or a slot to open a new one. While the key or the total
// is at its limit, it closes an idle backend of another key to make room,
// or waits until ctx ends (ErrTimeout).
func (p *Pool[T]) Get(ctx context.Context, k Key) (*Lease[T], error) {
	return p.GetPrefer(ctx, k, nil)
}

// GetPrefer is Get, taking an idle backend prefer accepts (newest first)
// over the most recently used one if there is any (transaction pooling:
// the backend a client used last needs no reset for it).
func (p *Pool[T]) GetPrefer(ctx context.Context, k Key, prefer func(T) bool) (*Lease[T], error) {
	return p.GetPreferWithin(ctx, k, prefer, 0)
}

// GetPreferWithin is GetPrefer waiting at most wait (0: until ctx ends);
// the timer is made only if it has to wait (transaction pooling takes a
// backend for every transaction).
func (p *Pool[T]) GetPreferWithin(ctx context.Context, k Key, prefer func(T) bool, wait time.Duration) (*Lease[T], error) {
	var start time.Time
	waited := false
	for {
		p.mu.Lock()
		cfg := p.mu.cfg
		ks := p.stateLocked(k)
		now := cfg.Now()
		var victims []T
		for i := len(ks.idle) - 1; prefer != nil && i >= 0; i-- {
			if it := ks.idle[i]; it.gen == p.mu.gen && !p.expiredLocked(it, now) && prefer(it.conn) {
				ks.idle = append(ks.idle[:i], ks.idle[i+1:]...)
				p.gotLocked(ks, waited, start)
				p.mu.Unlock()
				return &Lease[T]{Key: k, Conn: it.conn, Reused: true, created: it.created, gen: it.gen}, nil
			}
		}
		// Newest first: the oldest age out (IdleTimeout) when load drops.
		for len(ks.idle) > 0 {
			it := ks.idle[len(ks.idle)-1]
			ks.idle = ks.idle[:len(ks.idle)-1]
			if it.gen != p.mu.gen || p.expiredLocked(it, now) {
				ks.open--
				p.mu.total--
				victims = append(victims, it.conn)
				continue
			}
			p.gotLocked(ks, waited, start)
			p.mu.Unlock()
			closeAll(victims)
			return &Lease[T]{Key: k, Conn: it.conn, Reused: true, created: it.created, gen: it.gen}, nil
		}
		maxPerKey := cfg.maxPerKey(k)
		keyFull := maxPerKey > 0 && ks.open >= maxPerKey
		if !keyFull && cfg.MaxTotal > 0 && p.mu.total >= cfg.MaxTotal {
			if v, ok := p.evictOldestIdleLocked(); ok {
				victims = append(victims, v)
			}
		}
		if !keyFull && (cfg.MaxTotal == 0 || p.mu.total < cfg.MaxTotal) {
			ks.open++
			p.mu.total++
			p.gotLocked(ks, waited, start)
			l := &Lease[T]{Key: k, created: now, gen: p.mu.gen}
			p.mu.Unlock()
			closeAll(victims)
			return l, nil
		}
		if !waited {
			waited, start = true, now
			ks.waiting++
			ks.waits++
		}
		w := &waiter[T]{ch: make(chan *Lease[T], 1), start: start}
		ks.queue = append(ks.queue, w)
		ch := p.mu.changed
		p.mu.Unlock()
		closeAll(victims)
		if wait > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, wait)
			defer cancel()
			wait = 0
		}
		select {
		case l := <-w.ch: // handed off (counted by handOffLocked)
			return l, nil
		case <-ch:
		case <-ctx.Done():
		}
		p.mu.Lock()
		if !p.unqueueLocked(ks, w) {
			// Handed off in the meantime: it is ours.
			p.mu.Unlock()
			return <-w.ch, nil
		}
		if ctx.Err() != nil {
			ks.waiting--
			p.forgetLocked(k)
			p.mu.Unlock()
			if cfg.OnWait != nil {
				cfg.OnWait(cfg.Now().Sub(start))
			}
			return nil, ErrTimeout
		}
		p.mu.Unlock()
	}
}

// unqueueLocked takes w out of ks's queue; false if it is no longer there
// (a lease was handed to it).
func (p *Pool[T]) unqueueLocked(ks *keyState[T], w *waiter[T]) bool {
	for i, q := range ks.queue {
		if q == w {
			ks.queue = append(ks.queue[:i], ks.queue[i+1:]...)
			return true
		}
	}
	return false
}

// handOffLocked gives the first waiter of ks, if any, a lease: on conn
// (reused) when has, else a slot to open a new one if the limits allow.
func (p *Pool[T]) handOffLocked(k Key, ks *keyState[T], it idle[T], has bool) bool {
	if len(ks.queue) == 0 {
		return false
	}
	cfg := p.mu.cfg
	now := cfg.Now()
	l := &Lease[T]{Key: k, Conn: it.conn, Reused: true, created: it.created, gen: it.gen}
	if !has {
		if max := cfg.maxPerKey(k); (max > 0 && ks.open >= max) || (cfg.MaxTotal > 0 && p.mu.total >= cfg.MaxTotal) {
			return false
		}
		ks.open++
		p.mu.total++
		l = &Lease[T]{Key: k, created: now, gen: p.mu.gen}
	}
	w := ks.queue[0]
	ks.queue = ks.queue[1:]
	ks.waiting--
	if cfg.OnWait != nil {
		cfg.OnWait(now.Sub(w.start))
	}
	w.ch <- l
	return true
}

func (p *Pool[T]) gotLocked(ks *keyState[T], waited bool, start time.Time) {
	if !waited {
		return
	}
	ks.waiting--
	if f := p.mu.cfg.OnWait; f != nil {
		f(p.mu.cfg.Now().Sub(start))
	}
}

func (p *Pool[T]) expiredLocked(it idle[T], now time.Time) bool {
	cfg := p.mu.cfg
	return (cfg.IdleTimeout > 0 && now.Sub(it.since) >= cfg.IdleTimeout) ||
		(cfg.Lifetime > 0 && now.Sub(it.created) >= cfg.Lifetime)
}

// evictOldestIdleLocked drops the idle backend idle the longest, of any key.
func (p *Pool[T]) evictOldestIdleLocked() (T, bool) {
	var best *keyState[T]
	for _, ks := range p.mu.keys {
		if len(ks.idle) > 0 && (best == nil || ks.idle[0].since.Before(best.idle[0].since)) {
			best = ks
		}
	}
	if best == nil {
		var zero T
		return zero, false
	}
	return p.dropIdleLocked(best, 0), true
}

// Put returns a leased backend, reset and ready for another client of its
// key. It is closed instead if it outlived Lifetime, was leased before a
// Drain, or the key already keeps MaxIdlePerKey idle ones. A lease is
// ended once: Put or Discard after either is a no-op.
func (p *Pool[T]) Put(l *Lease[T]) {
	p.mu.Lock()
	if l.done {
		p.mu.Unlock()
		return
	}
	l.done = true
	cfg := p.mu.cfg
	now := cfg.Now()
	ks := p.stateLocked(l.Key)
	it := idle[T]{conn: l.Conn, created: l.created, since: now, gen: l.gen}
	if it.gen != p.mu.gen || p.expiredLocked(it, now) ||
		(cfg.MaxIdlePerKey > 0 && len(ks.idle) >= cfg.MaxIdlePerKey) ||
		(cfg.maxPerKey(l.Key) > 0 && ks.open > cfg.maxPerKey(l.Key)) || (cfg.MaxTotal > 0 && p.mu.total > cfg.MaxTotal) {
		ks.open--
		p.mu.total--
		if !p.handOffLocked(l.Key, ks, idle[T]{}, false) {
			p.forgetLocked(l.Key)
			p.wakeLocked()
		}
		p.mu.Unlock()
		l.Conn.Close()
		return
	}
	if !p.handOffLocked(l.Key, ks, it, true) {
		ks.idle = append(ks.idle, it)
		p.wakeLocked()
	}
	p.mu.Unlock()
}

// Discard ends a lease whose backend is not to be reused: it is closed
// (if the caller opened one) and its slot freed.
func (p *Pool[T]) Discard(l *Lease[T]) {
	p.mu.Lock()
	if l.done {
		p.mu.Unlock()
		return
	}
	l.done = true
	ks := p.stateLocked(l.Key)
	ks.open--
	p.mu.total--
	if !p.handOffLocked(l.Key, ks, idle[T]{}, false) {
		p.forgetLocked(l.Key)
		p.wakeLocked()
	}
	p.mu.Unlock()
	if !isZero(l.Conn) {
		l.Conn.Close()
	}
}

func isZero[T io.Closer](c T) bool {
	var zero T
	return any(c) == any(zero)
}

// Evict closes the idle backends past IdleTimeout or Lifetime; the caller
// runs it periodically.
func (p *Pool[T]) Evict() {
	p.drop(func(Key) bool { return false })
}

// Drain closes every idle backend, and makes those in use be closed when
// they come back: for when PostgreSQL restarts or the server is locked.
func (p *Pool[T]) Drain() {
	p.mu.Lock()
	p.mu.gen++
	p.mu.Unlock()
	p.drop(func(Key) bool { return true })
}

// DrainRole closes the idle backends of role: it was dropped or may no
// longer log in.
func (p *Pool[T]) DrainRole(role string) {
	p.drop(func(k Key) bool { return k.Role == role })
}

// drop closes the idle backends of the keys all selects, and the expired
// ones of every key.
func (p *Pool[T]) drop(all func(Key) bool) {
	p.mu.Lock()
	now := p.mu.cfg.Now()
	var victims []T
	for k, ks := range p.mu.keys {
		everything := all(k)
		for i := 0; i < len(ks.idle); {
			if everything || ks.idle[i].gen != p.mu.gen || p.expiredLocked(ks.idle[i], now) {
				victims = append(victims, p.dropIdleLocked(ks, i))
				continue
			}
			i++
		}
		p.forgetLocked(k)
	}
	if len(victims) > 0 {
		p.wakeLocked()
	}
	p.mu.Unlock()
	closeAll(victims)
}

// ClientStart and ClientEnd count the clients of a key, for Stats.
func (p *Pool[T]) ClientStart(k Key) {
	p.mu.Lock()
	p.stateLocked(k).clients++
	p.mu.Unlock()
}

// ClientEnd is ClientStart's counterpart.
func (p *Pool[T]) ClientEnd(k Key) {
	p.mu.Lock()
	p.stateLocked(k).clients--
	p.forgetLocked(k)
	p.mu.Unlock()
}

// KeyStats is one key's counters.
type KeyStats struct {
	Role, Database string
	Clients        int
	Active, Idle   int
	// Waiting is the clients waiting now; Waits those that ever had to.
	Waiting int
	Waits   uint64
}

// Stats lists the keys by role and database; keys that differ only in
// startup parameters are summed.
func (p *Pool[T]) Stats() []KeyStats {
	p.mu.Lock()
	m := map[[2]string]*KeyStats{}
	for k, ks := range p.mu.keys {
		id := [2]string{k.Role, k.Database}
		s := m[id]
		if s == nil {
			s = &KeyStats{Role: k.Role, Database: k.Database}
			m[id] = s
		}
		s.Clients += ks.clients
		s.Active += ks.open - len(ks.idle)
		s.Idle += len(ks.idle)
		s.Waiting += ks.waiting
		s.Waits += ks.waits
	}
	p.mu.Unlock()
	out := make([]KeyStats, 0, len(m))
	for _, s := range m {
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Role != out[j].Role {
			return out[i].Role < out[j].Role
		}
		return out[i].Database < out[j].Database
	})
	return out
}

func closeAll[T io.Closer](cs []T) {
	for _, c := range cs {
		c.Close()
	}
}
