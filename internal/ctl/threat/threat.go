// Package threat is the daemon's controller of threat protection: it owns
// the internal/threat Guard the gateway consults, its state file under the
// data directory, the live reload of its parameters, and the ban list and
// unban of the management API.
package threat

import (
	"context"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
	guard "github.com/pgshield/pgshield/internal/threat"
)

// saveInterval is how often changed state is written: a crash loses at
// most this much; a stop writes it all.
const saveInterval = 2 * time.Second

// Config is what the controller needs.
type Config struct {
	Layout config.Layout
	Log    *slog.Logger
	Audit  func(audit.Event)
	// Policy turns parameters into the guard's policy (the gateway's
	// ThreatConfig, with the administrator's name).
	Policy func(config.Params) guard.Config
	Params config.Params
	// Now is the clock; nil is time.Now.
	Now func() time.Time
	// Pool is the service role's pool, for PostgreSQL's connection limits
	// (pgshield.max_connections = auto); nil or returning nil while
	// PostgreSQL is down.
	Pool func() *pgxpool.Pool
	// LimitsInterval is how often they are read (default limitsInterval).
	LimitsInterval time.Duration
}

// Controller owns the guard.
type Controller struct {
	cfg Config
	g   *guard.Guard
}

// StateFile is where bans and known-good sources are kept: outside the
// encrypted volume (they hold addresses and role names, no data), so that
// bans hold while the volume is locked, in a 0700 directory, 0600.
func StateFile(l config.Layout) string { return filepath.Join(l.Root, "threat", "state.json") }

// New builds the guard and loads its state. A corrupt state file is
// reported (log and audit) and left for the next save to replace: it
// never stops the server.
func New(cfg Config) *Controller {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &Controller{cfg: cfg, g: guard.New(cfg.Policy(cfg.Params), guard.WithClock(cfg.Now), guard.WithFile(StateFile(cfg.Layout)))}
	if err := c.g.Load(); err != nil {
		cfg.Log.Error("Threat state not loaded; starting with no bans.", "error", err)
		cfg.Audit(audit.Event{Type: "threat.state", Outcome: audit.OutcomeFailure, Reason: "state file not loaded: " + err.Error()})
	}
	return c
}

// Guard is what the gateway consults.
func (c *Controller) Guard() *guard.Guard { return c.g }

// Apply takes new parameters; counts and bans carry over.
func (c *Controller) Apply(p config.Params) { c.g.SetConfig(c.cfg.Policy(p)) }

// Run saves changed state every saveInterval until ctx ends, then once
// more, and follows PostgreSQL's connection limits.
func (c *Controller) Run(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.followLimits(ctx)
	}()
	c.g.Run(ctx, saveInterval, func(err error) { c.cfg.Log.Error("Saving the threat state failed.", "error", err) })
	<-done
}

// Save writes changed state now.
func (c *Controller) Save() error { return c.g.Save() }

// Bans lists the bans in force.
func (c *Controller) Bans() []apitype.Ban {
	out := []apitype.Ban{}
	for _, b := range c.g.Bans() {
		out = append(out, apitype.Ban{Source: b.Source.String(), BannedAt: b.At.UTC(), Until: b.Until.UTC(), Count: b.Count})
	}
	return out
}

// Unban lifts the ban on source: an address, or the prefix ban list shows.
func (c *Controller) Unban(source string) (apitype.Ban, error) {
	p, err := parseSource(source)
	if err != nil {
		return apitype.Ban{}, err
	}
	key := guard.SourceKey(p.Addr())
	var found *apitype.Ban
	for _, b := range c.Bans() {
		if b.Source == key.String() {
			found = &b
			break
		}
	}
	if found == nil || !c.g.Unban(key) {
		return apitype.Ban{}, clienterr.New(apitype.CodeNotFound, "source %s is not banned", key)
	}
	if err := c.g.Save(); err != nil {
		c.cfg.Log.Error("Saving the threat state failed.", "error", err)
	}
	c.cfg.Audit(audit.Event{Type: "threat.unban", Outcome: audit.OutcomeSuccess, Client: key.Addr().String(),
		Reason: "ban deleted by the operator", Fields: map[string]any{"source": key.String()}})
	return *found, nil
}

// parseSource reads an address or a source prefix (IPv4 /32, IPv6 /64).
func parseSource(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
		return guard.SourceKey(a), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil || p != guard.SourceKey(p.Addr()) {
		return netip.Prefix{}, clienterr.New(apitype.CodeInvalid,
			"%q is not a source: use an address, or the IPv4 /32 or IPv6 /64 that ban list shows", s)
	}
	return p, nil
}
