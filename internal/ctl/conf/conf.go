// Package conf is the controller of a running server's configuration
// (pgshield.json): one value, replaced and never mutated, and one lock
// that serializes every change so that a change and what it applies
// (PostgreSQL's files, the kernel firewall) happen in the same order for
// everyone.
package conf

import (
	"sync"

	"github.com/pgshield/pgshield/internal/config"
)

// Store holds the configuration in force.
//
// Lock order: Store's lock is taken inside the keys controller's lock
// (a key change saves the new key URI), never around it. Edit's function
// must not call Get: the lock is not reentrant (postgres.Cluster.Live is
// Get, so code under Edit writes PostgreSQL's files with Live unset).
type Store struct {
	layout config.Layout
	mu     sync.Mutex
	cfg    *config.Config // guarded by mu; replaced, never mutated
}

// New makes a store over cfg, saved in l's configuration file.
func New(l config.Layout, cfg *config.Config) *Store { return &Store{layout: l, cfg: cfg} }

// Get returns the configuration in force. Callers must not change it.
func (s *Store) Get() *config.Config {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg
}

// Params resolves the parameters in force. The stored set was validated
// when it was saved, so an error cannot happen here; the zero value of
// what fails to resolve is the fallback.
func (s *Store) Params() config.Params {
	p, _ := config.ResolveParams(s.Get().Parameters)
	return p
}

// Layout is the data directory the configuration lives in.
func (s *Store) Layout() config.Layout { return s.layout }

// Edit runs fn with the store locked: cur is the configuration in force,
// and commit saves next to disk and, once saved, puts it in force. fn may
// commit more than once (to undo); what it did not commit is not kept.
func (s *Store) Edit(fn func(cur *config.Config, commit func(next *config.Config) error) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fn(s.cfg, func(next *config.Config) error {
		if err := config.Save(s.layout, next); err != nil {
			return err
		}
		s.cfg = next
		return nil
	})
}
