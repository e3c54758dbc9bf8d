// Package alerting is the detector logic of pgshield's alerts: it reads
// audit events (the gateway's logins, PostgreSQL's log as the audit stream
// classifies it) and says which alerts they raise, as the cloud's threat
// protection for open-source databases does, plus privilege changes and
// decoys. It is pure: no I/O, no lock, an injected clock; its caller
// (internal/ctl/alerts) serializes it and keeps what it raises.
//
// Everything it reads from an event may come from the wire or from SQL a
// hostile tenant wrote: names are bounded and never interpreted, and only
// fields an attacker cannot choose (the real peer's address, the C source
// location PostgreSQL adds to its own messages, pgaudit's classified
// records) decide what is blamed on whom.
package alerting

import (
	"net/netip"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/pgshield/pgshield/internal/lru"
)

// Severities, as the cloud's alerts have them.
const (
	Low    = "Low"
	Medium = "Medium"
	High   = "High"
)

// Alert types. Each is an audit event type too.
const (
	// TypeBruteForceValid: repeated failed logins for a role that exists.
	TypeBruteForceValid = "alert.bruteforce_valid_user"
	// TypeBruteForceInvalid: repeated failed logins for roles that do not
	// exist (guessing names as well as passwords).
	TypeBruteForceInvalid = "alert.bruteforce_invalid_users"
	// TypeBruteForceSuccess: a successful login from a source right after
	// a brute force from it.
	TypeBruteForceSuccess = "alert.bruteforce_success"
	// TypeHarmfulApplication: a login (or an attempt) by a known attack
	// tool, by its application_name or startup fingerprint.
	TypeHarmfulApplication = "alert.harmful_application"
	// TypePrincipalNotSeen: a role or token principal that has not logged
	// in for pgshield.alert_principal_unseen_days (or never, once history
	// has been learned).
	TypePrincipalNotSeen = "alert.principal_not_seen"
	// TypeSourceNotSeen: a role logged in from a source prefix it has not
	// logged in from for pgshield.alert_source_unseen_days.
	TypeSourceNotSeen = "alert.source_not_seen"
	// TypePrivilegeChange: a role gained CREATEROLE, BYPASSRLS, SUPERUSER,
	// REPLICATION, membership of a powerful predefined role, or CREATE on
	// schema public.
	TypePrivilegeChange = "alert.privilege_change"
	// TypeEscalationRefused: pgshield_guard refused a statement (an
	// escalation attempt).
	TypeEscalationRefused = "alert.escalation_refused"
	// TypeDecoyRole: a login attempt as a decoy role.
	TypeDecoyRole = "alert.decoy_role_login"
	// TypeDecoyTable: a read (or write) of a decoy table.
	TypeDecoyTable = "alert.decoy_table_read"
	// TypeDecoyTampered: a decoy object was changed, dropped or renamed.
	TypeDecoyTampered = "alert.decoy_tampered"
	// TypeOversizedRecord: a pgaudit record or a refusal too long for
	// pgshield to read (a statement padded past the server log's line
	// limit); what it was cannot be checked, so it is raised itself.
	TypeOversizedRecord = "alert.oversized_record"
	// TypeCertificateExpiring: the server certificate (user-supplied, or
	// one pgshield failed to renew) or its CA expires within
	// pgshield.certificate_renew_before: Medium, High in the last 7 days.
	TypeCertificateExpiring = "alert.certificate_expiring"
	// TypeDatabaseUnreadable: a database that allows connections could
	// not be read for CREATE on schema public several times in
	// a row (its owner's settings, a broken database): unwatched.
	TypeDatabaseUnreadable = "alert.database_unreadable"
	// TypeSuppressed: alerts of one type came faster than the rate limit;
	// the excess is counted here instead of stored one by one.
	TypeSuppressed = "alert.suppressed"
)

// Kind is the fixed description of an alert type.
type Kind struct {
	Type     string `json:"type"`
	Severity string `json:"severity"`
	Title    string `json:"title"`
}

var kinds = []Kind{
	{TypeBruteForceValid, High, "Suspected brute force attack using a valid user"},
	{TypeBruteForceInvalid, Medium, "Suspected brute force attack (invalid users)"},
	{TypeBruteForceSuccess, High, "Suspected successful brute force attack"},
	{TypeHarmfulApplication, High, "Login attempt by a potentially harmful application"},
	{TypePrincipalNotSeen, Medium, "Login by a principal or role not seen recently"},
	{TypeSourceNotSeen, Low, "Login from a source not seen recently for this role"},
	{TypePrivilegeChange, High, "A role gained a powerful privilege"},
	{TypeEscalationRefused, Medium, "Privilege escalation attempt refused by pgshield_guard"},
	{TypeDecoyRole, High, "Login attempt as a decoy role"},
	{TypeDecoyTable, High, "Read of a decoy table"},
	{TypeDecoyTampered, High, "A decoy object was changed or removed"},
	{TypeOversizedRecord, High, "An audit record or refusal too long to inspect (possible evasion)"},
	{TypeCertificateExpiring, Medium, "The server certificate or its CA expires soon"},
	{TypeDatabaseUnreadable, Medium, "A database cannot be checked for privilege changes"},
	{TypeSuppressed, Medium, "Alerts suppressed by the rate limit"},
}

// Kinds lists every alert type, in a fixed order.
func Kinds() []Kind { return append([]Kind(nil), kinds...) }

// Lookup returns the kind of typ.
func Lookup(typ string) (Kind, bool) {
	for _, k := range kinds {
		if k.Type == typ {
			return k, true
		}
	}
	return Kind{}, false
}

// Finding is one alert a detector raised.
type Finding struct {
	Type string
	// Key is what repeats of the same alert share: the store counts a
	// repeat instead of storing another alert.
	Key                                 string
	Client, User, Database, Application string
	// Severity, when set, overrides the kind's (an expiry nearing grows
	// from Medium to High).
	Severity string
	// Details are facts safe to send anywhere (the webhook).
	Details map[string]string
	// Evidence is kept in the store and the audit log only: statements
	// may quote data.
	Evidence map[string]string
}

// MaxName bounds every name from the wire or from SQL in an alert.
const MaxName = 128

// Bound makes s valid UTF-8 of at most max bytes, marking a cut with "…".
// Control characters stay: JSON escapes them, and tables quote them.
func Bound(s string, max int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= max {
		return s
	}
	cut := max - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// Decoys says which names are decoys; the controller owns the list.
type Decoys interface {
	// DecoyRole reports whether name is a decoy role (exact match: role
	// names are case-sensitive).
	DecoyRole(name string) bool
	// DecoyTable reports whether object (pgaudit's schema-qualified name)
	// in database is a decoy table, and its canonical name.
	DecoyTable(database, object string) (string, bool)
}

// Config is the detectors' policy. Zero counts and durations turn the
// detector they drive off.
type Config struct {
	// Failures from one source (IPv4 address, IPv6 /64) within Window
	// raise a brute-force alert; the same count before a success raises
	// the successful brute force one.
	Failures int
	// RoleFailures for one existing role within Window, from all sources
	// together, raise a brute-force alert on that role (a distributed
	// attack).
	RoleFailures int
	Window       time.Duration
	// PrincipalUnseen and SourceUnseen: how long without a login makes a
	// role, or a source prefix for a role, new again.
	PrincipalUnseen, SourceUnseen time.Duration
	// Learning is how long history is collected before a role or a
	// source never seen at all raises an alert.
	Learning time.Duration
	// HarmfulApps are lower-case application names of attack tools: a
	// plain word matches a word of application_name, anything with
	// punctuation ("pgsql-brute") a substring.
	HarmfulApps []string
	// HarmfulFingerprints are startup packet shapes (see
	// MatchFingerprint) that mark a tool even without an application_name.
	HarmfulFingerprints []string
}

// Bounds of the detectors' state: every key is one an attacker can mint.
const (
	maxFailKeys       = 100_000
	maxRoles          = 20_000
	maxSourcesPerRole = 32
	maxWindowEntries  = 64
)

// Detector turns events into findings. Not safe for concurrent use.
type Detector struct {
	cfg Config
	now func() time.Time

	pairFails    *lru.Map[string, *window] // source + role (existing roles)
	sourceFails  *lru.Map[string, *window] // source, any role
	invalidFails *lru.Map[string, *window] // source, roles that do not exist
	roleFails    *lru.Map[string, *window] // role, all sources
	roles        *lru.Map[string, *roleSeen]
	since        time.Time // history collected since
}

type roleSeen struct {
	Last    time.Time            `json:"last"`
	Sources map[string]time.Time `json:"sources"`
}

// New makes a detector; now nil is time.Now.
func New(cfg Config, now func() time.Time) *Detector {
	if now == nil {
		now = time.Now
	}
	return &Detector{cfg: cfg, now: now,
		pairFails: lru.New[string, *window](maxFailKeys), sourceFails: lru.New[string, *window](maxFailKeys),
		invalidFails: lru.New[string, *window](maxFailKeys), roleFails: lru.New[string, *window](maxFailKeys),
		roles: lru.New[string, *roleSeen](maxRoles), since: now()}
}

// SetConfig changes the policy; counts and history carry over.
func (d *Detector) SetConfig(cfg Config) { d.cfg = cfg }

// window is a sliding count of recent times, bounded.
type window struct{ t []time.Time }

func (w *window) add(now time.Time, span time.Duration) int {
	w.prune(now, span)
	w.t = append(w.t, now)
	if len(w.t) > maxWindowEntries {
		w.t = w.t[len(w.t)-maxWindowEntries:]
	}
	return len(w.t)
}

func (w *window) count(now time.Time, span time.Duration) int {
	w.prune(now, span)
	return len(w.t)
}

func (w *window) prune(now time.Time, span time.Duration) {
	i := 0
	for i < len(w.t) && now.Sub(w.t[i]) >= span {
		i++
	}
	w.t = w.t[i:]
}

func bump(l *lru.Map[string, *window], key string, now time.Time, span time.Duration) int {
	w, ok := l.Get(key)
	if !ok {
		w = &window{}
		l.Put(key, w)
	}
	return w.add(now, span)
}

func peekCount(l *lru.Map[string, *window], key string, now time.Time, span time.Duration) int {
	if w, ok := l.Get(key); ok {
		return w.count(now, span)
	}
	return 0
}

// Event is what the detectors read of an audit event (internal/audit's
// Event, without importing it: the controller converts).
type Event struct {
	Type, Outcome, Client, User, Database, Reason string
	Fields                                        map[string]any
}

// Observe returns the alerts e raises, if any.
func (d *Detector) Observe(e Event, decoys Decoys) []Finding {
	switch e.Type {
	case "auth.failure":
		return d.authFailure(e, decoys)
	case "session.start":
		return d.sessionStart(e, decoys)
	case "connection.refused":
		// A tool refused before authentication (plaintext under
		// require_secure_transport) still showed its startup packet.
		return d.refusedStartup(e, decoys)
	case "privilege.refused":
		return d.refused(e)
	case "postgres.audit":
		return d.audited(e, decoys)
	case "postgres.oversized":
		return d.oversized(e)
	}
	return nil
}

// oversized raises an alert for a pgaudit record or a privilege refusal
// that was too long to read: padding a statement past the server log's
// line limit would otherwise hide a decoy read or an escalation attempt.
// Who and where come from the record's first bytes, which PostgreSQL
// writes before the message.
func (d *Detector) oversized(e Event) []Finding {
	if str(e.Fields, "audit_type") == "" && str(e.Fields, "sqlstate") != "42501" {
		return nil
	}
	src := "local"
	if addr, ok := ParseClientPort(e.Client); ok {
		src = SourceKey(addr).String()
	}
	f := base(TypeOversizedRecord, "user="+Bound(e.User, MaxName)+"|src="+src, e)
	f.Details["source"] = src
	for _, k := range []string{"audit_type", "sqlstate", "severity"} {
		if v := str(e.Fields, k); v != "" {
			f.Details[k] = v
		}
	}
	f.Evidence["reason"] = Bound(e.Reason, 512)
	return []Finding{f}
}

// base is a finding with the event's names, bounded.
func base(typ, key string, e Event) Finding {
	return Finding{Type: typ, Key: key, Client: Bound(e.Client, MaxName), User: Bound(e.User, MaxName),
		Database: Bound(e.Database, MaxName), Application: Bound(str(e.Fields, "application_name"), MaxName),
		Details: map[string]string{}, Evidence: map[string]string{}}
}

func str(f map[string]any, k string) string {
	s, _ := f[k].(string)
	return s
}

func (d *Detector) authFailure(e Event, decoys Decoys) []Finding {
	addr, ok := ParseClient(e.Client)
	if !ok {
		return nil // only the real peer may be blamed; no peer, no count
	}
	now := d.now()
	src := SourceKey(addr).String()
	var out []Finding
	if decoys != nil && decoys.DecoyRole(e.User) {
		f := base(TypeDecoyRole, "role="+e.User+"|src="+src, e)
		f.Details["source"] = src
		f.Evidence["reason"] = Bound(e.Reason, 512)
		out = append(out, f)
	}
	out = append(out, d.harmful(e, src)...)
	exists := e.Reason != "role does not exist"
	if v, ok := e.Fields["role_exists"].(bool); ok {
		exists = v
	}
	span := d.cfg.Window
	if span <= 0 {
		return out
	}
	role := Bound(e.User, MaxName)
	if d.cfg.Failures > 0 {
		bump(d.sourceFails, src, now, span)
	}
	if !exists {
		if n := bump(d.invalidFails, src, now, span); d.cfg.Failures > 0 && n >= d.cfg.Failures {
			f := base(TypeBruteForceInvalid, "src="+src, e)
			f.Details["source"], f.Details["failures_in_window"] = src, itoa(n)
			out = append(out, f)
		}
		return out
	}
	if n := bump(d.pairFails, src+"\x00"+role, now, span); d.cfg.Failures > 0 && n >= d.cfg.Failures {
		f := base(TypeBruteForceValid, "src="+src+"|role="+role, e)
		f.Details["source"], f.Details["failures_in_window"] = src, itoa(n)
		out = append(out, f)
	}
	if n := bump(d.roleFails, role, now, span); d.cfg.RoleFailures > 0 && n >= d.cfg.RoleFailures {
		// Keyed by role alone: a distributed attack is one alert, not one
		// per source.
		f := base(TypeBruteForceValid, "role="+role, e)
		f.Client = ""
		f.Details["distributed"], f.Details["failures_in_window"] = "true", itoa(n)
		out = append(out, f)
	}
	return out
}

func (d *Detector) sessionStart(e Event, decoys Decoys) []Finding {
	addr, ok := ParseClient(e.Client)
	if !ok {
		return nil
	}
	now := d.now()
	src := SourceKey(addr).String()
	role := Bound(e.User, MaxName)
	var out []Finding
	if decoys != nil && decoys.DecoyRole(e.User) {
		f := base(TypeDecoyRole, "role="+e.User+"|src="+src, e)
		f.Details["source"], f.Details["logged_in"] = src, "true"
		out = append(out, f)
	}
	out = append(out, d.harmful(e, src)...)
	if span := d.cfg.Window; span > 0 && d.cfg.Failures > 0 {
		pair := peekCount(d.pairFails, src+"\x00"+role, now, span)
		any := peekCount(d.sourceFails, src, now, span)
		if pair >= d.cfg.Failures || any >= d.cfg.Failures {
			f := base(TypeBruteForceSuccess, "src="+src+"|role="+role, e)
			f.Details["source"], f.Details["failures_before"] = src, itoa(max(pair, any))
			out = append(out, f)
			// The success is reported once; a later one needs new failures.
			d.pairFails.Del(src + "\x00" + role)
			d.sourceFails.Del(src)
		}
	}
	return append(out, d.history(e, addr, role, now)...)
}

// history raises the "not seen" alerts and records the login.
func (d *Detector) history(e Event, addr netip.Addr, role string, now time.Time) []Finding {
	var out []Finding
	prefix := HistoryPrefix(addr).String()
	learned := now.Sub(d.since) >= d.cfg.Learning
	rs, known := d.roles.Get(role)
	if d.cfg.PrincipalUnseen > 0 {
		switch {
		case known && now.Sub(rs.Last) >= d.cfg.PrincipalUnseen:
			f := base(TypePrincipalNotSeen, "role="+role, e)
			f.Details["last_login"] = rs.Last.UTC().Format(time.RFC3339)
			out = append(out, f)
		case !known && learned:
			f := base(TypePrincipalNotSeen, "role="+role, e)
			f.Details["last_login"] = "never seen"
			out = append(out, f)
		}
		if p := str(e.Fields, "principal_object_id"); p != "" && len(out) > 0 {
			out[len(out)-1].Details["principal_object_id"] = Bound(p, MaxName)
		}
	}
	if !known {
		rs = &roleSeen{Sources: map[string]time.Time{}}
		d.roles.Put(role, rs)
	}
	if d.cfg.SourceUnseen > 0 && known {
		last, seen := rs.Sources[prefix]
		if (!seen && learned) || (seen && now.Sub(last) >= d.cfg.SourceUnseen) {
			f := base(TypeSourceNotSeen, "role="+role+"|prefix="+prefix, e)
			f.Details["source_prefix"] = prefix
			if seen {
				f.Details["last_login_from_prefix"] = last.UTC().Format(time.RFC3339)
			}
			out = append(out, f)
		}
	}
	rs.Last = now
	rs.Sources[prefix] = now
	if len(rs.Sources) > maxSourcesPerRole {
		oldest, ot := "", now
		for p, t := range rs.Sources {
			if !t.After(ot) {
				oldest, ot = p, t
			}
		}
		delete(rs.Sources, oldest)
	}
	return out
}

// refusedStartup looks for an attack tool, or a decoy role's name, in a
// connection the gateway refused after reading its startup packet.
func (d *Detector) refusedStartup(e Event, decoys Decoys) []Finding {
	if str(e.Fields, "startup_keys") == "" {
		return nil
	}
	addr, ok := ParseClient(e.Client)
	if !ok {
		return nil
	}
	src := SourceKey(addr).String()
	var out []Finding
	if decoys != nil && decoys.DecoyRole(e.User) {
		f := base(TypeDecoyRole, "role="+e.User+"|src="+src, e)
		f.Details["source"] = src
		f.Evidence["reason"] = Bound(e.Reason, 512)
		out = append(out, f)
	}
	return append(out, d.harmful(e, src)...)
}

// harmful checks application_name and the startup fingerprint.
func (d *Detector) harmful(e Event, src string) []Finding {
	app := strings.ToLower(str(e.Fields, "application_name"))
	tool := MatchApp(app, d.cfg.HarmfulApps)
	how := "application_name"
	if tool == "" {
		st := Startup{Keys: str(e.Fields, "startup_keys"), User: e.User, Database: e.Database,
			Application: str(e.Fields, "application_name"), ClientEncoding: str(e.Fields, "client_encoding")}
		if tool = MatchFingerprint(st, d.cfg.HarmfulFingerprints); tool != "" {
			how = "startup_fingerprint"
		}
	}
	if tool == "" {
		return nil
	}
	f := base(TypeHarmfulApplication, "src="+src+"|tool="+tool, e)
	f.Details["source"], f.Details["tool"], f.Details["matched_by"] = src, tool, how
	if e.Type == "session.start" {
		f.Details["logged_in"] = "true"
	}
	return []Finding{f}
}

// MatchApp returns the entry of tools that app (lower case) matches, or "".
func MatchApp(app string, tools []string) string {
	if app == "" {
		return ""
	}
	words := strings.FieldsFunc(app, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9')
	})
	for _, t := range tools {
		if t == "" {
			continue
		}
		if strings.IndexFunc(t, func(r rune) bool { return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9') }) >= 0 {
			if strings.Contains(app, t) {
				return t
			}
			continue
		}
		for _, w := range words {
			if w == t {
				return t
			}
		}
	}
	return ""
}

// refused raises an alert for an escalation pgshield_guard refused. Only
// the location PostgreSQL adds (log_error_verbosity = verbose, which no
// tenant can change) proves the guard wrote it: a tenant's RAISE with
// SQLSTATE 42501 comes from pl_exec.c.
func (d *Detector) refused(e Event) []Finding {
	loc := str(e.Fields, "location")
	if !strings.Contains(loc, " pgshield_guard.c:") {
		return nil
	}
	// Keyed by statement too: each distinct attempt keeps its evidence;
	// the per-type rate limit bounds a flood of them.
	stmt := str(e.Fields, "statement")
	f := base(TypeEscalationRefused, "user="+Bound(e.User, MaxName)+"|stmt="+Bound(stmt, 256), e)
	f.Details["sqlstate"] = str(e.Fields, "sqlstate")
	f.Evidence["message"] = Bound(e.Reason, 1024)
	f.Evidence["statement"] = Bound(stmt, 2048)
	// A refusal inside a function, view or trigger may be someone else's
	// code that the user only called (the administrator can plant one to
	// frame a tenant): PostgreSQL's CONTEXT says where it ran, and the
	// alert says the user's statement was not the refused one.
	if ctx := str(e.Fields, "context"); ctx != "" {
		f.Evidence["context"] = Bound(ctx, 1024)
		f.Details["refused_in"] = "called code (see context), not necessarily the user's own statement"
	}
	return []Finding{f}
}

// audited raises an alert for a pgaudit OBJECT record on a decoy table.
// The audit stream promotes a line to postgres.audit only when pgaudit
// wrote it; OBJECT records exist only for relations granted to the audit
// role, and the name is matched in its database.
func (d *Detector) audited(e Event, decoys Decoys) []Finding {
	if decoys == nil || str(e.Fields, "audit_type") != "OBJECT" {
		return nil
	}
	name, ok := decoys.DecoyTable(e.Database, str(e.Fields, "object"))
	if !ok {
		return nil
	}
	src := "local"
	if addr, ok := ParseClientPort(e.Client); ok {
		src = SourceKey(addr).String()
	}
	f := base(TypeDecoyTable, "table="+name+"|user="+Bound(e.User, MaxName)+"|src="+src, e)
	f.Details["table"], f.Details["class"], f.Details["command"] = name, str(e.Fields, "class"), str(e.Fields, "command")
	f.Evidence["statement"] = Bound(str(e.Fields, "statement"), 2048)
	return []Finding{f}
}

// ParseClient reads the address of an audit record's client: an address
// (the gateway's events) or address:port (PostgreSQL's, also IPv6 without
// brackets, as jsonlog's remote_host and port are joined).
func ParseClient(s string) (netip.Addr, bool) {
	if s == "" {
		return netip.Addr{}, false
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap().WithZone(""), true
	}
	return ParseClientPort(s)
}

// ParseClientPort reads PostgreSQL's "address:port" (jsonlog joins
// remote_host and remote_port without brackets, so "::1:5432" must lose its
// last field first: it is also a valid IPv6 address).
func ParseClientPort(s string) (netip.Addr, bool) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap().WithZone(""), true
	}
	if i := strings.LastIndexByte(s, ':'); i > 0 {
		if a, err := netip.ParseAddr(s[:i]); err == nil {
			return a.Unmap().WithZone(""), true
		}
	}
	return netip.Addr{}, false
}

// SourceKey is what failures are counted by: an IPv4 address, an IPv6 /64
// (as threat protection counts them).
func SourceKey(a netip.Addr) netip.Prefix {
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p
	}
	p, _ := a.Prefix(32)
	return p
}

// HistoryPrefix is a source's network for the "not seen" alerts: /24 for
// IPv4, /48 for IPv6, so that a client's next address in its own network
// is not new.
func HistoryPrefix(a netip.Addr) netip.Prefix {
	if a.Is6() {
		p, _ := a.Prefix(48)
		return p
	}
	p, _ := a.Prefix(24)
	return p
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	return string(b[i:])
}

// History is the detectors' persistent part: who logged in from where.
type History struct {
	Since time.Time     `json:"since"`
	Roles []RoleHistory `json:"roles"`
}

// RoleHistory is one role's last login and source prefixes.
type RoleHistory struct {
	Role    string               `json:"role"`
	Last    time.Time            `json:"last"`
	Sources map[string]time.Time `json:"sources"`
}

// History returns the history to save, oldest role first.
func (d *Detector) History() History {
	h := History{Since: d.since, Roles: []RoleHistory{}}
	d.roles.Each(func(k string, v *roleSeen) {
		src := make(map[string]time.Time, len(v.Sources))
		for p, t := range v.Sources {
			src[p] = t
		}
		h.Roles = append(h.Roles, RoleHistory{Role: k, Last: v.Last, Sources: src})
	})
	return h
}

// LoadHistory restores a saved history, bounded as the live one is.
func (d *Detector) LoadHistory(h History) {
	if !h.Since.IsZero() && h.Since.Before(d.since) {
		d.since = h.Since
	}
	for _, r := range h.Roles {
		rs := &roleSeen{Last: r.Last, Sources: map[string]time.Time{}}
		ps := make([]string, 0, len(r.Sources))
		for p := range r.Sources {
			if _, err := netip.ParsePrefix(p); err == nil {
				ps = append(ps, p)
			}
		}
		sort.Slice(ps, func(i, j int) bool { return r.Sources[ps[i]].After(r.Sources[ps[j]]) })
		for i, p := range ps {
			if i == maxSourcesPerRole {
				break
			}
			rs.Sources[p] = r.Sources[p]
		}
		d.roles.Put(Bound(r.Role, MaxName), rs)
	}
}
