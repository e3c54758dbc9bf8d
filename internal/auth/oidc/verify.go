// Package oidc verifies OIDC access tokens presented as passwords (the
// Microsoft Entra ID model: the token is the password) for token principals.
//
// Discovery and the issuer, audience and signature checks are go-oidc's; the
// signing keys come from a key set that refreshes on an unknown key ID at
// most once per interval, and the checks go-oidc leaves loose (expiry with
// no skew, nbf with five minutes, ID tokens accepted) are done here.
package oidc

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"
)

// MaxTokenLen bounds a token; anything longer is refused before parsing.
const MaxTokenLen = 16 << 10

// Skew is the clock difference tolerated on exp, nbf and iat.
const Skew = 60 * time.Second

// Algorithms are the only signature algorithms accepted: no "none", no
// HMAC (whose key a client could guess from a public key).
var Algorithms = []string{gooidc.RS256, gooidc.PS256, gooidc.ES256}

// Config configures a Verifier.
type Config struct {
	// Issuer is the issuer URL; tokens' iss must equal it.
	Issuer string
	// Audience must appear in the token's aud.
	Audience string
	// PrincipalClaim names the claim with the principal's object ID.
	PrincipalClaim string
	// GroupsClaim names the claim listing group object IDs.
	GroupsClaim string
	// Tenant, when set, must equal the token's tid.
	Tenant string
	// RefreshInterval is the least time between two key fetches caused by
	// an unknown key ID.
	RefreshInterval time.Duration
	// Client fetches discovery and keys; NewHTTPClient makes a bounded one.
	Client *http.Client
	Now    func() time.Time
}

// CheckAndSetDefaults validates c and fills in defaults.
func (c *Config) CheckAndSetDefaults() error {
	switch {
	case c.Issuer == "":
		return errors.New("pgshield.oidc_issuer is not set")
	case c.Audience == "":
		return errors.New("pgshield.oidc_audience is not set")
	case c.PrincipalClaim == "":
		return errors.New("pgshield.oidc_principal_claim is not set")
	}
	if c.GroupsClaim == "" {
		c.GroupsClaim = "groups"
	}
	if c.RefreshInterval <= 0 {
		c.RefreshInterval = time.Minute
	}
	if c.Client == nil {
		c.Client = &http.Client{Timeout: 10 * time.Second}
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// Identity is what a valid token proves.
type Identity struct {
	// Principal is the principal claim's value (an object ID).
	Principal string
	Groups    []string
	Subject   string
	Expiry    time.Time
}

// InGroup reports whether the token lists the group object ID.
func (id Identity) InGroup(oid string) bool {
	for _, g := range id.Groups {
		if g == oid {
			return true
		}
	}
	return false
}

// Error is a refused token. Reason is for the audit record only; it never
// holds any part of the token.
type Error struct {
	Reason string
	// Unavailable marks failures of the issuer, not of the token.
	Unavailable bool
}

func (e *Error) Error() string { return "token refused: " + e.Reason }

func refuse(format string, args ...any) error {
	return &Error{Reason: fmt.Sprintf(format, args...)}
}

// Verifier checks tokens of one issuer. Discovery is lazy and retried, so
// an issuer that is down when pgshield starts does not need a restart.
type Verifier struct {
	cfg Config

	mu       sync.Mutex
	verifier *gooidc.IDTokenVerifier
	lastTry  time.Time
	keys     *keySet
}

// discoveryRetry is the least time between two discovery attempts.
const discoveryRetry = 5 * time.Second

// NewVerifier makes a Verifier; it does not contact the issuer yet.
func NewVerifier(cfg Config) (*Verifier, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, err
	}
	return &Verifier{cfg: cfg}, nil
}

func (v *Verifier) discovered(ctx context.Context) (*gooidc.IDTokenVerifier, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.verifier != nil {
		return v.verifier, nil
	}
	now := v.cfg.Now()
	if !v.lastTry.IsZero() && now.Sub(v.lastTry) < discoveryRetry {
		return nil, &Error{Reason: "issuer discovery failed recently; not retried yet", Unavailable: true}
	}
	v.lastTry = now
	dctx, cancel := context.WithTimeout(gooidc.ClientContext(ctx, v.cfg.Client), 10*time.Second)
	defer cancel()
	p, err := gooidc.NewProvider(dctx, v.cfg.Issuer)
	if err != nil {
		return nil, &Error{Reason: fmt.Sprintf("issuer discovery: %v", err), Unavailable: true}
	}
	var meta struct {
		JWKSURI string `json:"jwks_uri"`
	}
	if err := p.Claims(&meta); err != nil || !strings.HasPrefix(meta.JWKSURI, "https://") {
		return nil, &Error{Reason: "issuer discovery: no https jwks_uri", Unavailable: true}
	}
	v.keys = newKeySet(meta.JWKSURI, v.cfg.Client, v.cfg.RefreshInterval, v.cfg.Now)
	v.verifier = gooidc.NewVerifier(v.cfg.Issuer, v.keys, &gooidc.Config{
		ClientID:             v.cfg.Audience,
		SupportedSigningAlgs: Algorithms,
		// Expiry and nbf are checked below with a tighter skew.
		SkipExpiryCheck: true,
	})
	return v.verifier, nil
}

type header struct {
	Alg string `json:"alg"`
	Typ string `json:"typ"`
}

// Verify checks raw and returns the identity it proves.
func (v *Verifier) Verify(ctx context.Context, raw string) (Identity, error) {
	if len(raw) > MaxTokenLen {
		return Identity{}, refuse("token longer than %d bytes", MaxTokenLen)
	}
	h, err := parseHeader(raw)
	if err != nil {
		return Identity{}, err
	}
	if !allowedAlg(h.Alg) {
		return Identity{}, refuse("signature algorithm %q is not allowed", printable(h.Alg))
	}
	// RFC 9068 access tokens say at+jwt; Entra ID's say JWT. Anything else
	// (e.g. an explicitly typed ID or logout token) is not an access token.
	switch strings.ToLower(h.Typ) {
	case "", "jwt", "at+jwt", "application/at+jwt":
	default:
		return Identity{}, refuse("token type %q is not an access token", printable(h.Typ))
	}
	iv, err := v.discovered(ctx)
	if err != nil {
		return Identity{}, err
	}
	var out sigOutcome
	tok, err := iv.Verify(withOutcome(ctx, &out), raw)
	if err != nil {
		if out.err != nil {
			return Identity{}, out.err
		}
		if out.payload != nil {
			return Identity{}, v.claimsReason(out.payload)
		}
		return Identity{}, refuse("malformed token")
	}
	var claims map[string]json.RawMessage
	if err := tok.Claims(&claims); err != nil {
		return Identity{}, refuse("malformed claims")
	}
	return v.checkClaims(claims)
}

// claimsReason explains why go-oidc refused a token whose signature was
// good: its errors are plain strings, so the reason is derived again here.
func (v *Verifier) claimsReason(payload []byte) error {
	var c struct {
		Iss string          `json:"iss"`
		Aud json.RawMessage `json:"aud"`
	}
	if err := json.Unmarshal(payload, &c); err != nil {
		return refuse("malformed claims")
	}
	if c.Iss != v.cfg.Issuer {
		return refuse("issuer %q is not the configured issuer", printable(c.Iss))
	}
	return refuse("audience does not include %q", v.cfg.Audience)
}

func (v *Verifier) checkClaims(c map[string]json.RawMessage) (Identity, error) {
	now := v.cfg.Now()
	exp, ok := numericDate(c["exp"])
	if !ok {
		return Identity{}, refuse("token has no valid exp")
	}
	if now.After(exp.Add(Skew)) {
		return Identity{}, refuse("token expired at %s", exp.UTC().Format(time.RFC3339))
	}
	if raw, present := c["nbf"]; present {
		nbf, ok := numericDate(raw)
		if !ok {
			return Identity{}, refuse("token has an invalid nbf")
		}
		if nbf.After(now.Add(Skew)) {
			return Identity{}, refuse("token not valid before %s", nbf.UTC().Format(time.RFC3339))
		}
	}
	if raw, present := c["iat"]; present {
		if iat, ok := numericDate(raw); ok && iat.After(now.Add(Skew)) {
			return Identity{}, refuse("token issued in the future")
		}
	}
	// Claims only ID tokens carry (OIDC Core 2, 3.1.3.6, 3.3.2.11) and
	// Keycloak's explicit typ claim.
	for _, k := range []string{"nonce", "at_hash", "c_hash"} {
		if _, present := c[k]; present {
			return Identity{}, refuse("ID token (has %s), not an access token", k)
		}
	}
	if s := stringClaim(c["typ"]); strings.EqualFold(s, "ID") {
		return Identity{}, refuse("ID token (typ claim), not an access token")
	}
	if v.cfg.Tenant != "" {
		if tid := stringClaim(c["tid"]); tid != v.cfg.Tenant {
			return Identity{}, refuse("tenant %q is not the configured tenant", printable(tid))
		}
	}
	id := Identity{Principal: stringClaim(c[v.cfg.PrincipalClaim]), Subject: stringClaim(c["sub"]), Expiry: exp}
	if id.Principal == "" {
		return Identity{}, refuse("token has no %s claim", v.cfg.PrincipalClaim)
	}
	if raw, present := c[v.cfg.GroupsClaim]; present {
		if err := json.Unmarshal(raw, &id.Groups); err != nil {
			return Identity{}, refuse("%s claim is not a list of strings", v.cfg.GroupsClaim)
		}
	}
	return id, nil
}

func parseHeader(raw string) (header, error) {
	var h header
	dot := strings.IndexByte(raw, '.')
	if dot <= 0 || strings.Count(raw, ".") != 2 {
		return h, refuse("not a compact JWS")
	}
	b, err := base64.RawURLEncoding.DecodeString(raw[:dot])
	if err != nil || json.Unmarshal(b, &h) != nil {
		return h, refuse("malformed token header")
	}
	return h, nil
}

func allowedAlg(alg string) bool {
	for _, a := range Algorithms {
		if a == alg {
			return true
		}
	}
	return false
}

func numericDate(raw json.RawMessage) (time.Time, bool) {
	var f float64
	if len(raw) == 0 || json.Unmarshal(raw, &f) != nil || f <= 0 || f > 1e11 {
		return time.Time{}, false
	}
	return time.Unix(int64(f), 0), true
}

func stringClaim(raw json.RawMessage) string {
	var s string
	if len(raw) == 0 || json.Unmarshal(raw, &s) != nil {
		return ""
	}
	return s
}

// printable cuts a claim value for an audit reason: short, no control
// characters.
func printable(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s)
}

// keySetAlgs is the allow-list in go-jose's type.
func keySetAlgs() []jose.SignatureAlgorithm {
	out := make([]jose.SignatureAlgorithm, len(Algorithms))
	for i, a := range Algorithms {
		out[i] = jose.SignatureAlgorithm(a)
	}
	return out
}
