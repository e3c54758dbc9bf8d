// Package lru is a map bounded to a number of entries that evicts the least
// recently used one. Every key an attacker can mint (a source address, a
// role name from the wire) lands in one, so that none grows without end.
package lru

import "container/list"

// Map is a bounded map. It is not safe for concurrent use: its owner
// serializes it (threat.Guard's lock, alerting.Detector's caller).
type Map[K comparable, V any] struct {
	max int
	ll  *list.List // front: most recently used
	m   map[K]*list.Element
}

type item[K comparable, V any] struct {
	k K
	v V
}

// New returns a Map of at most max entries.
func New[K comparable, V any](max int) *Map[K, V] {
	return &Map[K, V]{max: max, ll: list.New(), m: map[K]*list.Element{}}
}

// Get returns k's value and marks it used.
func (l *Map[K, V]) Get(k K) (V, bool) {
	e, ok := l.m[k]
	if !ok {
		var zero V
		return zero, false
	}
	l.ll.MoveToFront(e)
	return e.Value.(*item[K, V]).v, true
}

// Peek returns k's value without marking it used.
func (l *Map[K, V]) Peek(k K) (V, bool) {
	e, ok := l.m[k]
	if !ok {
		var zero V
		return zero, false
	}
	return e.Value.(*item[K, V]).v, true
}

// Put sets k's value, marks it used and evicts the oldest entries beyond
// the bound.
func (l *Map[K, V]) Put(k K, v V) {
	if e, ok := l.m[k]; ok {
		e.Value.(*item[K, V]).v = v
		l.ll.MoveToFront(e)
		return
	}
	l.m[k] = l.ll.PushFront(&item[K, V]{k: k, v: v})
	for l.ll.Len() > l.max {
		old := l.ll.Back()
		l.ll.Remove(old)
		delete(l.m, old.Value.(*item[K, V]).k)
	}
}

// Del removes k.
func (l *Map[K, V]) Del(k K) {
	if e, ok := l.m[k]; ok {
		l.ll.Remove(e)
		delete(l.m, k)
	}
}

// Len is the number of entries.
func (l *Map[K, V]) Len() int { return l.ll.Len() }

// Each calls f from the oldest entry to the newest, so that loading what
// it saw with Put keeps the order; f must not change l.
func (l *Map[K, V]) Each(f func(K, V)) {
	for e := l.ll.Back(); e != nil; e = e.Prev() {
		it := e.Value.(*item[K, V])
		f(it.k, it.v)
	}
}
