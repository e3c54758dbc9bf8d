// Package params is the controller of a server's parameters: pgshield's
// own (config.GatewayParams, applied to the gateway, the audit log, the
// kernel firewall and the metrics endpoint) and PostgreSQL's (pg_settings,
// ALTER SYSTEM), and the settings of pgshield_guard, which PostgreSQL reads
// from pgshield.conf (allowed extensions, administrator principals).
//
// A change of pgshield's parameters runs under the configuration store's
// lock (conf.Store.Edit), so changes and what they apply happen in one
// order; nothing here takes another controller's lock.
package params

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/ctl/conf"
	"github.com/pgshield/pgshield/internal/postgres"
)

// Config is what the controller needs.
type Config struct {
	Log     *slog.Logger
	Conf    *conf.Store
	Cluster *postgres.Cluster
	Audit   func(audit.Event)
	// Pool is the service role's pool (search path pinned).
	Pool func() *pgxpool.Pool
	// Publish, on a cluster node, shares the cluster's parameters
	// (Shared) after a change made here, before it is put in force here;
	// its error (a standby) refuses the change. Not called for parameters
	// received from the cluster (ApplyShared) nor for node-local ones.
	Publish func(body []byte) error
	// Serialize, on a cluster node, runs a local change of a shared
	// parameter inside the shared item's lock (node.Shared.Serialize),
	// which its watch holds while it applies a received set: one lock
	// order, that lock then the configuration store's.
	Serialize func(func() error) error
	// GuardWait bounds how long ApplyGuardSettings waits for PostgreSQL
	// to show the values it wrote (5 s if zero). A cluster node's Patroni
	// writes them into postgresql.conf at its next cycle: loop_wait more.
	GuardWait time.Duration
	// Apply hands the resolved parameters to the parts that use them once
	// a change of name is saved: the gateway, the audit log.
	Apply func(name string, p config.Params)
	// KernelFirewall mirrors the rules with params into nftables.
	KernelFirewall func(params config.Params) error
	// MetricsListen moves the metrics endpoint.
	MetricsListen func(addr string) error
	// ClusterSet, set on a cluster node only, stores a PostgreSQL
	// parameter (name, PostgreSQL's canonical value) in the cluster's
	// configuration, which every node applies, in place of ALTER SYSTEM
	// (cluster.go). It refuses with a clienterr what the cluster owns.
	ClusterSet func(ctx context.Context, name, value string) error
}

// Controller is the parameters of one server.
type Controller struct{ c Config }

// New makes the controller.
func New(c Config) *Controller {
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Audit == nil {
		c.Audit = func(audit.Event) {}
	}
	return &Controller{c: c}
}

// Parameters: `pgshield parameter list|show|set`, pgshield's own
// parameters (config.GatewayParams) and PostgreSQL's (pg_settings).

func gatewayParam(p config.Param, vals map[string]string) apitype.ParameterValue {
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
func (c *Controller) Parameters(ctx context.Context) ([]apitype.ParameterValue, error) {
	p := c.c.Conf.Params()
	var out []apitype.ParameterValue
	for _, gp := range config.GatewayParams() {
		out = append(out, gatewayParam(gp, p.Values))
	}
	rows, err := c.c.Pool().Query(ctx, sqlSettingsOrdered)
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
func (c *Controller) Parameter(ctx context.Context, name string) (apitype.ParameterValue, error) {
	if gp, ok := config.LookupParam(name); ok {
		p := c.c.Conf.Params()
		return gatewayParam(gp, p.Values), nil
	}
	v, err := scanSetting(c.c.Pool().QueryRow(ctx, sqlSettingByName, name))
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
func (c *Controller) SetParameter(ctx context.Context, name, value string) (apitype.ParameterValue, error) {
	if gp, ok := config.LookupParam(name); ok {
		return c.setGatewayParam(gp, value)
	}
	return c.setPostgresParam(ctx, name, value)
}

// setGatewayParam validates the whole new set, persists it, then swaps it
// into the gateway; on any failure the old set stays in force. On a
// cluster node a shared parameter is published first (refused on a
// standby).
func (c *Controller) setGatewayParam(gp config.Param, value string) (out apitype.ParameterValue, err error) {
	edit := func() error {
		return c.c.Conf.Edit(func(cur *config.Config, commit func(*config.Config) error) error {
			var err error
			out, err = c.setGatewayParamLocked(cur, commit, gp, value)
			return err
		})
	}
	if c.c.Serialize != nil && Shared(gp.Name) {
		err = c.c.Serialize(edit)
	} else {
		err = edit()
	}
	return out, err
}

// setGatewayParamLocked is setGatewayParam under the store's lock.
func (c *Controller) setGatewayParamLocked(cur *config.Config, commit func(*config.Config) error, gp config.Param, value string) (apitype.ParameterValue, error) {
	nv, err := config.NormalizeParam(gp, value)
	if err != nil {
		return apitype.ParameterValue{}, clienterr.New(apitype.CodeInvalid, "%v", err)
	}
	next := maps.Clone(cur.Parameters)
	if next == nil {
		next = map[string]string{}
	}
	next[gp.Name] = nv
	resolved, err := c.putLocked(cur, commit, next, []string{gp.Name}, c.c.Publish != nil && Shared(gp.Name), "parameter.set")
	if err != nil {
		return apitype.ParameterValue{}, err
	}
	return gatewayParam(gp, resolved.Values), nil
}

// putLocked puts the parameter set next in force, of which the names
// changed differ from cur's: what a local set and one received from the
// cluster both go through. The whole set is validated, the checks that
// read this machine (installed extensions) run, the shared parameters are
// published if publish (before anything is in force here), then the
// kernel firewall, the metrics endpoint, pgshield.json, pgshield_guard's
// settings and the running parts take it. Called under the store's lock.
func (c *Controller) putLocked(cur *config.Config, commit func(*config.Config) error, next map[string]string, changed []string, publish bool, event string) (config.Params, error) {
	resolved, err := config.ResolveParams(next)
	if err != nil {
		return config.Params{}, clienterr.New(apitype.CodeInvalid, "%v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second+c.guardWait())
	defer cancel()
	guard := slices.Contains(changed, "pgshield.allowed_extensions")
	if guard {
		if err := c.checkExtensionsAvailable(ctx, resolved.AllowedExtensions); err != nil {
			return config.Params{}, err
		}
	}
	if publish {
		b, err := encodeShared(next)
		if err != nil {
			return config.Params{}, err
		}
		if err := c.c.Publish(b); err != nil {
			return config.Params{}, err
		}
	}
	if slices.Contains(changed, "pgshield.kernel_firewall") || slices.Contains(changed, "pgshield.trusted_proxies") {
		if err := c.c.KernelFirewall(resolved); err != nil {
			return config.Params{}, clienterr.New(apitype.CodeInvalid, "kernel firewall: %v", err)
		}
	}
	if slices.Contains(changed, "pgshield.metrics_listen") {
		if err := c.c.MetricsListen(resolved.Values["pgshield.metrics_listen"]); err != nil {
			return config.Params{}, clienterr.New(apitype.CodeInvalid, "%v", err)
		}
	}
	newCfg := *cur
	newCfg.Parameters = next
	if err := commit(&newCfg); err != nil {
		return config.Params{}, fmt.Errorf("saving configuration: %w", err)
	}
	if guard {
		// pgshield_guard reads the list from PostgreSQL's configuration.
		if err := c.ApplyGuardSettings(ctx, &newCfg); err != nil {
			return config.Params{}, fmt.Errorf("saved, but PostgreSQL has not taken it (it will at its next start): %w", err)
		}
	}
	for _, name := range changed {
		c.c.Apply(name, resolved)
		c.c.Log.Info("Parameter changed.", "name", name, "value", resolved.Values[name], "by", event)
		c.c.Audit(audit.Event{Type: event, Outcome: audit.OutcomeSuccess, Fields: map[string]any{"name": name, "value": resolved.Values[name]}})
	}
	return resolved, nil
}

func (c *Controller) setPostgresParam(ctx context.Context, name, value string) (apitype.ParameterValue, error) {
	name = strings.ToLower(strings.TrimSpace(name))
	cur, err := scanSetting(c.c.Pool().QueryRow(ctx, sqlSettingByName, name))
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
	if c.c.ClusterSet != nil {
		return c.setClusterParam(ctx, name, value)
	}
	stmt := sqlAlterSystemSet(pgx.Identifier{name}.Sanitize(), quoteLiteral(value))
	if _, err := c.c.Pool().Exec(ctx, stmt); err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) {
			return apitype.ParameterValue{}, clienterr.New(apitype.CodeInvalid, "%s", pe.Message)
		}
		return apitype.ParameterValue{}, clienterr.New(apitype.CodeUnavailable, "PostgreSQL is not available: %v", err)
	}
	if _, err := c.c.Pool().Exec(ctx, sqlReloadConf); err != nil {
		return apitype.ParameterValue{}, fmt.Errorf("reloading configuration: %w", err)
	}
	// The reload is asynchronous; wait briefly until a fresh backend sees it
	// so that "new connections at once" holds when this call returns.
	var v apitype.ParameterValue
	for i := 0; i < 40; i++ {
		v, err = scanSetting(c.c.Pool().QueryRow(ctx, sqlSettingByName, name))
		if err != nil {
			return apitype.ParameterValue{}, err
		}
		if v.PendingRestart || v.Value != cur.Value {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.c.Log.Info("PostgreSQL parameter changed.", "name", name, "pending_restart", v.PendingRestart)
	c.c.Audit(audit.Event{Type: "parameter.set", Outcome: audit.OutcomeSuccess,
		Fields: map[string]any{"name": name, "value": audit.Redact(value), "pending_restart": v.PendingRestart}})
	return v, nil
}

// quoteLiteral makes a standard SQL string literal (standard_conforming_strings is on).
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
