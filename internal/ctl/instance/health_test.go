package instance

import (
	"strings"
	"testing"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/postgres"
)

func TestPostgresHealth(t *testing.T) {
	crash := time.Date(2026, 12, 6, 20, 0, 0, 0, time.UTC)
	if h := postgresHealth(postgres.Status{State: postgres.StateRunning, Restarts: 3}); len(h) != 0 {
		t.Errorf("Running = %+v; want nothing (past restarts are history)", h)
	}
	h := postgresHealth(postgres.Status{State: postgres.StateRestarting, Restarts: 2, LastExit: "signal: killed", LastCrashAt: crash})
	if len(h) != 1 || h[0].Name != "postgres_restarting" || h[0].Severity != apitype.SeverityCritical ||
		!h[0].Since.Equal(crash) || !strings.Contains(h[0].Message, "signal: killed") || !strings.Contains(h[0].Message, "restart 2") {
		t.Errorf("Restarting = %+v", h)
	}
	// After the backoff the supervisor starts it: the same restart.
	h = postgresHealth(postgres.Status{State: postgres.StateStarting, Restarts: 2, LastExit: "signal: killed", LastCrashAt: crash})
	if len(h) != 1 || h[0].Name != "postgres_restarting" || !strings.Contains(h[0].Message, "starting again") {
		t.Errorf("Starting after a crash = %+v; want postgres_restarting", h)
	}
	for state, name := range map[postgres.State]string{postgres.StateStarting: "postgres_starting",
		postgres.StateStopped: "postgres_stopped", postgres.StateStopping: "postgres_stopped"} {
		if h := postgresHealth(postgres.Status{State: state}); len(h) != 1 || h[0].Name != name || h[0].Severity != apitype.SeverityCritical {
			t.Errorf("%s = %+v; want %s", state, h, name)
		}
	}
}
