package audit

import (
	"context"
	"sync"
	"testing"
	"time"
)

func TestFollowAcrossRotation(t *testing.T) {
	dir := t.TempDir()
	// A tiny size limit makes the log rotate every few records.
	l, err := Open(dir, WithMaxSize(600))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := 0; i < 3; i++ {
		if err := l.Write(Event{Type: "before"}); err != nil {
			t.Fatal(err)
		}
	}
	start, _ := l.Head()
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var got []Record
	done := make(chan error, 1)
	go func() {
		done <- Follow(ctx, dir, start, func(r Record) error {
			mu.Lock()
			got = append(got, r)
			mu.Unlock()
			return nil
		})
	}()
	const n = 40
	for i := 0; i < n; i++ {
		if err := l.Write(Event{Type: "after", Reason: "some words to make the records long enough to rotate"}); err != nil {
			t.Fatal(err)
		}
		if i%7 == 0 {
			time.Sleep(30 * time.Millisecond)
		}
	}
	segs, _ := segments(dir)
	if len(segs) < 3 {
		t.Fatalf("log has %d segments; want rotation during the test", len(segs))
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		k := len(got)
		mu.Unlock()
		if k >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != n {
		t.Fatalf("Follow delivered %d records; want %d", len(got), n)
	}
	for i, r := range got {
		if r.Type != "after" || r.Seq != start+uint64(i)+1 {
			t.Fatalf("record %d = seq %d type %q; want seq %d, in order, none before the start", i, r.Seq, r.Type, start+uint64(i)+1)
		}
	}
}
