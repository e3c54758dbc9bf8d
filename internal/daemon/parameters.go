package daemon

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/postgres"
)

// Parameters: `pgshield parameter list|show|set`, pgshield's own
// parameters (config.GatewayParams) and PostgreSQL's (pg_settings).

func (d *Daemon) gatewayParam(p config.Param, vals map[string]string) apitype.ParameterValue {
	return apitype.ParameterValue{Name: p.Name, Value: vals[p.Name], Source: "pgshield", Context: "dynamic",
		Description: p.Description, Default: p.Default}
}

func scanSetting(row pgx.Row) (apitype.ParameterValue, error) {
	var v apitype.ParameterValue
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

// Parameters lists pgshield's parameters, then PostgreSQL's.
func (d *Daemon) Parameters(ctx context.Context) ([]apitype.ParameterValue, error) {
	d.cfgMu.Lock()
	p, _ := config.ResolveParams(d.cfg.Parameters)
	d.cfgMu.Unlock()
	var out []apitype.ParameterValue
	for _, gp := range config.GatewayParams() {
		out = append(out, d.gatewayParam(gp, p.Values))
	}
	rows, err := d.catalog.Pool.Query(ctx, sqlSettingsOrdered)
	if err != nil {
		return nil, clienterr.New(apitype.CodeUnavailable, "PostgreSQL is not available: %v", err)
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

// Parameter returns one parameter.
func (d *Daemon) Parameter(ctx context.Context, name string) (apitype.ParameterValue, error) {
	if gp, ok := config.LookupParam(name); ok {
		d.cfgMu.Lock()
		p, _ := config.ResolveParams(d.cfg.Parameters)
		d.cfgMu.Unlock()
		return d.gatewayParam(gp, p.Values), nil
	}
	v, err := scanSetting(d.catalog.Pool.QueryRow(ctx, sqlSettingByName, name))
	if errors.Is(err, pgx.ErrNoRows) {
		return apitype.ParameterValue{}, clienterr.New(apitype.CodeNotFound, "unrecognized configuration parameter %q", name)
	}
	if err != nil {
		return apitype.ParameterValue{}, clienterr.New(apitype.CodeUnavailable, "PostgreSQL is not available: %v", err)
	}
	if postgres.ProtectedParameter(v.Name) {
		v.Context = "managed"
	}
	return v, nil
}

// SetParameter sets a parameter of pgshield's or PostgreSQL's, persists
// it, and returns it as it is now in force.
func (d *Daemon) SetParameter(ctx context.Context, name, value string) (apitype.ParameterValue, error) {
	if gp, ok := config.LookupParam(name); ok {
		return d.setGatewayParam(gp, value)
	}
	return d.setPostgresParam(ctx, name, value)
}

// setGatewayParam validates the whole new set, persists it, then swaps it
// into the gateway; on any failure the old set stays in force.
func (d *Daemon) setGatewayParam(gp config.Param, value string) (apitype.ParameterValue, error) {
	d.cfgMu.Lock()
	defer d.cfgMu.Unlock()
	nv, err := config.NormalizeParam(gp, value)
	if err != nil {
		return apitype.ParameterValue{}, clienterr.New(apitype.CodeInvalid, "%v", err)
	}
	next := maps.Clone(d.cfg.Parameters)
	next[gp.Name] = nv
	resolved, err := config.ResolveParams(next)
	if err != nil {
		return apitype.ParameterValue{}, clienterr.New(apitype.CodeInvalid, "%v", err)
	}
	if gp.Name == "pgshield.kernel_firewall" || gp.Name == "pgshield.trusted_proxies" {
		if err := d.applyKernelFirewall(d.policy.Snapshot(), resolved); err != nil {
			return apitype.ParameterValue{}, clienterr.New(apitype.CodeInvalid, "kernel firewall: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	guard := gp.Name == "pgshield.allowed_extensions"
	if guard {
		if err := d.checkExtensionsAvailable(ctx, resolved.AllowedExtensions); err != nil {
			return apitype.ParameterValue{}, err
		}
	}
	if gp.Name == "pgshield.metrics_listen" {
		if err := d.metricsLn.Set(nv); err != nil {
			return apitype.ParameterValue{}, clienterr.New(apitype.CodeInvalid, "%v", err)
		}
	}
	newCfg := *d.cfg
	newCfg.Parameters = next
	if err := config.Save(d.Layout, &newCfg); err != nil {
		return apitype.ParameterValue{}, fmt.Errorf("saving configuration: %w", err)
	}
	d.cfg = &newCfg
	if guard {
		// pgshield_guard reads the list from PostgreSQL's configuration.
		if err := d.applyGuardSettings(ctx, &newCfg); err != nil {
			return apitype.ParameterValue{}, fmt.Errorf("saved, but PostgreSQL has not taken it (it will at its next start): %w", err)
		}
	}
	d.gw.SetParams(resolved)
	d.applyAuditParams(gp.Name, resolved)
	d.Log.Info("Parameter changed.", "name", gp.Name, "value", nv)
	d.audit(audit.Event{Type: "parameter.set", Outcome: audit.OutcomeSuccess, Fields: map[string]any{"name": gp.Name, "value": nv}})
	return d.gatewayParam(gp, resolved.Values), nil
}

func (d *Daemon) setPostgresParam(ctx context.Context, name, value string) (apitype.ParameterValue, error) {
	name = strings.ToLower(strings.TrimSpace(name))
	cur, err := scanSetting(d.catalog.Pool.QueryRow(ctx, sqlSettingByName, name))
	if errors.Is(err, pgx.ErrNoRows) {
		return apitype.ParameterValue{}, clienterr.New(apitype.CodeNotFound, "unrecognized configuration parameter %q", name)
	}
	if err != nil {
		return apitype.ParameterValue{}, clienterr.New(apitype.CodeUnavailable, "PostgreSQL is not available: %v", err)
	}
	if postgres.ProtectedParameter(name) {
		return apitype.ParameterValue{}, clienterr.New(apitype.CodeInvalid, "parameter %q is managed by pgshield and cannot be changed", name)
	}
	if cur.Context == "read-only" {
		return apitype.ParameterValue{}, clienterr.New(apitype.CodeInvalid, "parameter %q cannot be changed", name)
	}
	if strings.ContainsRune(value, 0) {
		return apitype.ParameterValue{}, clienterr.New(apitype.CodeInvalid, "invalid value for parameter %q", name)
	}
	stmt := sqlAlterSystemSet(pgx.Identifier{name}.Sanitize(), quoteLiteral(value))
	if _, err := d.catalog.Pool.Exec(ctx, stmt); err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) {
			return apitype.ParameterValue{}, clienterr.New(apitype.CodeInvalid, "%s", pe.Message)
		}
		return apitype.ParameterValue{}, clienterr.New(apitype.CodeUnavailable, "PostgreSQL is not available: %v", err)
	}
	if _, err := d.catalog.Pool.Exec(ctx, sqlReloadConf); err != nil {
		return apitype.ParameterValue{}, fmt.Errorf("reloading configuration: %w", err)
	}
	// The reload is asynchronous; wait briefly until a fresh backend sees it
	// so that "new connections at once" holds when this call returns.
	var v apitype.ParameterValue
	for i := 0; i < 40; i++ {
		v, err = scanSetting(d.catalog.Pool.QueryRow(ctx, sqlSettingByName, name))
		if err != nil {
			return apitype.ParameterValue{}, err
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
