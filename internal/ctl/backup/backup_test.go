package backup

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/postgres"
)

func TestBackupJobs(t *testing.T) {
	var b jobs
	if b.snapshot() != nil {
		t.Fatalf("snapshot of no job is not nil")
	}
	release := make(chan struct{})
	finished := make(chan apitype.BackupJob, 2)
	job, err := b.start("incr", func(ctx context.Context, progress func(float64)) (string, error) {
		progress(40)
		progress(30) // never goes back
		<-release
		return "20261125-143629F", nil
	}, func(j apitype.BackupJob) { finished <- j })
	if err != nil || job.State != apitype.JobRunning || job.ID == "" {
		t.Fatalf("start = %+v, %v", job, err)
	}
	if _, err := b.start("full", nil, nil); err == nil {
		t.Fatalf("a second job started while one runs")
	}
	for i := 0; i < 100 && b.snapshot().Progress != 40; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if p := b.snapshot().Progress; p != 40 {
		t.Fatalf("progress = %v; want 40", p)
	}
	close(release)
	j := <-finished
	// The first backup is full whatever was asked: the label says so.
	if j.State != apitype.JobSucceeded || j.Label != "20261125-143629F" || j.Type != "full" || j.Progress != 100 || j.FinishedAt == nil {
		t.Fatalf("finished job = %+v", j)
	}

	// stop cancels a running job and waits for it.
	job2, err := b.start("full", func(ctx context.Context, _ func(float64)) (string, error) {
		<-ctx.Done()
		return "", ctx.Err()
	}, func(j apitype.BackupJob) { finished <- j })
	if err != nil || job2.ID == job.ID {
		t.Fatalf("second job = %+v, %v", job2, err)
	}
	done := make(chan struct{})
	go func() { b.stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("stop did not return")
	}
	if j := <-finished; j.State != apitype.JobFailed || !strings.Contains(j.Error, context.Canceled.Error()) {
		t.Fatalf("cancelled job = %+v", j)
	}
	b.stop() // idempotent
}

func TestLabelType(t *testing.T) {
	for label, want := range map[string]string{
		"20261125-143629F": "full", "20261125-143629F_20261125-143755D": "diff",
		"20261125-143629F_20261125-143758I": "incr", "": "asked",
	} {
		if got := labelType(label, "asked"); got != want {
			t.Errorf("labelType(%q) = %q; want %q", label, got, want)
		}
	}
}

// TestCreateRefuses: a backup needs a valid type, an Available key (its
// configuration is on the volume) and a running PostgreSQL; a refusal
// starts no job.
func TestCreateRefuses(t *testing.T) {
	state, pg := apitype.KeyAvailable, postgres.StateStopped
	b := New(Config{KeyState: func() string { return state }, PGStatus: func() postgres.Status { return postgres.Status{State: pg} }})
	for _, tt := range []struct {
		name, typ, state string
		pg               postgres.State
		code, contains   string
	}{
		{"bad type", "weekly", apitype.KeyAvailable, postgres.StateRunning, apitype.CodeInvalid, `invalid backup type "weekly"`},
		{"locked", "full", apitype.KeyLocked, postgres.StateRunning, apitype.CodeUnavailable, "while the server is Locked"},
		{"postgres down", "", apitype.KeyAvailable, postgres.StateStopped, apitype.CodeUnavailable, "PostgreSQL is not running"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			state, pg = tt.state, tt.pg
			var ae *apitype.Error
			if _, err := b.Create(tt.typ); !errors.As(err, &ae) || ae.Code != tt.code || !strings.Contains(ae.Message, tt.contains) {
				t.Errorf("Create(%q) error = %v; want %s containing %q", tt.typ, err, tt.code, tt.contains)
			}
			if _, err := b.Job(); !errors.As(err, &ae) || ae.Code != apitype.CodeNotFound {
				t.Errorf("Job() after a refusal = %v; want not found", err)
			}
		})
	}
	state = apitype.KeyInaccessible
	var ae *apitype.Error
	if _, err := b.List(context.Background()); !errors.As(err, &ae) || ae.Code != apitype.CodeUnavailable {
		t.Errorf("List() while Inaccessible = %v; want unavailable", err)
	}
}
