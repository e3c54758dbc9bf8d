package threat

import (
	"context"
	"time"

	"github.com/pgshield/pgshield/internal/audit"
)

// limitsInterval is how often PostgreSQL's connection limits are read:
// max_connections changes only with a restart, which this notices within
// the interval (a query a few seconds apart costs nothing).
const limitsInterval = 10 * time.Second

// followLimits reads PostgreSQL's limits until ctx ends.
func (c *Controller) followLimits(ctx context.Context) {
	if c.cfg.Pool == nil {
		return
	}
	every := c.cfg.LimitsInterval
	if every <= 0 {
		every = limitsInterval
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		c.RefreshLimits(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// RefreshLimits reads max_connections and superuser_reserved_connections
// and gives them to the guard; a change is logged and audited. PostgreSQL
// down: nothing changes.
func (c *Controller) RefreshLimits(ctx context.Context) {
	pool := c.cfg.Pool()
	if pool == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var maxConns, reserved int
	if err := pool.QueryRow(ctx, sqlConnectionLimits).Scan(&maxConns, &reserved); err != nil {
		return
	}
	n, changed := c.g.SetServerLimits(maxConns, reserved)
	if !changed {
		return
	}
	c.cfg.Log.Info("Session cap derived from PostgreSQL's limits.", "max_connections", maxConns,
		"superuser_reserved_connections", reserved, "sessions", n)
	c.cfg.Audit(audit.Event{Type: "threat.session_cap", Outcome: audit.OutcomeSuccess,
		Reason: "session cap derived from PostgreSQL's max_connections",
		Fields: map[string]any{"max_connections": maxConns, "superuser_reserved_connections": reserved,
			"derived_max_sessions": n, "in_force": c.g.MaxSessions()}})
}
