package daemon

import (
	"context"
	"crypto/fips140"
	"net/http"
	"os"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/mgmt"
	"github.com/pgshield/pgshield/internal/postgres"
)

// api is the management API's backend: mgmt.Routes decodes each request
// and calls one of these methods, each of which hands the request to the
// controller that owns it. Nothing here holds state or a lock.
type api struct{ d *Daemon }

var _ mgmt.Backend = api{}

// Status reports the server's state for `pgshield status`.
func (a api) Status(ctx context.Context) apitype.Status {
	d := a.d
	cfg := d.conf.Get()
	p := d.conf.Params()
	ps := d.pg.Status()
	state := "Available"
	if ks := d.keys.State(); ks != apitype.KeyAvailable {
		state = ks
	} else if ps.State != postgres.StateRunning {
		state = "Unavailable"
	}
	state = d.lifecycleState(state)
	h := a.Health()
	return apitype.Status{
		Health: &h,
		State:  state, Listen: d.network.Listen(), StartedAt: d.started,
		UptimeSeconds: int64(time.Since(d.started).Seconds()), PID: os.Getpid(),
		Postgres:    toAPIPostgresStatus(d.version, ps),
		Connections: apitype.ConnectionStats(d.gateway().Stats()), AdminUser: cfg.AdminUser, DataDir: d.Layout.Root, Key: d.keys.Info(),
		FIPS140:        fips140.Enabled(),
		PendingRestart: d.pendingRestart(ctx),
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
func (a api) Shutdown() {
	go func() { time.Sleep(50 * time.Millisecond); a.d.stop() }()
}

// MetricsHandler serves the metrics in Prometheus' text format.
func (a api) MetricsHandler() http.Handler { return a.d.metrics.Handler() }

func (a api) Parameters(ctx context.Context) ([]apitype.ParameterValue, error) {
	return a.d.params.Parameters(ctx)
}
func (a api) Parameter(ctx context.Context, name string) (apitype.ParameterValue, error) {
	return a.d.params.Parameter(ctx, name)
}
func (a api) SetParameter(ctx context.Context, name, value string) (apitype.ParameterValue, error) {
	return a.d.params.SetParameter(ctx, name, value)
}

func (a api) Key() apitype.KeyInfo                { return a.d.keys.Info() }
func (a api) LockKey() (apitype.KeyInfo, error)   { return a.d.keys.Lock() }
func (a api) UnlockKey() (apitype.KeyInfo, error) { return a.d.keys.Unlock() }
func (a api) RevalidateKey(ctx context.Context) apitype.KeyInfo {
	return a.d.keys.Revalidate(ctx)
}
func (a api) ChangeKey(ctx context.Context, keyURI string, rotate bool) (apitype.KeyInfo, error) {
	return a.d.keys.Change(ctx, keyURI, rotate)
}

func (a api) Backups(ctx context.Context) (apitype.BackupList, error) { return a.d.backups.List(ctx) }
func (a api) CreateBackup(typ string) (*apitype.BackupJob, error)     { return a.d.backups.Create(typ) }
func (a api) BackupJob() (*apitype.BackupJob, error)                  { return a.d.backups.Job() }
func (a api) ArchiveWAL(ctx context.Context) (apitype.ArchiveResult, error) {
	return a.d.backups.ArchiveWAL(ctx)
}

func (a api) Network() apitype.NetworkInfo { return a.d.network.Info() }
func (a api) SetNetworkMode(mode string) (apitype.NetworkInfo, error) {
	return a.d.network.SetMode(mode)
}
func (a api) FirewallRules() []apitype.FirewallRule { return a.d.network.FirewallRules() }
func (a api) FirewallRule(name string) (apitype.FirewallRule, error) {
	return a.d.network.FirewallRule(name)
}
func (a api) WriteFirewallRule(req apitype.RuleRequest, create bool) (apitype.FirewallRule, error) {
	return a.d.network.WriteFirewallRule(req, create)
}
func (a api) DeleteFirewallRule(name string) error { return a.d.network.DeleteFirewallRule(name) }
func (a api) NetworkRules() []apitype.NetworkRule  { return a.d.network.NetworkRules() }
func (a api) NetworkRule(name string) (apitype.NetworkRule, error) {
	return a.d.network.NetworkRule(name)
}
func (a api) CreateNetworkRule(req apitype.RuleRequest) (apitype.NetworkRule, error) {
	return a.d.network.CreateNetworkRule(req)
}
func (a api) DeleteNetworkRule(name string) error { return a.d.network.DeleteNetworkRule(name) }

func (a api) Principals(ctx context.Context) ([]apitype.Principal, error) {
	return a.d.principals.List(ctx)
}
func (a api) CreatePrincipal(ctx context.Context, req apitype.PrincipalRequest) (apitype.Principal, error) {
	return a.d.principals.Create(ctx, req)
}
func (a api) DeletePrincipal(ctx context.Context, name string) (apitype.Principal, error) {
	return a.d.principals.Delete(ctx, name)
}

func (a api) Storage(ctx context.Context) apitype.StorageInfo { return a.d.volume.Info(ctx) }
func (a api) ResizeStorage(sizeBytes int64) (apitype.StorageResizeResult, error) {
	return a.d.volume.Resize(sizeBytes)
}

// Pool lists the gateway's backend pools.
func (a api) Pool() apitype.PoolInfo {
	p := a.d.conf.Params().Pool
	info := apitype.PoolInfo{Mode: p.Mode, ModeOverrides: p.Overrides.String(), Size: p.Size, MaxTotal: p.MaxTotal,
		MaxTotalAuto: p.MaxTotal == config.AutoPoolMaxTotal, Pools: []apitype.PoolEntry{}}
	if gw := a.d.gateway(); gw != nil {
		info.MaxTotal = gw.PoolMaxTotal()
		for _, s := range gw.PoolStats() {
			info.Pools = append(info.Pools, apitype.PoolEntry{Role: s.Role, Database: s.Database, Mode: p.ModeFor(s.Role, s.Database), Clients: s.Clients,
				Active: s.Active, Idle: s.Idle, Waiting: s.Waiting, Waits: s.Waits})
		}
	}
	return info
}

// Cluster is this node's view of its cluster.
func (a api) Cluster(ctx context.Context) (apitype.ClusterInfo, error) {
	if a.d.node == nil {
		return apitype.ClusterInfo{}, clienterr.New(apitype.CodeNotFound, "this server is a single node, not a cluster node (init --ha)")
	}
	return a.d.node.Show(ctx), nil
}

// AuditAnchors are the cluster's audit anchors in etcd.
func (a api) AuditAnchors(ctx context.Context) ([]apitype.AuditAnchor, error) {
	if a.d.node == nil {
		return nil, clienterr.New(apitype.CodeNotFound, "this server is a single node, not a cluster node (init --ha)")
	}
	as, err := a.d.node.Anchors(ctx)
	if err != nil {
		return nil, clienterr.New(apitype.CodeUnavailable, "reading the audit anchors: %v", err)
	}
	return as, nil
}

// ClusterAllowJoin opens this node's join window for a peer: it may ask
// for the cluster's secrets over the link once.
func (a api) ClusterAllowJoin(req apitype.ClusterJoinRequest) (apitype.ClusterJoinWindow, error) {
	if a.d.node == nil {
		return apitype.ClusterJoinWindow{}, clienterr.New(apitype.CodeNotFound, "this server is a single node, not a cluster node (init --ha)")
	}
	d := 15 * time.Minute
	if req.Seconds != 0 {
		d = time.Duration(req.Seconds) * time.Second
	}
	until, err := a.d.node.AllowJoin(req.Node, d)
	if err != nil {
		return apitype.ClusterJoinWindow{}, clienterr.New(apitype.CodeInvalid, "%v", err)
	}
	a.d.audit.Record(audit.Event{Type: "cluster.join_window", Outcome: audit.OutcomeSuccess,
		Fields: map[string]any{"node": req.Node, "until": until.UTC().Format(time.RFC3339)}})
	return apitype.ClusterJoinWindow{Node: req.Node, Until: until}, nil
}

// ClusterManual runs a switchover or a failover through Patroni.
func (a api) ClusterManual(ctx context.Context, action, to string) (apitype.ClusterManualResult, error) {
	if a.d.node == nil {
		return apitype.ClusterManualResult{}, clienterr.New(apitype.CodeNotFound, "this server is a single node, not a cluster node (init --ha)")
	}
	if action == "failover" {
		return a.d.node.Failover(ctx, to)
	}
	return a.d.node.Switchover(ctx, to)
}

// Bans lists the sources banned after repeated failed logins.
func (a api) Bans() []apitype.Ban { return a.d.threat.Bans() }

// Unban lifts the ban on source.
func (a api) Unban(source string) (apitype.Ban, error) { return a.d.threat.Unban(source) }

// Alerts lists the security alerts, newest first.
func (a api) Alerts() []apitype.Alert { return a.d.alerts.List() }

// Alert returns one alert.
func (a api) Alert(id string) (apitype.Alert, error) { return a.d.alerts.Get(id) }

// DismissAlert marks an alert dismissed.
func (a api) DismissAlert(id string) (apitype.Alert, error) { return a.d.alerts.Dismiss(id) }

// Decoys lists the decoys.
func (a api) Decoys() []apitype.Decoy { return a.d.alerts.Decoys() }

// CreateDecoy makes a decoy role or table.
func (a api) CreateDecoy(ctx context.Context, req apitype.DecoyRequest) (apitype.Decoy, error) {
	return a.d.alerts.CreateDecoy(ctx, req)
}

// DeleteDecoy removes a decoy.
func (a api) DeleteDecoy(ctx context.Context, name, database string) (apitype.Decoy, error) {
	return a.d.alerts.DeleteDecoy(ctx, name, database)
}
