package mgmt

import (
	"net/http"

	"github.com/pgshield/pgshield/internal/apitype"
)

// HealthBackend is the health part of Backend: the conditions the
// controllers report, aggregated (internal/health).
type HealthBackend interface {
	Health() apitype.Health
}

// healthRoutes is GET /v1/health: always 200 with the health as JSON,
// since the API answering is itself the daemon being up; the metrics
// listener's /healthz maps the state to a status code for probes.
func healthRoutes(b HealthBackend) []Route {
	return []Route{
		{Method: "GET", Pattern: "/v1/health", Permission: PermitRead, Handler: func(*http.Request) (any, error) { return b.Health(), nil }},
	}
}
