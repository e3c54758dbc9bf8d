package daemon

import (
	"context"
	"crypto/fips140"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshield/pgshield/internal/api"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/gateway"
	"github.com/pgshield/pgshield/internal/postgres"
)

// Status is the answer of GET /v1/status.
type Status struct {
	State         string         `json:"state"`
	Listen        string         `json:"listen"`
	StartedAt     time.Time      `json:"started_at"`
	UptimeSeconds int64          `json:"uptime_seconds"`
	PID           int            `json:"pid"`
	Postgres      PostgresStatus `json:"postgres"`
	TLS           TLSStatus      `json:"tls"`
	Connections   gateway.Stats  `json:"connections"`
	AdminUser     string         `json:"admin_user"`
	DataDir       string         `json:"data_dir"`
	Key           KeyInfo        `json:"key"`
	// FIPS140 is true when Go's cryptography runs in its FIPS 140-3 module
	// (GODEBUG=fips140=on, or a binary built with GOFIPS140).
	FIPS140 bool `json:"fips140"`
}

// PostgresStatus describes the managed instance.
type PostgresStatus struct {
	Version string `json:"version"`
	postgres.Status
}

// TLSStatus echoes the transport parameters in force.
type TLSStatus struct {
	RequireSecureTransport string `json:"require_secure_transport"`
	MinProtocolVersion     string `json:"ssl_min_protocol_version"`
	MaxProtocolVersion     string `json:"ssl_max_protocol_version"`
}

func (d *Daemon) routes() []api.Route {
	return append(append(append(append(d.networkRoutes(), d.principalRoutes()...), d.metricsRoutes()...), d.storageRoutes()...),
		api.Route{Method: "GET", Pattern: "/v1/status", Handler: d.status},
		api.Route{Method: "GET", Pattern: "/v1/parameters", Handler: d.listParameters},
		api.Route{Method: "GET", Pattern: "/v1/parameters/{name}", Handler: d.showParameter},
		api.Route{Method: "PUT", Pattern: "/v1/parameters/{name}", Write: true, Handler: d.setParameter},
		api.Route{Method: "POST", Pattern: "/v1/shutdown", Write: true, Handler: d.shutdown},
		api.Route{Method: "GET", Pattern: "/v1/key", Handler: d.showKey},
		api.Route{Method: "POST", Pattern: "/v1/key/lock", Write: true, Handler: d.lockKey},
		api.Route{Method: "POST", Pattern: "/v1/key/unlock", Write: true, Handler: d.unlockKey},
		api.Route{Method: "POST", Pattern: "/v1/key/revalidate", Write: true, Handler: d.revalidateKey},
		api.Route{Method: "POST", Pattern: "/v1/key/set", Write: true, Handler: d.setKey},
		api.Route{Method: "POST", Pattern: "/v1/key/rotate", Write: true, Handler: d.setKey},
	)
}

func (d *Daemon) status(*http.Request) (any, error) {
	cfg := d.config()
	p, _ := config.ResolveParams(cfg.Parameters)
	ps := d.supervisor().Status()
	state := "Available"
	if ks := d.keyState.Load(); ks.State != KeyAvailable {
		state = ks.State
	} else if ps.State != postgres.StateRunning {
		state = "Unavailable"
	}
	return Status{
		State: state, Listen: d.listen, StartedAt: d.started,
		UptimeSeconds: int64(time.Since(d.started).Seconds()), PID: osGetpid(),
		Postgres:    PostgresStatus{Version: d.version, Status: ps},
		Connections: d.gw.Stats(), AdminUser: cfg.AdminUser, DataDir: d.Layout.Root, Key: d.keyInfo(),
		FIPS140: fips140.Enabled(),
		TLS: TLSStatus{
			RequireSecureTransport: p.Values["require_secure_transport"],
			MinProtocolVersion:     p.Values["ssl_min_protocol_version"],
			MaxProtocolVersion:     p.Values["ssl_max_protocol_version"],
		},
	}, nil
}

func (d *Daemon) shutdown(*http.Request) (any, error) {
	// Answer first, then stop: the caller waits for the pid file to go.
	go func() { time.Sleep(50 * time.Millisecond); d.stop() }()
	return map[string]string{"result": "shutting down"}, nil
}

func (d *Daemon) gatewayParam(p config.Param, vals map[string]string) api.ParameterValue {
	return api.ParameterValue{Name: p.Name, Value: vals[p.Name], Source: "pgshield", Context: "dynamic",
		Description: p.Description, Default: p.Default}
}

func scanSetting(row pgx.Row) (api.ParameterValue, error) {
	var v api.ParameterValue
	var pgctx string
	if err := row.Scan(&v.Name, &v.Value, &v.Unit, &pgctx, &v.PendingRestart, &v.Description, &v.Default); err != nil {
		return v, err
	}
	v.Source = "postgresql"
	v.Context = contextName(pgctx)
	return v, nil
}

// contextName maps pg_settings.context to the managed services' words.
func contextName(pgctx string) string {
	switch pgctx {
	case "postmaster":
		return "static"
	case "internal":
		return "read-only"
	}
	return "dynamic"
}

func (d *Daemon) listParameters(r *http.Request) (any, error) {
	d.cfgMu.Lock()
	p, _ := config.ResolveParams(d.cfg.Parameters)
	d.cfgMu.Unlock()
	var out []api.ParameterValue
	for _, gp := range config.GatewayParams() {
		out = append(out, d.gatewayParam(gp, p.Values))
	}
	rows, err := d.catalog.Pool.Query(r.Context(), sqlSettingsOrdered)
	if err != nil {
		return nil, api.Errorf(api.CodeUnavailable, "PostgreSQL is not available: %v", err)
	}
	defer rows.Close()
	for rows.Next() {
		v, err := scanSetting(rows)
		if err != nil {
			return nil, err
		}
		if postgres.ProtectedParameter(v.Name) {
			v.Context = "managed"
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

func (d *Daemon) showParameter(r *http.Request) (any, error) {
	name := r.PathValue("name")
	if gp, ok := config.LookupParam(name); ok {
		d.cfgMu.Lock()
		p, _ := config.ResolveParams(d.cfg.Parameters)
		d.cfgMu.Unlock()
		return d.gatewayParam(gp, p.Values), nil
	}
	v, err := scanSetting(d.catalog.Pool.QueryRow(r.Context(), sqlSettingByName, name))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, api.Errorf(api.CodeNotFound, "unrecognized configuration parameter %q", name)
	}
	if err != nil {
		return nil, api.Errorf(api.CodeUnavailable, "PostgreSQL is not available: %v", err)
	}
	if postgres.ProtectedParameter(v.Name) {
		v.Context = "managed"
	}
	return v, nil
}

func (d *Daemon) setParameter(r *http.Request) (any, error) {
	name := r.PathValue("name")
	var req api.SetParameterRequest
	if err := api.DecodeBody(r, &req); err != nil {
		return nil, err
	}
	if gp, ok := config.LookupParam(name); ok {
		return d.setGatewayParam(gp, req.Value)
	}
	return d.setPostgresParam(r.Context(), name, req.Value)
}

// setGatewayParam validates the whole new set, persists it, then swaps it
// into the gateway; on any failure the old set stays in force.
func (d *Daemon) setGatewayParam(gp config.Param, value string) (any, error) {
	d.cfgMu.Lock()
	defer d.cfgMu.Unlock()
	nv, err := config.NormalizeParam(gp, value)
	if err != nil {
		return nil, api.Errorf(api.CodeInvalid, "%v", err)
	}
	next := maps.Clone(d.cfg.Parameters)
	next[gp.Name] = nv
	resolved, err := config.ResolveParams(next)
	if err != nil {
		return nil, api.Errorf(api.CodeInvalid, "%v", err)
	}
	if gp.Name == "pgshield.kernel_firewall" || gp.Name == "pgshield.trusted_proxies" {
		if err := d.applyKernelFirewall(d.policy.Snapshot(), resolved); err != nil {
			return nil, api.Errorf(api.CodeInvalid, "kernel firewall: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	guard := gp.Name == "pgshield.allowed_extensions"
	if guard {
		if err := d.checkExtensionsAvailable(ctx, resolved.AllowedExtensions); err != nil {
			return nil, err
		}
	}
	if gp.Name == "pgshield.metrics_listen" {
		if err := d.metricsLn.Set(nv); err != nil {
			return nil, api.Errorf(api.CodeInvalid, "%v", err)
		}
	}
	newCfg := *d.cfg
	newCfg.Parameters = next
	if err := config.Save(d.Layout, &newCfg); err != nil {
		return nil, fmt.Errorf("saving configuration: %w", err)
	}
	d.cfg = &newCfg
	if guard {
		// pgshield_guard reads the list from PostgreSQL's configuration.
		if err := d.applyGuardSettings(ctx, &newCfg); err != nil {
			return nil, fmt.Errorf("saved, but PostgreSQL has not taken it (it will at its next start): %w", err)
		}
	}
	d.gw.SetParams(resolved)
	d.applyAuditParams(gp.Name, resolved)
	d.Log.Info("Parameter changed.", "name", gp.Name, "value", nv)
	d.audit(audit.Event{Type: "parameter.set", Outcome: audit.OutcomeSuccess, Fields: map[string]any{"name": gp.Name, "value": nv}})
	return d.gatewayParam(gp, resolved.Values), nil
}

func (d *Daemon) setPostgresParam(ctx context.Context, name, value string) (any, error) {
	name = strings.ToLower(strings.TrimSpace(name))
	cur, err := scanSetting(d.catalog.Pool.QueryRow(ctx, sqlSettingByName, name))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, api.Errorf(api.CodeNotFound, "unrecognized configuration parameter %q", name)
	}
	if err != nil {
		return nil, api.Errorf(api.CodeUnavailable, "PostgreSQL is not available: %v", err)
	}
	if postgres.ProtectedParameter(name) {
		return nil, api.Errorf(api.CodeInvalid, "parameter %q is managed by pgshield and cannot be changed", name)
	}
	if cur.Context == "read-only" {
		return nil, api.Errorf(api.CodeInvalid, "parameter %q cannot be changed", name)
	}
	if strings.ContainsRune(value, 0) {
		return nil, api.Errorf(api.CodeInvalid, "invalid value for parameter %q", name)
	}
	stmt := sqlAlterSystemSet(pgx.Identifier{name}.Sanitize(), quoteLiteral(value))
	if _, err := d.catalog.Pool.Exec(ctx, stmt); err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) {
			return nil, api.Errorf(api.CodeInvalid, "%s", pe.Message)
		}
		return nil, api.Errorf(api.CodeUnavailable, "PostgreSQL is not available: %v", err)
	}
	if _, err := d.catalog.Pool.Exec(ctx, sqlReloadConf); err != nil {
		return nil, fmt.Errorf("reloading configuration: %w", err)
	}
	// The reload is asynchronous; wait briefly until a fresh backend sees it
	// so that "new connections at once" holds when this call returns.
	var v api.ParameterValue
	for i := 0; i < 40; i++ {
		v, err = scanSetting(d.catalog.Pool.QueryRow(ctx, sqlSettingByName, name))
		if err != nil {
			return nil, err
		}
		if v.PendingRestart || v.Value != cur.Value {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.Log.Info("PostgreSQL parameter changed.", "name", name, "pending_restart", v.PendingRestart)
	d.audit(audit.Event{Type: "parameter.set", Outcome: audit.OutcomeSuccess,
		Fields: map[string]any{"name": name, "value": audit.Redact(value), "pending_restart": v.PendingRestart}})
	return v, nil
}

// quoteLiteral makes a standard SQL string literal (standard_conforming_strings is on).
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
