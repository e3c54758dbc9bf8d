// Package provision makes a new server: Init from nothing (`pgshield
// init`), Restore from another server's backup (`pgshield backup
// restore`). Each checks its options, then runs a Plan: steps that run in
// order and, when one fails or the run is cancelled, are undone in
// reverse, so that a failed run leaves nothing behind and can simply be
// run again. The two share the steps they have in common (server id, data
// directory, encrypted volume and keys, network rules, configuration).
package provision

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// Step is one thing a provisioning run does.
type Step struct {
	// Name says what the step makes ("encrypted volume"), for errors.
	Name string
	// Say, when set, is the line shown to the person waiting when the
	// step starts ("Creating the encrypted volume...").
	Say string
	// Do does the step's work.
	Do func(ctx context.Context) error
	// Undo, when set, takes back what Do did. It runs for a Do that failed
	// too, since that Do may have done part of its work: Undo must cope
	// with anything from none of the work to all of it. Its context is
	// not cancelled with the run's, so that Ctrl-C still cleans up.
	Undo func(ctx context.Context) error
}

// EventKind says what an Event reports.
type EventKind int

const (
	// StepStarted: the step named Step starts; Message is its Say.
	StepStarted EventKind = iota
	// Notice: Message is something the person should know, not a step
	// ("The source server is not running: ...").
	Notice
	// ProgressStarted: a long operation named Message starts.
	ProgressStarted
	// Progress: Percent of that operation is done.
	Progress
	// ProgressDone: that operation finished.
	ProgressDone
)

// Event is what a run reports to the person waiting for it.
type Event struct {
	Kind    EventKind
	Step    string
	Message string
	Percent float64
}

// Plan is a provisioning run's steps.
type Plan struct {
	Steps []Step
	// Report, when set, is told when each step starts.
	Report func(Event)
}

// Run runs the steps in order. When a step fails, or ctx is cancelled
// between steps, it undoes every step that started (the failed one too)
// in reverse order, carrying on past an undo that fails, and returns the
// step's error (ctx.Err() when cancelled between steps), joined with the
// undo errors if there are any. The error is returned as is otherwise, so
// callers still match it with errors.Is and errors.As either way.
func (p *Plan) Run(ctx context.Context) error {
	started := 0
	var err error
	for _, s := range p.Steps {
		if err = ctx.Err(); err != nil {
			break
		}
		p.report(Event{Kind: StepStarted, Step: s.Name, Message: s.Say})
		started++
		if err = s.Do(ctx); err != nil {
			break
		}
	}
	if err == nil {
		return nil
	}
	errs := []error{err}
	undoCtx := context.WithoutCancel(ctx)
	for i := started - 1; i >= 0; i-- {
		s := p.Steps[i]
		if s.Undo == nil {
			continue
		}
		if uerr := s.Undo(undoCtx); uerr != nil {
			errs = append(errs, fmt.Errorf("cleaning up after the failure (%s): %w", s.Name, uerr))
		}
	}
	if len(errs) == 1 {
		return err
	}
	return errors.Join(errs...)
}

func (p *Plan) report(e Event) {
	if p.Report != nil {
		p.Report(e)
	}
}

// reporter sends the events steps report themselves, one at a time:
// pgBackRest's progress comes from the goroutines reading its output.
type reporter struct {
	mu sync.Mutex
	f  func(Event)
}

func (r *reporter) send(e Event) {
	if r.f == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.f(e)
}

func (r *reporter) notice(msg string) { r.send(Event{Kind: Notice, Message: msg}) }

// testFault, set only by tests, is called after each step's Do that
// succeeded; an error it returns fails the step there, after all its work
// was done, so that tests see every step's Undo take back a complete Do.
var testFault func(s *server, step string) error

func withFault(steps []Step, s *server) []Step {
	out := make([]Step, len(steps))
	for i, st := range steps {
		do := st.Do
		st.Do = func(ctx context.Context) error {
			if err := do(ctx); err != nil {
				return err
			}
			return testFault(s, st.Name)
		}
		out[i] = st
	}
	return out
}
