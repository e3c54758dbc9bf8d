package daemon

import (
	"context"
	"crypto/fips140"
	"net/http"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/mgmt"
	"github.com/pgshield/pgshield/internal/postgres"
)

// The daemon is the management API's backend: mgmt.Routes decodes each
// request and calls one of the methods below or in the files of their
// areas (parameters.go, key.go, keywatch.go, backup.go, network.go,
// principals.go, storage.go).
var _ mgmt.Backend = (*Daemon)(nil)

// Status reports the server's state for `pgshield status`.
func (d *Daemon) Status(context.Context) apitype.Status {
	cfg := d.config()
	p, _ := config.ResolveParams(cfg.Parameters)
	ps := d.supervisor().Status()
	state := "Available"
	if ks := d.keyState.Load(); ks.State != apitype.KeyAvailable {
		state = ks.State
	} else if ps.State != postgres.StateRunning {
		state = "Unavailable"
	}
	return apitype.Status{
		State: state, Listen: d.listen, StartedAt: d.started,
		UptimeSeconds: int64(time.Since(d.started).Seconds()), PID: osGetpid(),
		Postgres:    toAPIPostgresStatus(d.version, ps),
		Connections: apitype.ConnectionStats(d.gw.Stats()), AdminUser: cfg.AdminUser, DataDir: d.Layout.Root, Key: d.Key(),
		FIPS140: fips140.Enabled(),
		TLS: apitype.TLSStatus{
			RequireSecureTransport: p.Values["require_secure_transport"],
			MinProtocolVersion:     p.Values["ssl_min_protocol_version"],
			MaxProtocolVersion:     p.Values["ssl_max_protocol_version"],
		},
	}
}

func toAPIPostgresStatus(version string, ps postgres.Status) apitype.PostgresStatus {
	return apitype.PostgresStatus{Version: version, State: string(ps.State), PID: ps.PID, Since: ps.Since,
		Restarts: ps.Restarts, LastExit: ps.LastExit, LastCrashAt: ps.LastCrashAt}
}

// Shutdown stops the daemon shortly: the API answers first, and the
// caller waits for the pid file to go.
func (d *Daemon) Shutdown() {
	go func() { time.Sleep(50 * time.Millisecond); d.stop() }()
}

// MetricsHandler serves the metrics in Prometheus' text format.
func (d *Daemon) MetricsHandler() http.Handler { return d.metrics.Handler() }
