package lru

import "testing"

func TestBoundAndOrder(t *testing.T) {
	l := New[string, int](2)
	l.Put("a", 1)
	l.Put("b", 2)
	if _, ok := l.Get("a"); !ok { // a is now the most recently used
		t.Fatal("Get(a) missing")
	}
	l.Put("c", 3) // evicts b, the least recently used
	if _, ok := l.Peek("b"); ok || l.Len() != 2 {
		t.Fatalf("after a third Put: b present = %v, Len = %d; want b evicted, 2", ok, l.Len())
	}
	// Peek does not mark used: a stays older than c.
	l.Put("c", 30)
	if v, _ := l.Peek("a"); v != 1 {
		t.Fatalf("Peek(a) = %d; want 1", v)
	}
	l.Put("d", 4) // evicts a (c was used after it)
	var keys []string
	l.Each(func(k string, _ int) { keys = append(keys, k) })
	if len(keys) != 2 || keys[0] != "c" || keys[1] != "d" {
		t.Fatalf("Each order = %v; want [c d] (oldest first)", keys)
	}
	l.Del("c")
	if _, ok := l.Get("c"); ok || l.Len() != 1 {
		t.Fatalf("after Del(c): present = %v, Len = %d", ok, l.Len())
	}
}
