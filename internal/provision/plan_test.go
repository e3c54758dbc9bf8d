package provision

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
)

// fakeRun records what a plan's fake steps do, in order.
type fakeRun struct {
	log []string
	// undoCtxErr is the context error each Undo saw, by step name.
	undoCtxErr map[string]error
}

// step is a fake step named name: its Do fails with doErr, its Undo with
// undoErr; before is called at the start of Do (to cancel the run).
func (f *fakeRun) step(name string, doErr, undoErr error, before func()) Step {
	return Step{Name: name, Say: "Making " + name + "...",
		Do: func(ctx context.Context) error {
			if before != nil {
				before()
			}
			f.log = append(f.log, "do "+name)
			return doErr
		},
		Undo: func(ctx context.Context) error {
			if f.undoCtxErr == nil {
				f.undoCtxErr = map[string]error{}
			}
			f.undoCtxErr[name] = ctx.Err()
			f.log = append(f.log, "undo "+name)
			return undoErr
		}}
}

func TestPlanRunsStepsInOrder(t *testing.T) {
	f := &fakeRun{}
	var events []Event
	p := &Plan{Report: func(e Event) { events = append(events, e) }, Steps: []Step{
		f.step("a", nil, nil, nil),
		{Name: "quiet", Do: func(context.Context) error { f.log = append(f.log, "do quiet"); return nil }},
		f.step("b", nil, nil, nil),
	}}
	if err := p.Run(context.Background()); err != nil {
		t.Fatalf("Run() = %v; want nil", err)
	}
	if want := []string{"do a", "do quiet", "do b"}; !slices.Equal(f.log, want) {
		t.Errorf("steps ran %q; want %q", f.log, want)
	}
	want := []Event{
		{Kind: StepStarted, Step: "a", Message: "Making a..."},
		{Kind: StepStarted, Step: "quiet"},
		{Kind: StepStarted, Step: "b", Message: "Making b..."},
	}
	if !slices.Equal(events, want) {
		t.Errorf("events = %+v; want %+v", events, want)
	}
}

func TestPlanUndoesInReverseOnFailure(t *testing.T) {
	f := &fakeRun{}
	errC := &OptionError{errors.New("c failed")}
	p := &Plan{Steps: []Step{
		f.step("a", nil, nil, nil),
		{Name: "no undo", Do: func(context.Context) error { f.log = append(f.log, "do no undo"); return nil }},
		f.step("b", nil, nil, nil),
		f.step("c", errC, nil, nil),
		f.step("d", nil, nil, nil),
	}}
	err := p.Run(context.Background())
	// Returned as is: callers compare it and map it to exit codes.
	if err != error(errC) {
		t.Errorf("Run() = %v; want the failed step's error itself", err)
	}
	// The failed step is undone too: it may have done part of its work.
	if want := []string{"do a", "do no undo", "do b", "do c", "undo c", "undo b", "undo a"}; !slices.Equal(f.log, want) {
		t.Errorf("run = %q; want %q", f.log, want)
	}
}

func TestPlanUndoesOnCancellation(t *testing.T) {
	for _, tc := range []struct {
		name string
		// doErr is what b's Do returns after the run is cancelled in it.
		doErr    error
		wantLog  []string
		wantBoth bool // the error is b's, and wraps context.Canceled
	}{
		{
			name:    "between steps",
			wantLog: []string{"do a", "do b", "undo b", "undo a"},
		},
		{
			name:     "inside a step", // pgBackRest stopped by Ctrl-C
			doErr:    errors.New("pgbackrest restore: context canceled"),
			wantLog:  []string{"do a", "do b", "undo b", "undo a"},
			wantBoth: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			f := &fakeRun{}
			p := &Plan{Steps: []Step{
				f.step("a", nil, nil, nil),
				f.step("b", tc.doErr, nil, cancel),
				f.step("c", nil, nil, nil),
			}}
			err := p.Run(ctx)
			if tc.wantBoth {
				if err != tc.doErr {
					t.Errorf("Run() = %v; want the step's error %v", err, tc.doErr)
				}
			} else if !errors.Is(err, context.Canceled) {
				t.Errorf("Run() = %v; want context.Canceled", err)
			}
			if !slices.Equal(f.log, tc.wantLog) {
				t.Errorf("run = %q; want %q", f.log, tc.wantLog)
			}
			for name, cerr := range f.undoCtxErr {
				if cerr != nil {
					t.Errorf("undo %s ran with a cancelled context (%v): cleanup would be cut short", name, cerr)
				}
			}
		})
	}
}

func TestPlanCancelledBeforeStartRunsNothing(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	f := &fakeRun{}
	p := &Plan{Steps: []Step{f.step("a", nil, nil, nil)}}
	if err := p.Run(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Run() = %v; want context.Canceled", err)
	}
	if len(f.log) != 0 {
		t.Errorf("a cancelled run did %q; want nothing", f.log)
	}
}

func TestPlanUndoErrorIsReportedAndTheRestStillUndone(t *testing.T) {
	f := &fakeRun{}
	errD := &OptionError{errors.New("d failed")}
	errUndoB := errors.New("b would not go")
	errUndoC := errors.New("c would not go either")
	p := &Plan{Steps: []Step{
		f.step("a", nil, nil, nil),
		f.step("b", nil, errUndoB, nil),
		f.step("c", nil, errUndoC, nil),
		f.step("d", errD, nil, nil),
	}}
	err := p.Run(context.Background())
	if want := []string{"do a", "do b", "do c", "do d", "undo d", "undo c", "undo b", "undo a"}; !slices.Equal(f.log, want) {
		t.Errorf("run = %q; want %q", f.log, want)
	}
	var oe *OptionError
	if !errors.As(err, &oe) || oe != errD {
		t.Errorf("Run() = %v; want it to still carry the failed step's error", err)
	}
	if !errors.Is(err, errUndoB) || !errors.Is(err, errUndoC) {
		t.Errorf("Run() = %v; want it to carry both undo errors", err)
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "d failed\n") || !strings.Contains(msg, "(c): c would not go either") ||
		strings.Index(msg, "(c)") > strings.Index(msg, "(b)") {
		t.Errorf("Run() message = %q; want the step's error first, then the undo errors in undo order, each naming its step", msg)
	}
}
