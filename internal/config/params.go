package config

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/proxyproto"
)

// Param describes a parameter that pgshield itself owns (not PostgreSQL's).
type Param struct {
	Name        string
	Default     string
	Description string
	// Allowed lists the accepted values; normalize maps input onto them.
	Allowed []string
	// Check validates and canonicalizes free-form values (when Allowed is nil).
	Check func(string) (string, error)
}

// gatewayParams are the Azure-named parameters the gateway enforces.
var gatewayParams = []Param{
	{Name: "require_secure_transport", Default: "on", Allowed: []string{"on", "off"},
		Description: "Refuse connections that do not use TLS."},
	{Name: "ssl_min_protocol_version", Default: "TLSv1.2", Allowed: []string{"TLSv1.2", "TLSv1.3"},
		Description: "Lowest TLS version the gateway accepts."},
	{Name: "ssl_max_protocol_version", Default: "", Allowed: []string{"", "TLSv1.2", "TLSv1.3"},
		Description: "Highest TLS version the gateway accepts; empty means no maximum."},
	{Name: "accepted_password_auth_method", Default: "scram-sha-256", Allowed: []string{"scram-sha-256"},
		Description: "Password authentication methods the gateway accepts."},
	{Name: "pgshield.max_connection_rate_per_ip", Default: "200", Check: checkRate,
		Description: "New connections per second accepted from one source (IPv6: per /64) before TLS; 0 turns the limit off."},
	{Name: "pgshield.kernel_firewall", Default: "off", Allowed: []string{"on", "off"},
		Description: "Also enforce the firewall rules in the kernel (nftables), so denied sources never complete a TCP handshake."},
	{Name: "pgshield.key_revalidation_interval", Default: "1m0s", Check: checkDuration,
		Description: "How often pgshield proves it can still unwrap the data key with the key-encryption key."},
	{Name: "pgshield.key_unavailable_grace", Default: "30m0s", Check: checkDuration,
		Description: "How long a KMS that cannot be reached (not a revocation) is tolerated before the server becomes inaccessible."},
	{Name: "pgshield.storage_autogrow", Default: "on", Allowed: []string{"on", "off"},
		Description: "Grow the encrypted volume by 25% (at least 1 GiB) when less than 10% of it is free, as long as the filesystem holding its image has room."},
	{Name: "pgshield.backup_retention_days", Default: "7", Check: checkRetentionDays,
		Description: "Days of point-in-time restore the backup repository keeps: older full backups, and the WAL only they need, are expired after each backup."},
	{Name: "pgshield.audit_retention_days", Default: "7", Check: checkAuditRetention,
		Description: "Days rotated audit log files are kept (the log rotates at 100 MB); 0 keeps them all."},
	{Name: "pgshield.audit_syslog", Default: "", Check: checkSyslog,
		Description: "Also forward every audit record to syslog in RFC 5424 format: udp://host:port, tcp://host:port or unix:///dev/log; empty turns forwarding off."},
	{Name: "pgshield.audit_fail_closed", Default: "off", Allowed: []string{"on", "off"},
		Description: "Refuse new sessions while the audit log cannot be written, instead of letting them go unrecorded."},
	{Name: "pgshield.trusted_proxies", Default: "", Check: checkTrusted,
		Description: "Comma-separated CIDRs of load balancers whose PROXY protocol header is accepted."},
	{Name: "pgshield.metrics_listen", Default: "", Check: checkMetricsListen,
		Description: "TCP address (host:port) serving Prometheus metrics at /metrics; empty serves them only on the management socket."},
	{Name: "pgshield.password_auth", Default: "on", Allowed: []string{"on", "off"},
		Description: "Accept SCRAM password logins; off allows only token (OIDC) principals, like Azure's \"Microsoft Entra authentication only\"."},
	{Name: "pgshield.oidc_issuer", Default: "", Check: checkIssuer,
		Description: "HTTPS URL of the OIDC issuer whose access tokens token principals log in with; empty turns token authentication off."},
	{Name: "pgshield.oidc_audience", Default: "", Check: checkClaimValue,
		Description: "Audience (aud) a token must carry: the application ID URI or client ID of the database resource."},
	{Name: "pgshield.oidc_principal_claim", Default: "oid", Check: checkClaimName,
		Description: "Claim holding the principal's object ID (oid for Microsoft Entra ID, sub for most other issuers)."},
	{Name: "pgshield.oidc_groups_claim", Default: "groups", Check: checkClaimName,
		Description: "Claim listing the object IDs of the groups the principal belongs to."},
	{Name: "pgshield.oidc_tenant", Default: "", Check: checkClaimValue,
		Description: "When set, tokens must carry this tenant ID in their tid claim."},
	{Name: "pgshield.oidc_enforce_expiry", Default: "off", Allowed: []string{"on", "off"},
		Description: "End a token principal's session when its token expires (off: the token is checked at connect, as managed services do)."},
	{Name: "pgshield.oidc_ca_file", Default: "", Check: checkCAFile,
		Description: "PEM file of CA certificates trusted for the issuer's HTTPS, in addition to the system's."},
	{Name: "pgshield.oidc_jwks_refresh_interval", Default: "1m0s", Check: checkDuration,
		Description: "Least time between two fetches of the issuer's signing keys caused by a token with an unknown key ID."},
	// Threat protection (internal/threat): what may try to log in, and how often.
	{Name: "pgshield.preauth_timeout", Default: "10s", Check: checkPreAuthTimeout,
		Description: "Absolute deadline from accept for a client's first byte, TLS handshake and startup packet (a byte a second does not extend it); the whole login stays bounded by the authentication timeout (60s)."},
	{Name: "pgshield.max_preauth_connections", Default: "256", Check: checkCount,
		Description: "Connections still authenticating, from all sources; over it a new connection is closed without a word, before TLS. 0 turns the cap off."},
	{Name: "pgshield.max_preauth_connections_per_source", Default: "32", Check: checkCount,
		Description: "Connections still authenticating from one source (IPv6: per /64); over it a new connection is closed without a word, before TLS. 0 turns the cap off."},
	{Name: "pgshield.preauth_reserved_connections", Default: "64", Check: checkCount,
		Description: "Of pgshield.max_preauth_connections, how many only known-good sources (a successful login within pgshield.known_source_ttl) may use, so a flood from elsewhere cannot keep them out."},
	{Name: "pgshield.known_source_ttl", Default: "168h0m0s", Check: checkDuration,
		Description: "How long a successful login keeps its source known-good: it may use the reserved pre-authentication slots, and is not slowed by attacks on the role it logged in as."},
	{Name: "pgshield.bruteforce_max_failures", Default: "5", Check: checkFailures,
		Description: "Failed logins from one source (IPv6: per /64) within pgshield.bruteforce_window that ban it (as fail2ban's maxretry); a banned source is closed at accept, before TLS. 0 turns bans off."},
	{Name: "pgshield.bruteforce_ignore_sources", Default: "127.0.0.1/32, ::1/128", Check: checkTrusted,
		Description: "Comma-separated addresses or CIDRs threat protection leaves alone, as fail2ban's ignoreself: never banned, slowed or held to the per-source caps (their failures still count against the role). The default is the host's own loopback, which every client of a local proxy without PROXY protocol looks like; empty protects against every source."},
	{Name: "pgshield.bruteforce_window", Default: "10m0s", Check: checkDuration,
		Description: "Sliding window in which failed logins are counted (as fail2ban's findtime)."},
	{Name: "pgshield.bruteforce_ban_time", Default: "10m0s", Check: checkDuration,
		Description: "Length of a first ban (as fail2ban's bantime); each repeat within a day of the last doubles it."},
	{Name: "pgshield.bruteforce_max_ban_time", Default: "24h0m0s", Check: checkDuration,
		Description: "Longest a doubled ban can be (as fail2ban's bantime.maxtime)."},
	{Name: "pgshield.bruteforce_role_max_failures", Default: "20", Check: checkFailures,
		Description: "Failed logins for one role within pgshield.bruteforce_window, from all sources, after which attempts at it from sources not known-good for it go one at a time, each a doubling delay apart. The role is slowed, never locked: its known-good sources are not. 0 turns it off."},
	{Name: "pgshield.bruteforce_role_max_delay", Default: "10s", Check: checkRoleDelay,
		Description: "Longest delay between two attempts at a role under attack; attempts that would wait more than twice this are refused (53300)."},
	{Name: "pgshield.max_client_connections", Default: "1000", Check: checkClientConnections,
		Description: "Client connections the gateway holds at once, authenticated or not, whatever the pool mode (PgBouncer's max_client_conn); up to 64 more are taken only to be refused with 53300 inside TLS, beyond that they are closed. Raise it with the process's open-file limit for many idle clients over transaction pooling; sessions are still capped by pgshield.max_connections."},
	{Name: "pgshield.max_connections", Default: "auto", Check: checkMaxConnections,
		Description: "Sessions the gateway lets in, all roles together; the last pgshield.reserved_admin_connections of them are for the administrator. auto: PostgreSQL's max_connections minus superuser_reserved_connections and the connections pgshield itself holds (89 with PostgreSQL's defaults), followed when PostgreSQL restarts with another max_connections; it counts sessions that hold a backend, so sessions in transaction pooling (which share the pool's backends, capped by pgshield.pool_size and pool_max_total) are not counted under auto. A number fixes it, for every session; 0 turns the cap off."},
	{Name: "pgshield.max_connections_per_source", Default: "0", Check: checkCount,
		Description: "Sessions from one source (IPv6: per /64), on top of PostgreSQL's own limits; refused with 53300 after TLS. 0 turns the cap off."},
	{Name: "pgshield.max_connections_per_role", Default: "0", Check: checkCount,
		Description: "Sessions per role, on top of the role's own CONNECTION LIMIT; refused with 53300 after TLS. 0 turns the cap off."},
	{Name: "pgshield.reserved_admin_connections", Default: "3", Check: checkCount,
		Description: "Sessions of pgshield.max_connections kept for the administrator, so it can always get in to act; the per-source and per-role caps do not apply to it."},
	// Backend pooling (internal/pool; README "Pooling").
	{Name: "pgshield.pool_mode", Default: "session", Allowed: []string{"session", "transaction", "off"},
		Description: "Reuse backends: session hands a client's backend, reset with DISCARD ALL, to the next client of the same role, database and startup parameters; transaction holds a backend only for a transaction (reset when it changes clients; session features pin the client to it); off opens one backend per client."},
	{Name: "pgshield.pool_mode_overrides", Default: "", Check: checkPoolOverrides,
		Description: "Pool modes for some databases and roles, over pgshield.pool_mode: comma-separated db:NAME=MODE or role:NAME=MODE (session, transaction or off); a role's beats its database's. Names are the catalog's, exact; others than letters, digits and _$.- in double quotes."},
	{Name: "pgshield.pool_size", Default: "20", Check: checkPoolSize,
		Description: "Idle backends kept per role, database and startup parameters; in transaction mode, the backends open for them."},
	{Name: "pgshield.pool_max_total", Default: "auto", Check: checkPoolMaxTotal,
		Description: "Backends open through the gateway, in use and idle; an idle one is closed to make room before a client waits. auto: what PostgreSQL leaves the gateway, as pgshield.max_connections = auto counts it (89 with PostgreSQL's defaults), followed when PostgreSQL restarts with another max_connections. A number (1 to 10000) fixes it; keep it below PostgreSQL's max_connections minus what pgshield itself uses."},
	{Name: "pgshield.pool_idle_timeout", Default: "10m0s", Check: checkDuration,
		Description: "An idle pooled backend is closed after this long."},
	{Name: "pgshield.pool_lifetime", Default: "1h0m0s", Check: checkDuration,
		Description: "A pooled backend is closed when it returns after being open this long (so ALTER ROLE/DATABASE ... SET reach pooled sessions within it)."},
	{Name: "pgshield.pool_wait_timeout", Default: "30s", Check: checkPoolWait,
		Description: "Longest a client waits for a backend when the pool is full; then it gets 53300."},
	{Name: "pgshield.allowed_extensions", Default: DefaultAllowedExtensions, Check: checkExtensions,
		Description: "Comma-separated extensions the administrator and the roles it creates may CREATE EXTENSION (like Azure's azure.extensions); each must be installed on the machine."},
}

func checkAuditRetention(v string) (string, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > 3650 {
		return "", errors.New("use a whole number of days from 0 (keep everything) to 3650")
	}
	return strconv.Itoa(n), nil
}

func checkSyslog(v string) (string, error) {
	if v == "" {
		return "", nil
	}
	if _, _, err := audit.ParseSyslogURL(v); err != nil {
		return "", err
	}
	return v, nil
}

func checkRate(v string) (string, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > 1000000 {
		return "", errors.New("use a whole number of connections per second from 0 (no limit) to 1000000")
	}
	return strconv.Itoa(n), nil
}

func checkCount(v string) (string, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > 1000000 {
		return "", errors.New("use a whole number from 0 (no limit) to 1000000")
	}
	return strconv.Itoa(n), nil
}

func checkClientConnections(v string) (string, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 1000000 {
		return "", errors.New("use a whole number from 1 to 1000000")
	}
	return strconv.Itoa(n), nil
}

func checkFailures(v string) (string, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > 1000 {
		return "", errors.New("use a whole number of failed logins from 0 (off) to 1000")
	}
	return strconv.Itoa(n), nil
}

func checkPreAuthTimeout(v string) (string, error) {
	d, err := time.ParseDuration(v)
	if err != nil || d < time.Second || d > time.Minute {
		return "", errors.New("use a duration from 1s to 60s (the authentication timeout), such as 10s")
	}
	return d.String(), nil
}

func checkRoleDelay(v string) (string, error) {
	d, err := time.ParseDuration(v)
	if err != nil || d < 100*time.Millisecond || d > 20*time.Second {
		return "", errors.New("use a duration from 100ms to 20s (two of them must fit in the authentication timeout)")
	}
	return d.String(), nil
}

func checkRetentionDays(v string) (string, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 3650 {
		return "", errors.New("use a whole number of days from 1 to 3650")
	}
	return strconv.Itoa(n), nil
}

func checkDuration(v string) (string, error) {
	d, err := time.ParseDuration(v)
	if err != nil || d < time.Second || d > 7*24*time.Hour {
		return "", errors.New("use a duration from 1s to 168h, such as 60s or 30m")
	}
	return d.String(), nil
}

func checkTrusted(v string) (string, error) {
	if strings.TrimSpace(v) == "" {
		return "", nil
	}
	t, err := proxyproto.ParseTrusted(v)
	if err != nil {
		return "", err
	}
	return t.String(), nil
}

func checkMetricsListen(v string) (string, error) {
	if v == "" {
		return "", nil
	}
	host, port, err := net.SplitHostPort(v)
	if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 1 || n > 65535 || strings.ContainsAny(host, " /") {
		return "", errors.New("use host:port, such as 127.0.0.1:9187")
	}
	return v, nil
}

func checkIssuer(v string) (string, error) {
	if v == "" {
		return "", nil
	}
	u, err := url.Parse(v)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", errors.New("use the issuer's https:// URL, exactly as its tokens' iss claim spells it")
	}
	return v, nil
}

func checkClaimValue(v string) (string, error) {
	if len(v) > 256 || strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return "", errors.New("use at most 256 printable characters")
	}
	return v, nil
}

func checkClaimName(v string) (string, error) {
	if v == "" || len(v) > 64 || strings.ContainsFunc(v, func(r rune) bool {
		return !(r == '_' || r == '-' || r == '.' || r == ':' || r == '/' ||
			(r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9'))
	}) {
		return "", errors.New("use a claim name of 1 to 64 letters, digits or _-.:/")
	}
	return v, nil
}

func checkCAFile(v string) (string, error) {
	if v == "" {
		return "", nil
	}
	if !filepath.IsAbs(v) {
		return "", errors.New("use an absolute path to a PEM file")
	}
	return filepath.Clean(v), nil
}

// GatewayParams returns the table of pgshield-owned parameters, sorted.
func GatewayParams() []Param {
	out := append([]Param(nil), gatewayParams...)
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// LookupParam finds a pgshield-owned parameter by name (case-insensitive).
func LookupParam(name string) (Param, bool) {
	for _, p := range gatewayParams {
		if strings.EqualFold(p.Name, name) {
			return p, true
		}
	}
	return Param{}, false
}

// NormalizeParam validates value for p and returns its canonical spelling.
func NormalizeParam(p Param, value string) (string, error) {
	v := strings.TrimSpace(value)
	switch p.Name {
	case "require_secure_transport":
		switch strings.ToLower(v) {
		case "on", "true", "yes", "1":
			return "on", nil
		case "off", "false", "no", "0":
			return "off", nil
		}
	default:
		if p.Check != nil {
			nv, err := p.Check(v)
			if err != nil {
				return "", fmt.Errorf("invalid value for parameter %q: %q: %v", p.Name, value, err)
			}
			return nv, nil
		}
		for _, a := range p.Allowed {
			if strings.EqualFold(a, v) {
				return a, nil
			}
		}
	}
	allowed := make([]string, 0, len(p.Allowed))
	for _, a := range p.Allowed {
		if a == "" {
			a = `"" (none)`
		}
		allowed = append(allowed, a)
	}
	return "", fmt.Errorf("invalid value for parameter %q: %q (allowed: %s)", p.Name, value, strings.Join(allowed, ", "))
}

// Params is the resolved view of the gateway parameters.
type Params struct {
	// RatePerIP limits new connections per second per source; 0: no limit.
	RatePerIP int
	// MaxClientConnections caps the gateway's concurrent client
	// connections (pgshield.max_client_connections).
	MaxClientConnections int
	// KeyRevalidation and KeyGrace drive the data key's revalidation.
	KeyRevalidation, KeyGrace time.Duration
	// KernelFirewall mirrors the firewall rules into nftables.
	KernelFirewall bool
	// TrustedProxies may send a PROXY protocol header.
	TrustedProxies         proxyproto.Trusted
	RequireSecureTransport bool
	MinTLS                 uint16
	MaxTLS                 uint16 // 0: no maximum
	// PasswordAuth accepts SCRAM logins; off leaves token principals only.
	PasswordAuth bool
	OIDC         OIDCParams
	// AllowedExtensions may be created by roles that are not superusers.
	AllowedExtensions []string
	// AuditRetention keeps rotated audit files this long; 0 keeps all.
	AuditRetention time.Duration
	// AuditSyslog forwards audit records there; empty: off.
	AuditSyslog string
	// AuditFailClosed refuses new sessions while the audit log fails.
	AuditFailClosed bool
	// PreAuthTimeout bounds the first byte, TLS and the startup packet.
	PreAuthTimeout time.Duration
	Threat         ThreatParams
	Pool           PoolParams
	Values         map[string]string
}

// PoolParams are the pgshield.pool_* parameters (internal/pool).
type PoolParams struct {
	// Mode is "session", "transaction" or "off"; Overrides holds the
	// per-role and per-database modes (ModeFor).
	Mode                  string
	Overrides             PoolOverrides
	Size, MaxTotal        int
	IdleTimeout, Lifetime time.Duration
	WaitTimeout           time.Duration
}

// poolMaxTotal reads a checked pgshield.pool_max_total.
func poolMaxTotal(v string) int {
	if v == "auto" {
		return AutoPoolMaxTotal
	}
	n, _ := strconv.Atoi(v)
	return n
}

// AutoPoolMaxTotal is PoolParams.MaxTotal for pgshield.pool_max_total =
// auto: the gateway follows the backends PostgreSQL leaves it
// (internal/threat.DeriveMaxSessions of its max_connections).
const AutoPoolMaxTotal = -1

// checkPoolMaxTotal takes auto or a count of backends.
func checkPoolMaxTotal(v string) (string, error) {
	if strings.EqualFold(strings.TrimSpace(v), "auto") {
		return "auto", nil
	}
	if _, err := checkPoolSize(v); err != nil {
		return "", errors.New("use auto (follow PostgreSQL's max_connections) or a whole number of backends from 1 to 10000")
	}
	return checkPoolSize(v)
}

func checkPoolSize(v string) (string, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 10000 {
		return "", errors.New("use a whole number of backends from 1 to 10000")
	}
	return strconv.Itoa(n), nil
}

func checkPoolWait(v string) (string, error) {
	d, err := time.ParseDuration(v)
	if err != nil || d < 100*time.Millisecond || d > 10*time.Minute {
		return "", errors.New("use a duration from 100ms to 10m, such as 30s")
	}
	return d.String(), nil
}

// ThreatParams are the pgshield.* parameters of threat protection, as
// internal/threat's Config takes them (0: off).
type ThreatParams struct {
	MaxPreAuth, MaxPreAuthPerSource, PreAuthReserved  int
	KnownTTL                                          time.Duration
	MaxFailures                                       int
	Window, BanTime, MaxBanTime                       time.Duration
	RoleMaxFailures                                   int
	RoleMaxDelay                                      time.Duration
	MaxConnections, PerSource, PerRole, ReservedAdmin int
	// IgnoreSources is pgshield.bruteforce_ignore_sources, checked and
	// canonical (a string keeps ThreatParams comparable).
	IgnoreSources string
}

// OIDCParams configure token authentication.
type OIDCParams struct {
	Issuer, Audience, PrincipalClaim, GroupsClaim, Tenant, CAFile string
	// JWKSRefresh is the least time between unknown-kid refreshes.
	JWKSRefresh time.Duration
	// EnforceExpiry ends sessions when their token expires.
	EnforceExpiry bool
}

var tlsVersions = map[string]uint16{"TLSv1.2": tls.VersionTLS12, "TLSv1.3": tls.VersionTLS13}

// ResolveParams applies defaults to the explicitly set values, validates
// each and the combination, and returns the typed view.
func ResolveParams(set map[string]string) (Params, error) {
	vals := map[string]string{}
	for _, p := range gatewayParams {
		vals[p.Name] = p.Default
	}
	seen := map[string]bool{}
	for k, v := range set {
		p, ok := LookupParam(k)
		if !ok {
			return Params{}, fmt.Errorf("unrecognized parameter %q", k)
		}
		// Names match case-insensitively: two spellings of one parameter
		// would make the result depend on map order.
		if seen[p.Name] {
			return Params{}, fmt.Errorf("parameter %q is set more than once", p.Name)
		}
		seen[p.Name] = true
		nv, err := NormalizeParam(p, v)
		if err != nil {
			return Params{}, err
		}
		vals[p.Name] = nv
	}
	out := Params{Values: vals}
	out.RequireSecureTransport = vals["require_secure_transport"] == "on"
	out.RatePerIP, _ = strconv.Atoi(vals["pgshield.max_connection_rate_per_ip"])
	out.KernelFirewall = vals["pgshield.kernel_firewall"] == "on"
	out.KeyRevalidation, _ = time.ParseDuration(vals["pgshield.key_revalidation_interval"])
	out.KeyGrace, _ = time.ParseDuration(vals["pgshield.key_unavailable_grace"])
	if tp := vals["pgshield.trusted_proxies"]; tp != "" {
		out.TrustedProxies, _ = proxyproto.ParseTrusted(tp)
	}
	out.PasswordAuth = vals["pgshield.password_auth"] == "on"
	out.OIDC = OIDCParams{Issuer: vals["pgshield.oidc_issuer"], Audience: vals["pgshield.oidc_audience"],
		PrincipalClaim: vals["pgshield.oidc_principal_claim"], GroupsClaim: vals["pgshield.oidc_groups_claim"],
		Tenant: vals["pgshield.oidc_tenant"], CAFile: vals["pgshield.oidc_ca_file"],
		EnforceExpiry: vals["pgshield.oidc_enforce_expiry"] == "on"}
	out.OIDC.JWKSRefresh, _ = time.ParseDuration(vals["pgshield.oidc_jwks_refresh_interval"])
	out.AllowedExtensions = splitList(vals["pgshield.allowed_extensions"])
	days, _ := strconv.Atoi(vals["pgshield.audit_retention_days"])
	out.AuditRetention = time.Duration(days) * 24 * time.Hour
	out.AuditSyslog = vals["pgshield.audit_syslog"]
	out.AuditFailClosed = vals["pgshield.audit_fail_closed"] == "on"
	atoi := func(name string) int { n, _ := strconv.Atoi(vals[name]); return n }
	dur := func(name string) time.Duration { d, _ := time.ParseDuration(vals[name]); return d }
	out.PreAuthTimeout = dur("pgshield.preauth_timeout")
	out.MaxClientConnections = atoi("pgshield.max_client_connections")
	out.Threat = ThreatParams{
		MaxPreAuth: atoi("pgshield.max_preauth_connections"), MaxPreAuthPerSource: atoi("pgshield.max_preauth_connections_per_source"),
		PreAuthReserved: atoi("pgshield.preauth_reserved_connections"), KnownTTL: dur("pgshield.known_source_ttl"),
		MaxFailures: atoi("pgshield.bruteforce_max_failures"), Window: dur("pgshield.bruteforce_window"),
		BanTime: dur("pgshield.bruteforce_ban_time"), MaxBanTime: dur("pgshield.bruteforce_max_ban_time"),
		RoleMaxFailures: atoi("pgshield.bruteforce_role_max_failures"), RoleMaxDelay: dur("pgshield.bruteforce_role_max_delay"),
		MaxConnections: maxConnections(vals["pgshield.max_connections"]), PerSource: atoi("pgshield.max_connections_per_source"),
		PerRole: atoi("pgshield.max_connections_per_role"), ReservedAdmin: atoi("pgshield.reserved_admin_connections"),
		IgnoreSources: vals["pgshield.bruteforce_ignore_sources"],
	}
	// Each value is valid alone (parameter set checks one at a time), so
	// combinations that contradict are settled here, not refused: a
	// reserve never takes every slot, a first ban is never longer than
	// the longest.
	if t := &out.Threat; t.MaxPreAuth > 0 && t.PreAuthReserved >= t.MaxPreAuth {
		t.PreAuthReserved = t.MaxPreAuth - 1
	}
	if t := &out.Threat; t.MaxConnections > 0 && t.ReservedAdmin >= t.MaxConnections {
		t.ReservedAdmin = t.MaxConnections - 1
	}
	if t := &out.Threat; t.BanTime > t.MaxBanTime {
		t.MaxBanTime = t.BanTime
	}
	overrides, err := ParsePoolOverrides(vals["pgshield.pool_mode_overrides"])
	if err != nil {
		return Params{}, fmt.Errorf("invalid value for parameter \"pgshield.pool_mode_overrides\": %w", err)
	}
	out.Pool = PoolParams{Mode: vals["pgshield.pool_mode"], Overrides: overrides, Size: atoi("pgshield.pool_size"), MaxTotal: poolMaxTotal(vals["pgshield.pool_max_total"]),
		IdleTimeout: dur("pgshield.pool_idle_timeout"), Lifetime: dur("pgshield.pool_lifetime"), WaitTimeout: dur("pgshield.pool_wait_timeout")}
	out.MinTLS = tlsVersions[vals["ssl_min_protocol_version"]]
	if mx := vals["ssl_max_protocol_version"]; mx != "" {
		out.MaxTLS = tlsVersions[mx]
		if out.MaxTLS < out.MinTLS {
			return Params{}, fmt.Errorf("invalid value for parameter \"ssl_max_protocol_version\": %q is lower than ssl_min_protocol_version %q",
				mx, vals["ssl_min_protocol_version"])
		}
	}
	return out, nil
}

// DefaultAllowedExtensions are the extensions from Debian's postgresql-15,
// postgresql-contrib and postgresql-15-pgaudit that a managed service offers
// its administrator without reservation.
const DefaultAllowedExtensions = "btree_gist,citext,hstore,pg_stat_statements,pg_trgm,pgaudit,pgcrypto,uuid-ossp"

// extensionNameRE matches the names of installed extensions (control file
// names); nothing that could leave the extension directory.
var extensionNameRE = regexp.MustCompile(`^[a-z0-9_][a-z0-9_-]{0,62}$`)

// checkExtensions canonicalizes an extension list: lower case, sorted, no
// repeats. Whether each one is installed is the daemon's to check.
func checkExtensions(v string) (string, error) {
	seen := map[string]bool{}
	var names []string
	for _, n := range strings.Split(v, ",") {
		n = strings.ToLower(strings.TrimSpace(n))
		if n == "" {
			continue
		}
		if !extensionNameRE.MatchString(n) {
			return "", fmt.Errorf("%q is not an extension name", n)
		}
		if !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return strings.Join(names, ","), nil
}

func splitList(v string) []string {
	var out []string
	for _, n := range strings.Split(v, ",") {
		if n = strings.TrimSpace(n); n != "" {
			out = append(out, n)
		}
	}
	return out
}
