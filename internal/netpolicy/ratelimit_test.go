package netpolicy

import (
	"math"
	"net/netip"
	"sync"
	"testing"
	"time"
)

func TestRateLimiterBurstThenRefill(t *testing.T) {
	clk := newFakeClock()
	rl := NewRateLimiter(2, 3, clk.Now) // 2 a second, burst 3
	src := a("192.0.2.1")
	for i := range 3 {
		if !rl.Allow(src) {
			t.Fatalf("Allow(%v) #%d within burst = false; want true", src, i+1)
		}
	}
	if rl.Allow(src) {
		t.Fatalf("Allow(%v) after the burst = true; want false", src)
	}
	if !rl.Allow(a("192.0.2.2")) {
		t.Fatal("Allow(192.0.2.2) = false; want another address to have its own bucket")
	}
	clk.Add(250 * time.Millisecond) // half a token
	if rl.Allow(src) {
		t.Fatalf("Allow(%v) after 250ms = true; want false", src)
	}
	clk.Add(250 * time.Millisecond) // one token
	if !rl.Allow(src) {
		t.Fatalf("Allow(%v) after 500ms = false; want true", src)
	}
	if rl.Allow(src) {
		t.Fatalf("Allow(%v) right after spending the refill = true; want false", src)
	}
	clk.Add(time.Hour) // refills to the burst, no more
	n := 0
	for rl.Allow(src) {
		n++
	}
	if n != 3 {
		t.Fatalf("Allow(%v) after an hour succeeded %d times; want the burst, 3", src, n)
	}
	clk.Add(-time.Hour) // a clock going back refills nothing
	if rl.Allow(src) {
		t.Fatalf("Allow(%v) after the clock went back = true; want false", src)
	}
}

func TestRateLimiterKeys(t *testing.T) {
	tests := []struct {
		name     string
		first    string
		second   string
		wantSame bool
	}{
		{name: "same /64", first: "2001:db8:1:2::1", second: "2001:db8:1:2:ffff:ffff:ffff:ffff", wantSame: true},
		{name: "neighbouring /64", first: "2001:db8:1:2::1", second: "2001:db8:1:3::1"},
		{name: "IPv4 per address", first: "192.0.2.1", second: "192.0.2.2"},
		{name: "mapped is IPv4", first: "::ffff:192.0.2.1", second: "192.0.2.1", wantSame: true},
		{name: "zone ignored", first: "fe80::1%eth0", second: "fe80::2%eth1", wantSame: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rl := NewRateLimiter(1, 1, newFakeClock().Now)
			if !rl.Allow(a(tt.first)) {
				t.Fatalf("Allow(%s) first = false; want true", tt.first)
			}
			if got := rl.Allow(a(tt.second)); got == tt.wantSame {
				t.Fatalf("Allow(%s) after Allow(%s) = %v; want %v", tt.second, tt.first, got, !tt.wantSame)
			}
		})
	}
}

func TestRateLimiterDisabled(t *testing.T) {
	for _, rate := range []float64{0, -1, math.NaN()} {
		rl := NewRateLimiter(rate, 1, nil)
		for i := range 100 {
			if !rl.Allow(a("192.0.2.1")) {
				t.Fatalf("NewRateLimiter(%v).Allow() #%d = false; want limiting disabled", rate, i+1)
			}
		}
		if rl.Len() != 0 {
			t.Fatalf("NewRateLimiter(%v).Len() = %d; want 0", rate, rl.Len())
		}
	}
	var nilRL *RateLimiter
	if !nilRL.Allow(a("192.0.2.1")) || nilRL.Len() != 0 {
		t.Fatal("nil RateLimiter refused or remembered a source")
	}
	rl := NewRateLimiter(1, 0, newFakeClock().Now) // burst below 1 counts as 1
	if !rl.Allow(a("192.0.2.1")) || rl.Allow(a("192.0.2.1")) {
		t.Fatal("NewRateLimiter(1, 0) did not allow exactly one attempt")
	}
}

func TestRateLimiterEviction(t *testing.T) {
	clk := newFakeClock()
	rl := NewRateLimiter(1, 1, clk.Now)
	rl.maxKeys = 10
	if rl := NewRateLimiter(1, 1, nil); rl.maxKeys != DefaultMaxRateKeys {
		t.Fatalf("NewRateLimiter().maxKeys = %d; want %d", rl.maxKeys, DefaultMaxRateKeys)
	}
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)}) }
	hot := a("192.0.2.1")
	rl.Allow(hot) // spends hot's only token
	for i := range 1000 {
		rl.Allow(addr(i))
		if i%5 == 0 && rl.Allow(hot) {
			t.Fatalf("Allow(%v) = true while it was recently seen and empty; want false", hot)
		}
		if n := rl.Len(); n > 10 {
			t.Fatalf("Len() = %d after %d sources; want at most 10", n, i+2)
		}
	}
	// The oldest source was evicted and starts again with a full bucket.
	if !rl.Allow(addr(0)) {
		t.Fatalf("Allow(%v) after eviction = false; want a fresh bucket", addr(0))
	}
	// The most recent ones are still remembered and empty.
	if rl.Allow(addr(999)) {
		t.Fatalf("Allow(%v) = true; want it still remembered and empty", addr(999))
	}
}

func TestRateLimiterConcurrent(t *testing.T) {
	rl := NewRateLimiter(1000, 10, nil)
	rl.maxKeys = 64
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				rl.Allow(netip.AddrFrom4([4]byte{10, byte(g), 0, byte(i % 100)}))
			}
		})
	}
	wg.Wait()
	if n := rl.Len(); n > 64 {
		t.Fatalf("Len() = %d; want at most 64", n)
	}
}
