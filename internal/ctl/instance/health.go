package instance

import (
	"fmt"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/postgres"
)

// Health reports PostgreSQL not running: restarting after a crash (the
// supervisor waiting out its backoff or starting it again), starting or
// stopped. Each is critical: the gateway has no backend to give a session.
func (i *Instance) Health() []apitype.HealthCondition { return postgresHealth(i.Status()) }

func postgresHealth(st postgres.Status) []apitype.HealthCondition {
	switch st.State {
	case postgres.StateRunning:
		return nil
	case postgres.StateRestarting:
		msg := fmt.Sprintf("PostgreSQL exited unexpectedly at %s (%s) and is being restarted (restart %d since the daemon started)",
			st.LastCrashAt.UTC().Format(time.RFC3339), st.LastExit, st.Restarts)
		return []apitype.HealthCondition{{Name: "postgres_restarting", Severity: apitype.SeverityCritical, Message: msg, Since: st.LastCrashAt}}
	case postgres.StateStarting:
		if st.Restarts > 0 && !st.LastCrashAt.IsZero() {
			// The backoff is over; the same restart goes on.
			msg := fmt.Sprintf("PostgreSQL exited unexpectedly at %s (%s) and is starting again (restart %d since the daemon started)",
				st.LastCrashAt.UTC().Format(time.RFC3339), st.LastExit, st.Restarts)
			return []apitype.HealthCondition{{Name: "postgres_restarting", Severity: apitype.SeverityCritical, Message: msg, Since: st.LastCrashAt}}
		}
		return []apitype.HealthCondition{{Name: "postgres_starting", Severity: apitype.SeverityCritical, Message: "PostgreSQL is starting", Since: st.Since}}
	}
	return []apitype.HealthCondition{{Name: "postgres_stopped", Severity: apitype.SeverityCritical,
		Message: fmt.Sprintf("PostgreSQL is %s", st.State), Since: st.Since}}
}
