// Package apiclient is the typed client of pgshield's management API (see
// internal/mgmt): one method per route, over the daemon's root-only Unix
// socket. The CLI talks to the daemon only through it.
package apiclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
)

// ErrNotRunning means nothing answers on the socket.
var ErrNotRunning = errors.New("pgshield is not running (start it with 'pgshield up')")

// Client talks to the daemon over its socket. Errors the daemon answers
// with are *apitype.Error (a clienterr.Error with an apitype code); a
// socket nobody answers on is ErrNotRunning.
type Client struct {
	// Socket is the path of the API socket.
	Socket string
	http   *http.Client
}

// New makes a client for the socket at path.
func New(path string) *Client {
	return &Client{Socket: path, http: &http.Client{
		Timeout: 2 * time.Minute,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}},
	}}
}

// Status returns the server's state.
func (c *Client) Status(ctx context.Context) (*apitype.Status, error) {
	return call[apitype.Status](ctx, c, "GET", "/v1/status", nil)
}

// Shutdown asks the daemon to stop; it answers before it does.
func (c *Client) Shutdown(ctx context.Context) error {
	_, err := c.roundTrip(ctx, "POST", "/v1/shutdown", nil)
	return err
}

// Metrics returns the daemon's metrics in Prometheus' text format.
func (c *Client) Metrics(ctx context.Context) ([]byte, error) {
	return c.roundTrip(ctx, "GET", "/v1/metrics", nil)
}

// Profile returns one of the daemon's Go profiles (net/http/pprof) in
// pprof's format: "profile" (CPU) or "trace" over seconds (0: 30 s), or a
// named runtime profile ("heap", "allocs", "goroutine", ...), a delta over
// seconds if not 0.
func (c *Client) Profile(ctx context.Context, name string, seconds int) ([]byte, error) {
	route := "/debug/pprof/" + url.PathEscape(name)
	if seconds > 0 {
		route += "?seconds=" + strconv.Itoa(seconds)
	}
	// The answer takes seconds to come: the usual timeout must not cut it.
	hc := *c.http
	hc.Timeout = time.Duration(max(seconds, 30))*time.Second + 2*time.Minute
	lc := *c
	lc.http = &hc
	return lc.roundTrip(ctx, "GET", route, nil)
}

// Parameters lists pgshield's and PostgreSQL's parameters.
func (c *Client) Parameters(ctx context.Context) ([]apitype.ParameterValue, error) {
	return list[apitype.ParameterValue](ctx, c, "/v1/parameters")
}

// Parameter returns one parameter.
func (c *Client) Parameter(ctx context.Context, name string) (*apitype.ParameterValue, error) {
	return call[apitype.ParameterValue](ctx, c, "GET", "/v1/parameters/"+url.PathEscape(name), nil)
}

// SetParameter sets a parameter and returns it as it is now in force.
func (c *Client) SetParameter(ctx context.Context, name, value string) (*apitype.ParameterValue, error) {
	return call[apitype.ParameterValue](ctx, c, "PUT", "/v1/parameters/"+url.PathEscape(name),
		apitype.SetParameterRequest{Value: value})
}

// Key returns the data key's state, source and backend.
func (c *Client) Key(ctx context.Context) (*apitype.KeyInfo, error) {
	return call[apitype.KeyInfo](ctx, c, "GET", "/v1/key", nil)
}

// LockKey ends every session, stops PostgreSQL and removes the data key
// from the kernel.
func (c *Client) LockKey(ctx context.Context) (*apitype.KeyInfo, error) {
	return call[apitype.KeyInfo](ctx, c, "POST", "/v1/key/lock", nil)
}

// UnlockKey unwraps the data key again, unlocks the volume and starts
// PostgreSQL.
func (c *Client) UnlockKey(ctx context.Context) (*apitype.KeyInfo, error) {
	return call[apitype.KeyInfo](ctx, c, "POST", "/v1/key/unlock", nil)
}

// RevalidateKey proves now that the key-encryption key still unwraps the
// data key, and acts on the result.
func (c *Client) RevalidateKey(ctx context.Context) (*apitype.KeyInfo, error) {
	return call[apitype.KeyInfo](ctx, c, "POST", "/v1/key/revalidate", nil)
}

// SetKey re-wraps the data key under the key-encryption key at keyURI.
func (c *Client) SetKey(ctx context.Context, keyURI string) (*apitype.KeyInfo, error) {
	return call[apitype.KeyInfo](ctx, c, "POST", "/v1/key/set", apitype.KeyChangeRequest{KeyURI: keyURI})
}

// RotateKey re-wraps the data key under the key's newest version, or under
// keyURI if it is not empty.
func (c *Client) RotateKey(ctx context.Context, keyURI string) (*apitype.KeyInfo, error) {
	return call[apitype.KeyInfo](ctx, c, "POST", "/v1/key/rotate", apitype.KeyChangeRequest{KeyURI: keyURI})
}

// Backups lists the backup repository.
func (c *Client) Backups(ctx context.Context) (*apitype.BackupList, error) {
	return call[apitype.BackupList](ctx, c, "GET", "/v1/backups", nil)
}

// CreateBackup starts a backup of type typ (full, diff or incr) in the
// background; follow it with BackupJob.
func (c *Client) CreateBackup(ctx context.Context, typ string) (*apitype.BackupJob, error) {
	return call[apitype.BackupJob](ctx, c, "POST", "/v1/backups", apitype.BackupCreateRequest{Type: typ})
}

// BackupJob returns the current or last backup job.
func (c *Client) BackupJob(ctx context.Context) (*apitype.BackupJob, error) {
	return call[apitype.BackupJob](ctx, c, "GET", "/v1/backups/job", nil)
}

// ArchiveWAL closes the current WAL segment and waits until it is in the
// repository.
func (c *Client) ArchiveWAL(ctx context.Context) (*apitype.ArchiveResult, error) {
	return call[apitype.ArchiveResult](ctx, c, "POST", "/v1/backups/archive-wal", nil)
}

// Network returns the network mode.
func (c *Client) Network(ctx context.Context) (*apitype.NetworkInfo, error) {
	return call[apitype.NetworkInfo](ctx, c, "GET", "/v1/network", nil)
}

// SetNetworkMode switches between public and private access.
func (c *Client) SetNetworkMode(ctx context.Context, mode string) (*apitype.NetworkInfo, error) {
	return call[apitype.NetworkInfo](ctx, c, "POST", "/v1/network", apitype.ModeRequest{Mode: mode})
}

// FirewallRules lists the public-access rules.
func (c *Client) FirewallRules(ctx context.Context) ([]apitype.FirewallRule, error) {
	return list[apitype.FirewallRule](ctx, c, "/v1/firewall-rules")
}

// FirewallRule returns one public-access rule.
func (c *Client) FirewallRule(ctx context.Context, name string) (*apitype.FirewallRule, error) {
	return call[apitype.FirewallRule](ctx, c, "GET", "/v1/firewall-rules/"+url.PathEscape(name), nil)
}

// CreateFirewallRule adds the public-access rule req.Name.
func (c *Client) CreateFirewallRule(ctx context.Context, req apitype.RuleRequest) (*apitype.FirewallRule, error) {
	return call[apitype.FirewallRule](ctx, c, "POST", "/v1/firewall-rules", req)
}

// UpdateFirewallRule changes the public-access rule req.Name; empty fields
// keep their value.
func (c *Client) UpdateFirewallRule(ctx context.Context, req apitype.RuleRequest) (*apitype.FirewallRule, error) {
	return call[apitype.FirewallRule](ctx, c, "PATCH", "/v1/firewall-rules/"+url.PathEscape(req.Name), req)
}

// DeleteFirewallRule deletes a public-access rule.
func (c *Client) DeleteFirewallRule(ctx context.Context, name string) error {
	_, err := call[apitype.DeleteResult](ctx, c, "DELETE", "/v1/firewall-rules/"+url.PathEscape(name), nil)
	return err
}

// NetworkRules lists the private-access rules.
func (c *Client) NetworkRules(ctx context.Context) ([]apitype.NetworkRule, error) {
	return list[apitype.NetworkRule](ctx, c, "/v1/network-rules")
}

// NetworkRule returns one private-access rule.
func (c *Client) NetworkRule(ctx context.Context, name string) (*apitype.NetworkRule, error) {
	return call[apitype.NetworkRule](ctx, c, "GET", "/v1/network-rules/"+url.PathEscape(name), nil)
}

// CreateNetworkRule adds the private-access rule req.Name.
func (c *Client) CreateNetworkRule(ctx context.Context, req apitype.RuleRequest) (*apitype.NetworkRule, error) {
	return call[apitype.NetworkRule](ctx, c, "POST", "/v1/network-rules", req)
}

// DeleteNetworkRule deletes a private-access rule.
func (c *Client) DeleteNetworkRule(ctx context.Context, name string) error {
	_, err := call[apitype.DeleteResult](ctx, c, "DELETE", "/v1/network-rules/"+url.PathEscape(name), nil)
	return err
}

// Principals lists the token principals.
func (c *Client) Principals(ctx context.Context) ([]apitype.Principal, error) {
	return list[apitype.Principal](ctx, c, "/v1/principals")
}

// CreatePrincipal creates a token principal's role.
func (c *Client) CreatePrincipal(ctx context.Context, req apitype.PrincipalRequest) (*apitype.Principal, error) {
	return call[apitype.Principal](ctx, c, "POST", "/v1/principals", req)
}

// DeletePrincipal drops a token principal's role and returns what it was.
func (c *Client) DeletePrincipal(ctx context.Context, name string) (*apitype.Principal, error) {
	return call[apitype.Principal](ctx, c, "DELETE", "/v1/principals/"+url.PathEscape(name), nil)
}

// Storage describes the encrypted volume.
func (c *Client) Storage(ctx context.Context) (*apitype.StorageInfo, error) {
	return call[apitype.StorageInfo](ctx, c, "GET", "/v1/storage", nil)
}

// ResizeStorage grows the volume to sizeBytes.
func (c *Client) ResizeStorage(ctx context.Context, sizeBytes int64) (*apitype.StorageResizeResult, error) {
	return call[apitype.StorageResizeResult](ctx, c, "POST", "/v1/storage/resize", apitype.StorageResizeRequest{SizeBytes: sizeBytes})
}

// call sends a request with in, if not nil, as its JSON body and decodes
// the answer as a T.
func call[T any](ctx context.Context, c *Client, method, route string, in any) (*T, error) {
	b, err := c.roundTrip(ctx, method, route, in)
	if err != nil {
		return nil, err
	}
	v := new(T)
	if err := json.Unmarshal(b, v); err != nil {
		return nil, err
	}
	return v, nil
}

// list GETs a list; the daemon may answer null for an empty one.
func list[T any](ctx context.Context, c *Client, route string) ([]T, error) {
	p, err := call[[]T](ctx, c, "GET", route, nil)
	if err != nil {
		return nil, err
	}
	return *p, nil
}

func (c *Client) roundTrip(ctx context.Context, method, route string, in any) ([]byte, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://pgshield"+route, body)
	if err != nil {
		return nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ne *net.OpError
		if errors.As(err, &ne) && ne.Op == "dial" {
			return nil, ErrNotRunning
		}
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		var e apitype.Error
		if json.Unmarshal(b, &e) == nil && e.Message != "" {
			return nil, &e
		}
		return nil, fmt.Errorf("pgshield API: %s", resp.Status)
	}
	return b, nil
}

// Cluster is the node's view of its high-availability cluster.
func (c *Client) Cluster(ctx context.Context) (*apitype.ClusterInfo, error) {
	return call[apitype.ClusterInfo](ctx, c, "GET", "/v1/cluster", nil)
}

// AuditAnchors are every node's audit chain head as etcd holds it.
func (c *Client) AuditAnchors(ctx context.Context) ([]apitype.AuditAnchor, error) {
	as, err := call[[]apitype.AuditAnchor](ctx, c, "GET", "/v1/cluster/audit-anchors", nil)
	if err != nil || as == nil {
		return nil, err
	}
	return *as, nil
}

// ClusterSwitchover hands the primary role to node to (empty: the
// synchronous standby).
func (c *Client) ClusterSwitchover(ctx context.Context, to string) (*apitype.ClusterManualResult, error) {
	return call[apitype.ClusterManualResult](ctx, c, "POST", "/v1/cluster/switchover", apitype.ClusterSwitchoverRequest{To: to})
}

// ClusterAllowJoin opens this node's join window for node for d.
func (c *Client) ClusterAllowJoin(ctx context.Context, node string, d time.Duration) (*apitype.ClusterJoinWindow, error) {
	return call[apitype.ClusterJoinWindow](ctx, c, "POST", "/v1/cluster/join-window", apitype.ClusterJoinRequest{Node: node, Seconds: int(d / time.Second)})
}

// ClusterFailover promotes node to.
func (c *Client) ClusterFailover(ctx context.Context, to string) (*apitype.ClusterManualResult, error) {
	return call[apitype.ClusterManualResult](ctx, c, "POST", "/v1/cluster/failover", apitype.ClusterSwitchoverRequest{To: to})
}

// Pool lists the gateway's backend pools.
func (c *Client) Pool(ctx context.Context) (*apitype.PoolInfo, error) {
	return call[apitype.PoolInfo](ctx, c, "GET", "/v1/pool", nil)
}

// Bans lists the sources banned after repeated failed logins.
func (c *Client) Bans(ctx context.Context) ([]apitype.Ban, error) {
	return list[apitype.Ban](ctx, c, "/v1/bans")
}

// Unban lifts the ban on source (an address, or the prefix Bans lists)
// and returns the ban it was.
func (c *Client) Unban(ctx context.Context, source string) (*apitype.Ban, error) {
	return call[apitype.Ban](ctx, c, "DELETE", "/v1/bans/"+url.PathEscape(source), nil)
}

// Alerts lists the security alerts, newest first.
func (c *Client) Alerts(ctx context.Context) ([]apitype.Alert, error) {
	return list[apitype.Alert](ctx, c, "/v1/alerts")
}

// Alert returns one alert.
func (c *Client) Alert(ctx context.Context, id string) (*apitype.Alert, error) {
	return call[apitype.Alert](ctx, c, "GET", "/v1/alerts/"+url.PathEscape(id), nil)
}

// DismissAlert marks an alert dismissed and returns it.
func (c *Client) DismissAlert(ctx context.Context, id string) (*apitype.Alert, error) {
	return call[apitype.Alert](ctx, c, "POST", "/v1/alerts/"+url.PathEscape(id)+"/dismiss", nil)
}

// Decoys lists the decoy roles and tables.
func (c *Client) Decoys(ctx context.Context) ([]apitype.Decoy, error) {
	return list[apitype.Decoy](ctx, c, "/v1/decoys")
}

// CreateDecoy makes a decoy role or table.
func (c *Client) CreateDecoy(ctx context.Context, kind, name, database string) (*apitype.Decoy, error) {
	return call[apitype.Decoy](ctx, c, "POST", "/v1/decoys", apitype.DecoyRequest{Kind: kind, Name: name, Database: database})
}

// DeleteDecoy removes a decoy and returns it; database names a table's
// database ("" when there is one decoy of that name).
func (c *Client) DeleteDecoy(ctx context.Context, name, database string) (*apitype.Decoy, error) {
	p := "/v1/decoys/" + url.PathEscape(name)
	if database != "" {
		p += "?" + url.Values{"database": {database}}.Encode()
	}
	return call[apitype.Decoy](ctx, c, "DELETE", p, nil)
}
