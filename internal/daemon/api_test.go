package daemon

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/pgshield/pgshield/internal/postgres"
)

// TestPostgresStatusJSON: the API's flat PostgresStatus is what the daemon
// sent before apitype existed, its version beside an embedded
// postgres.Status; a field added to postgres.Status and set here shows up
// as a difference until apitype has it too.
func TestPostgresStatusJSON(t *testing.T) {
	at := time.Date(2026, 11, 25, 14, 36, 29, 0, time.UTC)
	for _, ps := range []postgres.Status{
		{State: postgres.StateRunning, PID: 42, Since: at, Restarts: 2, LastExit: "signal: killed", LastCrashAt: at.Add(-time.Minute)},
		{State: postgres.StateStopped, Since: at},
	} {
		legacy := struct {
			Version string `json:"version"`
			postgres.Status
		}{"15.18", ps}
		want, err := json.Marshal(legacy)
		if err != nil {
			t.Fatal(err)
		}
		got, err := json.Marshal(toAPIPostgresStatus("15.18", ps))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Errorf("toAPIPostgresStatus(%+v) = %s; want %s", ps, got, want)
		}
	}
}
