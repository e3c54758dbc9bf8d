package alerting

import "container/list"

// lru is a map bounded to max entries that evicts the least recently used
// one: every key an attacker can mint (a source, a role name) lands in one,
// and none may grow without end. Not safe for concurrent use; the
// Detector's caller serializes it.
type lru[K comparable, V any] struct {
	max int
	ll  *list.List // front: most recently used
	m   map[K]*list.Element
}

type lruItem[K comparable, V any] struct {
	k K
	v V
}

func newLRU[K comparable, V any](max int) *lru[K, V] {
	return &lru[K, V]{max: max, ll: list.New(), m: map[K]*list.Element{}}
}

// get returns k's value and marks it used.
func (l *lru[K, V]) get(k K) (V, bool) {
	e, ok := l.m[k]
	if !ok {
		var zero V
		return zero, false
	}
	l.ll.MoveToFront(e)
	return e.Value.(*lruItem[K, V]).v, true
}

// put sets k's value, marks it used and evicts the oldest entries beyond max.
func (l *lru[K, V]) put(k K, v V) {
	if e, ok := l.m[k]; ok {
		e.Value.(*lruItem[K, V]).v = v
		l.ll.MoveToFront(e)
		return
	}
	l.m[k] = l.ll.PushFront(&lruItem[K, V]{k: k, v: v})
	for l.ll.Len() > l.max {
		old := l.ll.Back()
		l.ll.Remove(old)
		delete(l.m, old.Value.(*lruItem[K, V]).k)
	}
}

func (l *lru[K, V]) del(k K) {
	if e, ok := l.m[k]; ok {
		l.ll.Remove(e)
		delete(l.m, k)
	}
}

func (l *lru[K, V]) len() int { return l.ll.Len() }

// each calls f from the oldest entry to the newest, so that loading what it
// saw with put keeps the order; f must not change l.
func (l *lru[K, V]) each(f func(K, V)) {
	for e := l.ll.Back(); e != nil; e = e.Prev() {
		it := e.Value.(*lruItem[K, V])
		f(it.k, it.v)
	}
}
