package daemon

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/health"
)

// healthTracker remembers when conditions were first seen. One daemon runs
// per process, so one tracker serves it.
var healthTracker health.Tracker

// Health aggregates what each controller reports about what it owns.
func (a api) Health() apitype.Health {
	d := a.d
	conds := [][]apitype.HealthCondition{d.pg.Health(), d.keys.Health(), d.audit.Health(), d.volume.Health()}
	if d.certs != nil {
		conds = append(conds, d.certs.Health())
	}
	return healthTracker.Aggregate(time.Now(), conds...)
}

// healthz serves /healthz on the metrics listener for load balancers and
// probes: 200 when ok or degraded (the server serves), 503 when
// unavailable. That listener may be reachable from the network, so the
// body names the state and the conditions only: their messages (paths,
// errors, key names) stay on the root-only management API.
func (a api) healthz() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { writeHealthz(w, a.Health()) })
}

func writeHealthz(w http.ResponseWriter, h apitype.Health) {
	type cond struct {
		Name     string `json:"name"`
		Severity string `json:"severity"`
	}
	body := struct {
		State      string `json:"state"`
		Conditions []cond `json:"conditions"`
	}{State: h.State, Conditions: []cond{}}
	for _, c := range h.Conditions {
		body.Conditions = append(body.Conditions, cond{c.Name, c.Severity})
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if h.State == apitype.HealthUnavailable {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(body)
}
