package gateway

import (
	"testing"
	"time"
)

func TestLogBudget(t *testing.T) {
	var b logBudget
	t0 := time.Unix(1000, 0)
	passed := 0
	for i := 0; i < 100; i++ {
		if ok, _ := b.allow(t0); ok {
			passed++
		}
	}
	if passed != maxAttackerLogsPerSec {
		t.Fatalf("allow() passed %d lines in one second; want %d", passed, maxAttackerLogsPerSec)
	}
	ok, suppressed := b.allow(t0.Add(time.Second))
	if !ok || suppressed != 100-maxAttackerLogsPerSec {
		t.Fatalf("allow() in the next second = %v, suppressed %d; want true, %d", ok, suppressed, 100-maxAttackerLogsPerSec)
	}
}
