package daemon

import (
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/keys"
	"github.com/pgshield/pgshield/internal/metrics"
	"github.com/pgshield/pgshield/internal/postgres"
)

// newMetrics makes the daemon's metrics; the gauges read live state at
// scrape time and tolerate parts not started yet.
func (d *Daemon) newMetrics() *metrics.Metrics {
	return metrics.New(map[string]func() float64{
		"pgshield_gateway_connections_active": func() float64 {
			if d.gw == nil {
				return 0
			}
			return float64(d.gw.Stats().Active)
		},
		"pgshield_gateway_connections_total": func() float64 {
			if d.gw == nil {
				return 0
			}
			return float64(d.gw.Stats().Total)
		},
		"pgshield_postgres_restarts_total": func() float64 {
			if sup := d.supervisor(); sup != nil {
				return float64(sup.Status().Restarts)
			}
			return 0
		},
		"pgshield_postgres_up": func() float64 {
			if sup := d.supervisor(); sup != nil && sup.Status().State == postgres.StateRunning {
				return 1
			}
			return 0
		},
		"pgshield_key_grace_remaining_seconds": func() float64 {
			d.revalMu.Lock()
			start := d.reval.graceStart
			d.revalMu.Unlock()
			if start.IsZero() {
				return 0
			}
			return max(0, (d.currentParams().KeyGrace - time.Since(start)).Seconds())
		},
	})
}

// storeKeyState sets the data key's state and records the transition.
func (d *Daemon) storeKeyState(ks *apitype.KeyState) {
	from := ""
	if cur := d.keyState.Load(); cur != nil {
		from = cur.State
	}
	d.keyState.Store(ks)
	d.metrics.KeyState(from, ks.State, ks.Since)
}

// revalidationResult names a revalidation's outcome for the metric.
func revalidationResult(err error) string {
	if err == nil {
		return "ok"
	}
	switch keys.ErrorKind(err) {
	case keys.KindDenied:
		return "denied"
	case keys.KindCorrupt:
		return "corrupt"
	}
	return "unreachable"
}
