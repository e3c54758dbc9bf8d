package mgmt

import (
	"context"
	"net/http"
	"net/http/pprof"

	"github.com/pgshield/pgshield/internal/apitype"
)

// Backend is what the handlers call: the daemon. Each method does one
// route's work on typed values; errors meant for the client are
// clienterr.Errors with an apitype code.
type Backend interface {
	// Server.
	Status(ctx context.Context) apitype.Status
	// Shutdown answers at once and stops the daemon shortly after.
	Shutdown()
	// Restart restarts PostgreSQL, the daemon and volume staying up.
	Restart(ctx context.Context) (apitype.RestartResult, error)
	MetricsHandler() http.Handler

	// Parameters.
	Parameters(ctx context.Context) ([]apitype.ParameterValue, error)
	Parameter(ctx context.Context, name string) (apitype.ParameterValue, error)
	SetParameter(ctx context.Context, name, value string) (apitype.ParameterValue, error)

	// Data key.
	Key() apitype.KeyInfo
	LockKey() (apitype.KeyInfo, error)
	UnlockKey() (apitype.KeyInfo, error)
	RevalidateKey(ctx context.Context) apitype.KeyInfo
	// ChangeKey re-wraps the data key under keyURI (set) or under the
	// current key's newest version (rotate, keyURI may be empty).
	ChangeKey(ctx context.Context, keyURI string, rotate bool) (apitype.KeyInfo, error)

	// Backups.
	Backups(ctx context.Context) (apitype.BackupList, error)
	CreateBackup(typ string) (*apitype.BackupJob, error)
	BackupJob() (*apitype.BackupJob, error)
	ArchiveWAL(ctx context.Context) (apitype.ArchiveResult, error)

	// Network policy.
	Network() apitype.NetworkInfo
	SetNetworkMode(mode string) (apitype.NetworkInfo, error)
	FirewallRules() []apitype.FirewallRule
	FirewallRule(name string) (apitype.FirewallRule, error)
	// WriteFirewallRule creates (create) or updates the rule req.Name.
	WriteFirewallRule(req apitype.RuleRequest, create bool) (apitype.FirewallRule, error)
	DeleteFirewallRule(name string) error
	NetworkRules() []apitype.NetworkRule
	NetworkRule(name string) (apitype.NetworkRule, error)
	CreateNetworkRule(req apitype.RuleRequest) (apitype.NetworkRule, error)
	DeleteNetworkRule(name string) error

	// Token principals.
	Principals(ctx context.Context) ([]apitype.Principal, error)
	CreatePrincipal(ctx context.Context, req apitype.PrincipalRequest) (apitype.Principal, error)
	DeletePrincipal(ctx context.Context, name string) (apitype.Principal, error)

	// Storage.
	Storage(ctx context.Context) apitype.StorageInfo
	ResizeStorage(sizeBytes int64) (apitype.StorageResizeResult, error)

	// Backend pool (pool show).
	Pool() apitype.PoolInfo

	// High availability (cluster show); not found on a single node.
	Cluster(ctx context.Context) (apitype.ClusterInfo, error)
	// ClusterManual runs a switchover or failover ("switchover",
	// "failover") through Patroni.
	ClusterManual(ctx context.Context, action, to string) (apitype.ClusterManualResult, error)
	// ClusterAllowJoin opens this node's join window for a peer.
	ClusterAllowJoin(req apitype.ClusterJoinRequest) (apitype.ClusterJoinWindow, error)
	// AuditAnchors are every node's audit chain head in etcd.
	AuditAnchors(ctx context.Context) ([]apitype.AuditAnchor, error)

	// Bans (threat protection).
	Bans() []apitype.Ban
	// Unban lifts the ban on source (an address, or a listed prefix).
	Unban(source string) (apitype.Ban, error)

	// Alerts and decoys.
	Alerts() []apitype.Alert
	Alert(id string) (apitype.Alert, error)
	DismissAlert(id string) (apitype.Alert, error)
	Decoys() []apitype.Decoy
	CreateDecoy(ctx context.Context, req apitype.DecoyRequest) (apitype.Decoy, error)
	DeleteDecoy(ctx context.Context, name, database string) (apitype.Decoy, error)

	// Server certificate.
	CertificateBackend

	// Health: GET /v1/health.
	HealthBackend
}

// Routes is the route table: every route of the management API, the
// permission it needs and its handler. The client's methods
// (internal/apiclient) follow it one for one.
func Routes(b Backend) []Route {
	return append([]Route{
		{Method: "GET", Pattern: "/v1/status", Permission: PermitRead, Handler: func(r *http.Request) (any, error) { return b.Status(r.Context()), nil }},
		{Method: "POST", Pattern: "/v1/shutdown", Permission: PermitWrite, Handler: func(*http.Request) (any, error) {
			b.Shutdown()
			return apitype.ShutdownResult{Result: "shutting down"}, nil
		}},
		{Method: "POST", Pattern: "/v1/restart", Permission: PermitWrite, Handler: func(r *http.Request) (any, error) { return b.Restart(r.Context()) }},
		{Method: "GET", Pattern: "/v1/metrics", Permission: PermitRead, Raw: b.MetricsHandler()},
		// Go's profiles of the daemon (net/http/pprof), for diagnosing it:
		// root-only like every route.
		{Method: "GET", Pattern: "/debug/pprof/{name}", Permission: PermitRead, Raw: http.HandlerFunc(servePprof)},

		{Method: "GET", Pattern: "/v1/parameters", Permission: PermitRead, Handler: func(r *http.Request) (any, error) { return b.Parameters(r.Context()) }},
		{Method: "GET", Pattern: "/v1/parameters/{name}", Permission: PermitRead, Handler: func(r *http.Request) (any, error) {
			return b.Parameter(r.Context(), r.PathValue("name"))
		}},
		{Method: "PUT", Pattern: "/v1/parameters/{name}", Permission: PermitWrite, Handler: func(r *http.Request) (any, error) {
			var req apitype.SetParameterRequest
			if err := DecodeBody(r, &req); err != nil {
				return nil, err
			}
			return b.SetParameter(r.Context(), r.PathValue("name"), req.Value)
		}},

		{Method: "GET", Pattern: "/v1/key", Permission: PermitRead, Handler: func(*http.Request) (any, error) { return b.Key(), nil }},
		{Method: "POST", Pattern: "/v1/key/lock", Permission: PermitWrite, Handler: func(*http.Request) (any, error) { return b.LockKey() }},
		{Method: "POST", Pattern: "/v1/key/unlock", Permission: PermitWrite, Handler: func(*http.Request) (any, error) { return b.UnlockKey() }},
		{Method: "POST", Pattern: "/v1/key/revalidate", Permission: PermitWrite, Handler: func(r *http.Request) (any, error) { return b.RevalidateKey(r.Context()), nil }},
		{Method: "POST", Pattern: "/v1/key/set", Permission: PermitWrite, Handler: changeKey(b, false)},
		{Method: "POST", Pattern: "/v1/key/rotate", Permission: PermitWrite, Handler: changeKey(b, true)},

		{Method: "GET", Pattern: "/v1/backups", Permission: PermitRead, Handler: func(r *http.Request) (any, error) { return b.Backups(r.Context()) }},
		{Method: "POST", Pattern: "/v1/backups", Permission: PermitWrite, Handler: func(r *http.Request) (any, error) {
			var req apitype.BackupCreateRequest
			if err := decodeOptionalBody(r, &req); err != nil {
				return nil, err
			}
			return b.CreateBackup(req.Type)
		}},
		{Method: "GET", Pattern: "/v1/backups/job", Permission: PermitRead, Handler: func(*http.Request) (any, error) { return b.BackupJob() }},
		{Method: "POST", Pattern: "/v1/backups/archive-wal", Permission: PermitWrite, Handler: func(r *http.Request) (any, error) { return b.ArchiveWAL(r.Context()) }},

		{Method: "GET", Pattern: "/v1/pool", Permission: PermitRead, Handler: func(*http.Request) (any, error) { return b.Pool(), nil }},
		{Method: "GET", Pattern: "/v1/cluster", Permission: PermitRead, Handler: func(r *http.Request) (any, error) { return b.Cluster(r.Context()) }},
		{Method: "GET", Pattern: "/v1/cluster/audit-anchors", Permission: PermitRead, Handler: func(r *http.Request) (any, error) { return b.AuditAnchors(r.Context()) }},
		{Method: "POST", Pattern: "/v1/cluster/switchover", Permission: PermitWrite, Handler: func(r *http.Request) (any, error) {
			var req apitype.ClusterSwitchoverRequest
			if err := decodeOptionalBody(r, &req); err != nil {
				return nil, err
			}
			return b.ClusterManual(r.Context(), "switchover", req.To)
		}},
		{Method: "POST", Pattern: "/v1/cluster/failover", Permission: PermitWrite, Handler: func(r *http.Request) (any, error) {
			var req apitype.ClusterSwitchoverRequest
			if err := decodeOptionalBody(r, &req); err != nil {
				return nil, err
			}
			return b.ClusterManual(r.Context(), "failover", req.To)
		}},
		{Method: "POST", Pattern: "/v1/cluster/join-window", Permission: PermitWrite, Handler: func(r *http.Request) (any, error) {
			var req apitype.ClusterJoinRequest
			if err := DecodeBody(r, &req); err != nil {
				return nil, err
			}
			return b.ClusterAllowJoin(req)
		}},

		{Method: "GET", Pattern: "/v1/bans", Permission: PermitRead, Handler: func(*http.Request) (any, error) { return b.Bans(), nil }},
		// {source...}: an IPv4 /32 or IPv6 /64 prefix holds a slash.
		{Method: "DELETE", Pattern: "/v1/bans/{source...}", Permission: PermitWrite, Handler: func(r *http.Request) (any, error) {
			return b.Unban(r.PathValue("source"))
		}},

		{Method: "GET", Pattern: "/v1/alerts", Permission: PermitRead, Handler: func(*http.Request) (any, error) { return b.Alerts(), nil }},
		{Method: "GET", Pattern: "/v1/alerts/{id}", Permission: PermitRead, Handler: func(r *http.Request) (any, error) {
			return b.Alert(r.PathValue("id"))
		}},
		{Method: "POST", Pattern: "/v1/alerts/{id}/dismiss", Permission: PermitWrite, Handler: func(r *http.Request) (any, error) {
			return b.DismissAlert(r.PathValue("id"))
		}},
		{Method: "GET", Pattern: "/v1/decoys", Permission: PermitRead, Handler: func(*http.Request) (any, error) { return b.Decoys(), nil }},
		{Method: "POST", Pattern: "/v1/decoys", Permission: PermitWrite, Handler: func(r *http.Request) (any, error) {
			var req apitype.DecoyRequest
			if err := DecodeBody(r, &req); err != nil {
				return nil, err
			}
			return b.CreateDecoy(r.Context(), req)
		}},
		{Method: "DELETE", Pattern: "/v1/decoys/{name}", Permission: PermitWrite, Handler: func(r *http.Request) (any, error) {
			return b.DeleteDecoy(r.Context(), r.PathValue("name"), r.URL.Query().Get("database"))
		}},

		{Method: "GET", Pattern: "/v1/network", Permission: PermitRead, Handler: func(*http.Request) (any, error) { return b.Network(), nil }},
		{Method: "POST", Pattern: "/v1/network", Permission: PermitWrite, Handler: func(r *http.Request) (any, error) {
			var req apitype.ModeRequest
			if err := DecodeBody(r, &req); err != nil {
				return nil, err
			}
			return b.SetNetworkMode(req.Mode)
		}},
		{Method: "GET", Pattern: "/v1/firewall-rules", Permission: PermitRead, Handler: func(*http.Request) (any, error) { return b.FirewallRules(), nil }},
		{Method: "GET", Pattern: "/v1/firewall-rules/{name}", Permission: PermitRead, Handler: func(r *http.Request) (any, error) {
			return b.FirewallRule(r.PathValue("name"))
		}},
		{Method: "POST", Pattern: "/v1/firewall-rules", Permission: PermitWrite, Handler: func(r *http.Request) (any, error) {
			var req apitype.RuleRequest
			if err := DecodeBody(r, &req); err != nil {
				return nil, err
			}
			return b.WriteFirewallRule(req, true)
		}},
		{Method: "PATCH", Pattern: "/v1/firewall-rules/{name}", Permission: PermitWrite, Handler: func(r *http.Request) (any, error) {
			var req apitype.RuleRequest
			if err := DecodeBody(r, &req); err != nil {
				return nil, err
			}
			req.Name = r.PathValue("name") // the path names the rule, not the body
			return b.WriteFirewallRule(req, false)
		}},
		{Method: "DELETE", Pattern: "/v1/firewall-rules/{name}", Permission: PermitWrite, Handler: func(r *http.Request) (any, error) {
			name := r.PathValue("name")
			if err := b.DeleteFirewallRule(name); err != nil {
				return nil, err
			}
			return apitype.DeleteResult{Deleted: name}, nil
		}},
		{Method: "GET", Pattern: "/v1/network-rules", Permission: PermitRead, Handler: func(*http.Request) (any, error) { return b.NetworkRules(), nil }},
		{Method: "GET", Pattern: "/v1/network-rules/{name}", Permission: PermitRead, Handler: func(r *http.Request) (any, error) {
			return b.NetworkRule(r.PathValue("name"))
		}},
		{Method: "POST", Pattern: "/v1/network-rules", Permission: PermitWrite, Handler: func(r *http.Request) (any, error) {
			var req apitype.RuleRequest
			if err := DecodeBody(r, &req); err != nil {
				return nil, err
			}
			return b.CreateNetworkRule(req)
		}},
		{Method: "DELETE", Pattern: "/v1/network-rules/{name}", Permission: PermitWrite, Handler: func(r *http.Request) (any, error) {
			name := r.PathValue("name")
			if err := b.DeleteNetworkRule(name); err != nil {
				return nil, err
			}
			return apitype.DeleteResult{Deleted: name}, nil
		}},

		{Method: "GET", Pattern: "/v1/principals", Permission: PermitRead, Handler: func(r *http.Request) (any, error) { return b.Principals(r.Context()) }},
		{Method: "POST", Pattern: "/v1/principals", Permission: PermitWrite, Handler: func(r *http.Request) (any, error) {
			var req apitype.PrincipalRequest
			if err := DecodeBody(r, &req); err != nil {
				return nil, err
			}
			return b.CreatePrincipal(r.Context(), req)
		}},
		{Method: "DELETE", Pattern: "/v1/principals/{name}", Permission: PermitWrite, Handler: func(r *http.Request) (any, error) {
			return b.DeletePrincipal(r.Context(), r.PathValue("name"))
		}},

		{Method: "GET", Pattern: "/v1/storage", Permission: PermitRead, Handler: func(r *http.Request) (any, error) { return b.Storage(r.Context()), nil }},
		{Method: "POST", Pattern: "/v1/storage/resize", Permission: PermitWrite, Handler: func(r *http.Request) (any, error) {
			var req apitype.StorageResizeRequest
			if err := DecodeBody(r, &req); err != nil {
				return nil, err
			}
			return b.ResizeStorage(req.SizeBytes)
		}},
	}, append(certificateRoutes(b), healthRoutes(b)...)...)
}

func changeKey(b Backend, rotate bool) HandlerFunc {
	return func(r *http.Request) (any, error) {
		var req apitype.KeyChangeRequest
		if err := decodeOptionalBody(r, &req); err != nil {
			return nil, err
		}
		return b.ChangeKey(r.Context(), req.KeyURI, rotate)
	}
}

// servePprof serves the profile the path names: "profile" (CPU) and
// "trace" for ?seconds=N (30 by default), the runtime's named profiles
// (heap, allocs, goroutine, block, mutex, threadcreate) otherwise.
func servePprof(w http.ResponseWriter, r *http.Request) {
	switch name := r.PathValue("name"); name {
	case "profile":
		pprof.Profile(w, r)
	case "trace":
		pprof.Trace(w, r)
	case "cmdline":
		pprof.Cmdline(w, r)
	case "symbol":
		pprof.Symbol(w, r)
	default:
		pprof.Handler(name).ServeHTTP(w, r) // 404 for an unknown name
	}
}
