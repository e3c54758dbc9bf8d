package netpolicy

import (
	"container/list"
	"math"
	"net/netip"
	"sync"
	"time"
)

// DefaultMaxRateKeys bounds the sources a RateLimiter remembers.
const DefaultMaxRateKeys = 100_000

// RateLimiter is a token bucket per source: IPv4 sources per address, IPv6
// sources per /64 (what one host or subscriber usually holds). It remembers
// at most DefaultMaxRateKeys sources and forgets the least recently seen
// first; a forgotten source starts again with a full bucket. It is safe for
// concurrent use. A nil RateLimiter allows everything.
type RateLimiter struct {
	rate    float64 // tokens per second; <= 0 disables limiting
	burst   float64
	now     func() time.Time
	maxKeys int

	mu struct {
		sync.Mutex
		buckets map[netip.Addr]*list.Element // of *bucket
		lru     list.List                    // most recently seen at the front
	}
}

type bucket struct {
	key    netip.Addr
	tokens float64
	last   time.Time
}

// NewRateLimiter returns a limiter that lets each source make burst
// attempts at once and ratePerSec attempts a second after that. A
// ratePerSec of zero or less (or NaN) disables limiting; a burst below 1
// counts as 1. now is the clock; nil means time.Now.
func NewRateLimiter(ratePerSec float64, burst int, now func() time.Time) *RateLimiter {
	if now == nil {
		now = time.Now
	}
	if !(ratePerSec > 0) {
		ratePerSec = 0
	}
	rl := &RateLimiter{rate: ratePerSec, burst: float64(max(burst, 1)), now: now, maxKeys: DefaultMaxRateKeys}
	rl.mu.buckets = map[netip.Addr]*list.Element{}
	return rl
}

// rateKey is the address a source is counted under.
func rateKey(src netip.Addr) netip.Addr {
	src = normalizeAddr(src)
	if src.Is6() {
		p, _ := src.Prefix(64)
		return p.Addr()
	}
	return src
}

// Allow reports whether src may make an attempt now, and if so spends one
// of its tokens.
func (rl *RateLimiter) Allow(src netip.Addr) bool {
	if rl == nil || rl.rate <= 0 {
		return true
	}
	key := rateKey(src)
	now := rl.now()
	rl.mu.Lock()
	defer rl.mu.Unlock()
	var b *bucket
	if el, ok := rl.mu.buckets[key]; ok {
		rl.mu.lru.MoveToFront(el)
		b = el.Value.(*bucket)
		if elapsed := now.Sub(b.last).Seconds(); elapsed > 0 {
			b.tokens = math.Min(rl.burst, b.tokens+elapsed*rl.rate)
			b.last = now
		}
	} else {
		for len(rl.mu.buckets) >= rl.maxKeys {
			oldest := rl.mu.lru.Back()
			rl.mu.lru.Remove(oldest)
			delete(rl.mu.buckets, oldest.Value.(*bucket).key)
		}
		b = &bucket{key: key, tokens: rl.burst, last: now}
		rl.mu.buckets[key] = rl.mu.lru.PushFront(b)
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// Len returns how many sources the limiter remembers.
func (rl *RateLimiter) Len() int {
	if rl == nil {
		return 0
	}
	rl.mu.Lock()
	defer rl.mu.Unlock()
	return len(rl.mu.buckets)
}
