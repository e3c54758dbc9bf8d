// Package alerts is the daemon's controller of security alerts and decoys.
// It is fed the audit event stream (the gateway's logins, PostgreSQL's log
// as the audit stream classifies it), runs internal/alerting's detectors on
// it, compares the catalog's privileges every few seconds, keeps what is
// raised in a bounded store that survives restarts, records each new alert
// as an audit event (type alert.*), counts it for Prometheus and posts it
// to an optional webhook. It also owns the decoys (`pgshield decoy`).
//
// A hostile tenant must not silence, forge or flood alerts: every detector
// blames only what an attacker cannot choose (the real peer, the location
// PostgreSQL adds to its own messages, pgaudit's own records, the
// catalog); repeats of one alert are counted on it rather than stored
// again; new alerts of one type are rate-limited (the excess is counted in
// an alert.suppressed alert); the store is bounded and evicts dismissed and
// low-severity alerts first.
//
// Lock order: mu is a leaf. Audit records, metrics and the webhook queue
// are reached after it is released.
package alerts

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgshield/pgshield/internal/alerting"
	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
)

// Bounds and rates.
const (
	// MaxAlerts is how many alerts the store keeps.
	MaxAlerts = 1000
	// maxDecoys bounds the decoy list.
	maxDecoys = 100
	// repeatWindow: a repeat of an alert (same type and key) within this
	// time of its last is counted on it, not stored anew.
	repeatWindow = time.Hour
	// burst and refill: new alerts per type (a token bucket).
	burst  = 20
	refill = 6 * time.Second
	// saveInterval: how often a changed store is written.
	saveInterval = 2 * time.Second
	// pollInterval: how often privileges and decoys are checked.
	pollInterval = 5 * time.Second
)

// Config is what the controller needs.
type Config struct {
	Layout config.Layout
	Log    *slog.Logger
	// Audit records the alerts; it must not feed them back to Observe.
	Audit  func(audit.Event)
	Params config.Params
	// Pool is the service role's pool in database postgres; nil or
	// failing while PostgreSQL is down or locked.
	Pool func() *pgxpool.Pool
	// IsReserved reports pgshield's own roles (never decoys, not watched).
	IsReserved func(string) bool
	// Now is the clock; nil is time.Now.
	Now func() time.Time
	// PollInterval overrides pollInterval (tests).
	PollInterval time.Duration
	// RetryMin and RetryMax bound the webhook's backoff (default 1 s and
	// 30 s); RetryAttempts is how many posts a payload gets (default 120,
	// about an hour at the cap).
	RetryMin, RetryMax time.Duration
	RetryAttempts      int
}

// Controller owns the alerts, the detectors and the decoys.
type Controller struct {
	cfg     Config
	hook    *webhook
	raised  *prometheus.CounterVec
	dropped *prometheus.CounterVec
	results *prometheus.CounterVec

	mu struct {
		sync.Mutex
		det     *alerting.Detector
		alerts  []*apitype.Alert // oldest first
		decoys  []*decoy
		snap    *alerting.Snapshot
		buckets map[string]*bucket
		dirty   bool
		// dbCursor: the database whose schema public was read last
		// (readPublicCreateIn goes through them in turn).
		dbCursor string
		// dbFails: consecutive failed reads of a database (databases.go).
		dbFails map[string]int
	}
}

// decoy is a decoy as stored: the API's view plus what checks need.
type decoy struct {
	apitype.Decoy
	// OID of a decoy table: renames are followed by it.
	OID int64 `json:"oid,omitempty"`
	// CreatedSchema: the schema was made for it (dropped with it if empty).
	CreatedSchema bool `json:"created_schema,omitempty"`
	// Secret is the SHA-256 of a decoy role's verifier as created.
	Secret string `json:"secret,omitempty"`
}

type bucket struct {
	tokens float64
	at     time.Time
}

// New builds the controller and loads its state. A corrupt state file is
// reported and replaced at the next save: it never stops the server.
func New(cfg Config) *Controller {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Audit == nil {
		cfg.Audit = func(audit.Event) {}
	}
	if cfg.IsReserved == nil {
		cfg.IsReserved = func(string) bool { return false }
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = pollInterval
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = time.Second
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = 30 * time.Second
	}
	if cfg.RetryAttempts <= 0 {
		cfg.RetryAttempts = 120
	}
	c := &Controller{cfg: cfg,
		raised: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgshield_alerts_total",
			Help: "Security alerts raised, by type and severity (repeats counted on an alert are not)."}, []string{"type", "severity"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgshield_alerts_suppressed_total",
			Help: "New alerts over the per-type rate limit, counted instead of stored."}, []string{"type"}),
		results: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgshield_alert_webhook_total",
			Help: "Alert webhook posts by result (delivered, retried, failed after every retry, dropped: queue full)."}, []string{"result"}),
	}
	for _, k := range alerting.Kinds() {
		c.raised.WithLabelValues(k.Type, k.Severity)
	}
	for _, r := range []string{"delivered", "retried", "failed", "dropped"} {
		c.results.WithLabelValues(r)
	}
	c.hook = newWebhook(cfg.Log.With("component", "alert-webhook"), 256, cfg.RetryMin, cfg.RetryMax, cfg.RetryAttempts, c.results)
	c.mu.det = alerting.New(Policy(cfg.Params), cfg.Now)
	c.mu.buckets = map[string]*bucket{}
	c.hook.configure(webhookFrom(cfg.Params))
	if err := c.load(); err != nil {
		cfg.Log.Error("Alert state not loaded; starting empty.", "error", err)
		cfg.Audit(audit.Event{Type: "alert.state", Outcome: audit.OutcomeFailure, Reason: "state file not loaded: " + err.Error()})
	}
	return c
}

// Collectors are the controller's Prometheus metrics.
func (c *Controller) Collectors() []prometheus.Collector {
	return []prometheus.Collector{c.raised, c.dropped, c.results}
}

// Policy reads the detectors' policy from the parameters.
func Policy(p config.Params) alerting.Config {
	v := p.Values
	atoi := func(n string) int { i, _ := strconv.Atoi(v[n]); return i }
	dur := func(n string) time.Duration { d, _ := time.ParseDuration(v[n]); return d }
	days := func(n string) time.Duration { return time.Duration(atoi(n)) * 24 * time.Hour }
	cfg := alerting.Config{Failures: atoi("pgshield.alert_bruteforce_failures"),
		RoleFailures: atoi("pgshield.alert_bruteforce_role_failures"), Window: dur("pgshield.alert_window"),
		PrincipalUnseen: days("pgshield.alert_principal_unseen_days"), SourceUnseen: days("pgshield.alert_source_unseen_days"),
		Learning: dur("pgshield.alert_learning_period")}
	for _, a := range strings.Split(v["pgshield.alert_harmful_applications"], ",") {
		if a = strings.ToLower(strings.TrimSpace(a)); a != "" {
			cfg.HarmfulApps = append(cfg.HarmfulApps, a)
		}
	}
	for _, f := range strings.Split(v["pgshield.alert_harmful_fingerprints"], ";") {
		if f = strings.TrimSpace(f); f != "" {
			cfg.HarmfulFingerprints = append(cfg.HarmfulFingerprints, f)
		}
	}
	return cfg
}

func webhookFrom(p config.Params) webhookSettings {
	return webhookSettings{url: p.Values["pgshield.alert_webhook_url"], caFile: p.Values["pgshield.alert_webhook_ca_file"]}
}

// Apply takes new parameters; counts, history and alerts carry over.
func (c *Controller) Apply(p config.Params) {
	c.mu.Lock()
	c.mu.det.SetConfig(Policy(p))
	c.mu.Unlock()
	c.hook.configure(webhookFrom(p))
}

// interesting are the event types a detector reads; others are passed
// over before any lock.
var interesting = map[string]bool{"auth.failure": true, "session.start": true, "connection.refused": true,
	audit.TypePrivilegeRefused: true, audit.TypePostgresAudit: true, audit.TypePostgresOversized: true}

// Observe runs the detectors on one audit event (the gateway's and the
// daemon's). It takes a short lock and never waits on I/O.
func (c *Controller) Observe(e audit.Event) {
	if !interesting[e.Type] {
		return
	}
	c.ObserveBatch([]audit.Event{e})
}

// ObserveBatch runs the detectors on events in order (PostgreSQL's log).
func (c *Controller) ObserveBatch(es []audit.Event) {
	var out []emitted
	c.mu.Lock()
	for _, e := range es {
		if !interesting[e.Type] {
			continue
		}
		fs := c.mu.det.Observe(alerting.Event{Type: e.Type, Outcome: e.Outcome, Client: e.Client, User: e.User,
			Database: e.Database, Reason: e.Reason, Fields: e.Fields}, decoyIndex{c})
		for _, f := range fs {
			out = append(out, c.raiseLocked(f)...)
		}
	}
	c.mu.Unlock()
	c.emit(out)
}

// Raise stores a finding of the daemon's own (not from the event stream),
// such as a certificate nearing its expiry: repeats, rate limits and
// eviction as for the detectors' findings.
func (c *Controller) Raise(f alerting.Finding) {
	c.mu.Lock()
	out := c.raiseLocked(f)
	c.mu.Unlock()
	c.emit(out)
}

// emitted is what a raise makes known once the lock is released.
type emitted struct {
	ev      audit.Event
	payload *Payload // nil: no webhook post (a repeat)
	typ     string
	sev     string
	newOne  bool
	dropped bool
}

// raiseLocked stores f: a repeat is counted on its alert, a new alert is
// rate-limited per type and may evict older ones.
func (c *Controller) raiseLocked(f alerting.Finding) []emitted {
	kind, ok := alerting.Lookup(f.Type)
	if !ok {
		return nil
	}
	now := c.cfg.Now().UTC()
	key := f.Type + "\x00" + f.Key
	for i := len(c.mu.alerts) - 1; i >= 0; i-- {
		a := c.mu.alerts[i]
		if a.Dismissed || a.Type != f.Type || alertKey(a) != key || now.Sub(a.LastSeen) >= repeatWindow {
			continue
		}
		a.Count++
		a.LastSeen = now
		c.mu.dirty = true
		// Repeats reach the audit log at 2, 4, 8, ...: the trail shows an
		// attack going on without one record per guess.
		if a.Count&(a.Count-1) == 0 {
			return []emitted{{ev: alertEvent(a), typ: a.Type, sev: a.Severity}}
		}
		return nil
	}
	if f.Type != alerting.TypeSuppressed && !c.takeLocked(f.Type, now) {
		return append(c.suppressLocked(f), emitted{typ: f.Type, dropped: true})
	}
	sev := kind.Severity
	if f.Severity != "" {
		sev = f.Severity
	}
	a := &apitype.Alert{ID: newID(), Type: f.Type, Severity: sev, Title: kind.Title,
		FirstSeen: now, LastSeen: now, Count: 1, Client: f.Client, User: f.User, Database: f.Database,
		Application: f.Application, Details: nonEmpty(f.Details), Evidence: nonEmpty(f.Evidence)}
	if a.Details == nil {
		a.Details = map[string]string{}
	}
	a.Details["key"] = alerting.Bound(f.Key, 512)
	c.mu.alerts = append(c.mu.alerts, a)
	c.evictLocked()
	c.mu.dirty = true
	p := payloadOf(a)
	return []emitted{{ev: alertEvent(a), payload: &p, typ: a.Type, sev: a.Severity, newOne: true}}
}

// alertKey is what raiseLocked matches repeats by.
func alertKey(a *apitype.Alert) string { return a.Type + "\x00" + a.Details["key"] }

func nonEmpty(m map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		if v != "" {
			out[k] = v
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// takeLocked takes a token from typ's bucket.
func (c *Controller) takeLocked(typ string, now time.Time) bool {
	b, ok := c.mu.buckets[typ]
	if !ok {
		b = &bucket{tokens: burst, at: now}
		c.mu.buckets[typ] = b
	}
	b.tokens = min(burst, b.tokens+float64(now.Sub(b.at))/float64(refill))
	b.at = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

var severityRank = map[string]int{alerting.Low: 0, alerting.Medium: 1, alerting.High: 2}

// evictLocked keeps MaxAlerts: dismissed alerts go first, then the oldest
// of the lowest severity, so a flood of Low alerts cannot push out a High.
func (c *Controller) evictLocked() {
	for len(c.mu.alerts) > MaxAlerts {
		victim := -1
		for i, a := range c.mu.alerts {
			if a.Dismissed {
				victim = i
				break
			}
		}
		if victim < 0 {
			for i, a := range c.mu.alerts {
				if victim < 0 || severityRank[a.Severity] < severityRank[c.mu.alerts[victim].Severity] {
					victim = i
				}
			}
		}
		c.mu.alerts = append(c.mu.alerts[:victim], c.mu.alerts[victim+1:]...)
	}
}

func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// alertEvent is the audit record of an alert.
func alertEvent(a *apitype.Alert) audit.Event {
	f := map[string]any{"alert_id": a.ID, "severity": a.Severity, "count": a.Count,
		"first_seen": a.FirstSeen.Format(time.RFC3339)}
	if a.Application != "" {
		f["application_name"] = a.Application
	}
	for k, v := range a.Details {
		f[k] = v
	}
	for k, v := range a.Evidence {
		f["evidence_"+k] = v
	}
	return audit.Event{Type: a.Type, Outcome: audit.OutcomeFailure, Client: a.Client, User: a.User,
		Database: a.Database, Reason: a.Title, Fields: f}
}

func payloadOf(a *apitype.Alert) Payload {
	d := map[string]string{}
	for k, v := range a.Details {
		if k != "key" {
			d[k] = v
		}
	}
	return Payload{Source: "pgshield", ID: a.ID, Type: a.Type, Severity: a.Severity, Title: a.Title, Time: a.FirstSeen,
		Client: a.Client, User: a.User, Database: a.Database, Application: a.Application, Details: d}
}

// emit records, counts and posts what raises made, outside the lock.
func (c *Controller) emit(out []emitted) {
	for _, o := range out {
		switch {
		case o.dropped:
			c.dropped.WithLabelValues(o.typ).Inc()
			continue
		case o.newOne:
			c.raised.WithLabelValues(o.typ, o.sev).Inc()
			c.cfg.Log.Warn("Security alert.", "type", o.typ, "severity", o.sev, "id", o.ev.Fields["alert_id"])
		}
		c.cfg.Audit(o.ev)
		if o.payload != nil {
			c.hook.Enqueue(*o.payload)
		}
	}
}

// List returns the alerts, newest first.
func (c *Controller) List() []apitype.Alert {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]apitype.Alert, 0, len(c.mu.alerts))
	for i := len(c.mu.alerts) - 1; i >= 0; i-- {
		out = append(out, copyAlert(c.mu.alerts[i]))
	}
	return out
}

// Get returns one alert.
func (c *Controller) Get(id string) (apitype.Alert, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, a := range c.mu.alerts {
		if a.ID == id {
			return copyAlert(a), nil
		}
	}
	return apitype.Alert{}, clienterr.New(apitype.CodeNotFound, "alert %q does not exist", alerting.Bound(id, 64))
}

// Dismiss marks an alert dismissed: it stays listed; a repeat of it is a
// new alert.
func (c *Controller) Dismiss(id string) (apitype.Alert, error) {
	c.mu.Lock()
	var found *apitype.Alert
	for _, a := range c.mu.alerts {
		if a.ID == id {
			found = a
			break
		}
	}
	if found == nil {
		c.mu.Unlock()
		return apitype.Alert{}, clienterr.New(apitype.CodeNotFound, "alert %q does not exist", alerting.Bound(id, 64))
	}
	if !found.Dismissed {
		now := c.cfg.Now().UTC()
		found.Dismissed, found.DismissedAt = true, &now
		c.mu.dirty = true
	}
	a := copyAlert(found)
	c.mu.Unlock()
	c.cfg.Audit(audit.Event{Type: "alert.dismiss", Outcome: audit.OutcomeSuccess, Reason: "alert dismissed by the operator",
		Fields: map[string]any{"alert_id": a.ID, "alert_type": a.Type}})
	if err := c.Save(); err != nil {
		c.cfg.Log.Error("Saving the alerts failed.", "error", err)
	}
	return a, nil
}

func copyAlert(a *apitype.Alert) apitype.Alert {
	b := *a
	b.Details = copyMap(a.Details)
	b.Evidence = copyMap(a.Evidence)
	if a.DismissedAt != nil {
		t := *a.DismissedAt
		b.DismissedAt = &t
	}
	return b
}

func copyMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Run delivers webhook posts, checks privileges and decoys every poll
// interval and saves the store every saveInterval until ctx ends, then
// once more.
func (c *Controller) Run(ctx context.Context) {
	go c.hook.run(ctx)
	save := time.NewTicker(saveInterval)
	defer save.Stop()
	poll := time.NewTicker(c.cfg.PollInterval)
	defer poll.Stop()
	c.Poll(ctx)
	for {
		select {
		case <-ctx.Done():
			if err := c.Save(); err != nil {
				c.cfg.Log.Error("Saving the alerts failed.", "error", err)
			}
			return
		case <-save.C:
			if err := c.saveIfDirty(); err != nil {
				c.cfg.Log.Error("Saving the alerts failed.", "error", err)
			}
		case <-poll.C:
			c.Poll(ctx)
		}
	}
}

// StateFile holds the alerts, decoys, login history and the last
// privilege snapshot: outside the encrypted volume (names and addresses,
// no data; evidence is redacted SQL), so alerts are kept while it is
// locked; 0600 in a 0700 directory.
func StateFile(l config.Layout) string { return filepath.Join(l.Root, "alerts", "state.json") }

type state struct {
	Version int                `json:"version"`
	Alerts  []*apitype.Alert   `json:"alerts"`
	Decoys  []*decoy           `json:"decoys"`
	History alerting.History   `json:"history"`
	Snap    *alerting.Snapshot `json:"privileges,omitempty"`
}

// maxStateFile bounds what load reads.
const maxStateFile = 64 << 20

func (c *Controller) load() error {
	f, err := os.Open(StateFile(c.cfg.Layout))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	var st state
	dec := json.NewDecoder(&limitedReader{r: f, n: maxStateFile})
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		return fmt.Errorf("%s: %w", StateFile(c.cfg.Layout), err)
	}
	if st.Version != 1 {
		return fmt.Errorf("%s: version %d is not 1", StateFile(c.cfg.Layout), st.Version)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, a := range st.Alerts {
		if a != nil && a.ID != "" {
			c.mu.alerts = append(c.mu.alerts, a)
		}
	}
	sort.SliceStable(c.mu.alerts, func(i, j int) bool { return c.mu.alerts[i].FirstSeen.Before(c.mu.alerts[j].FirstSeen) })
	c.evictLocked()
	for _, d := range st.Decoys {
		if d != nil && d.Kind == apitype.DecoyTable && d.Database == "" {
			d.Database = "postgres" // saved before decoys could be elsewhere
		}
		if d != nil && len(c.mu.decoys) < maxDecoys {
			c.mu.decoys = append(c.mu.decoys, d)
		}
	}
	c.mu.det.LoadHistory(st.History)
	c.mu.snap = st.Snap
	return nil
}

type limitedReader struct {
	r interface{ Read([]byte) (int, error) }
	n int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errors.New("state file too large")
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

func (c *Controller) saveIfDirty() error {
	c.mu.Lock()
	dirty := c.mu.dirty
	c.mu.Unlock()
	if !dirty {
		return nil
	}
	return c.Save()
}

// Save writes the state now, atomically.
func (c *Controller) Save() error {
	c.mu.Lock()
	st := state{Version: 1, Alerts: c.mu.alerts, Decoys: c.mu.decoys, History: c.mu.det.History(), Snap: c.mu.snap}
	b, err := json.Marshal(st)
	c.mu.dirty = false
	c.mu.Unlock()
	if err != nil {
		return err
	}
	dir := filepath.Dir(StateFile(c.cfg.Layout))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	if err := config.WriteFileAtomic(StateFile(c.cfg.Layout), b, 0o600); err != nil {
		c.mu.Lock()
		c.mu.dirty = true
		c.mu.Unlock()
		return err
	}
	return nil
}
