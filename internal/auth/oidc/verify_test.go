package oidc_test

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/pgshield/pgshield/internal/auth/oidc"
	"github.com/pgshield/pgshield/internal/testutil/oidcissuer"
)

const aud = "api://pgshield-test"

func newVerifier(t *testing.T, is *oidcissuer.Issuer, mod func(*oidc.Config)) *oidc.Verifier {
	t.Helper()
	cfg := oidc.Config{Issuer: is.URL, Audience: aud, PrincipalClaim: "oid", GroupsClaim: "groups",
		RefreshInterval: time.Hour, Client: is.Client()}
	if mod != nil {
		mod(&cfg)
	}
	v, err := oidc.NewVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func sign(t *testing.T, k oidcissuer.Key, typ string, c oidcissuer.Claims) string {
	t.Helper()
	tok, err := oidcissuer.Sign(k, typ, c)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func b64(v any) string {
	b, _ := json.Marshal(v)
	return base64.RawURLEncoding.EncodeToString(b)
}

func TestVerifyAccepts(t *testing.T) {
	is := oidcissuer.Start(t)
	v := newVerifier(t, is, nil)
	for _, alg := range []jose.SignatureAlgorithm{jose.RS256, jose.PS256, jose.ES256} {
		for _, typ := range []string{"", "JWT", "at+jwt"} {
			c := is.Access(aud, "oid-alice", time.Hour)
			c["groups"] = []string{"g1", "g2"}
			id, err := v.Verify(context.Background(), sign(t, is.Key(alg), typ, c))
			if err != nil {
				t.Fatalf("%s typ %q: Verify() error = %v; want nil", alg, typ, err)
			}
			if id.Principal != "oid-alice" || !id.InGroup("g2") || id.InGroup("g3") || id.Subject != "sub-oid-alice" {
				t.Errorf("%s: identity = %+v; want oid-alice in g1, g2", alg, id)
			}
		}
	}
	// A list audience holding ours, and a token within the allowed skew.
	c := is.Access(aud, "oid-alice", time.Hour)
	c["aud"] = []string{"other", aud}
	c["exp"] = time.Now().Add(-30 * time.Second).Unix()
	c["nbf"] = time.Now().Add(30 * time.Second).Unix()
	if _, err := v.Verify(context.Background(), sign(t, is.Key(jose.RS256), "", c)); err != nil {
		t.Errorf("Verify(aud list, 30 s skew) error = %v; want nil", err)
	}
}

func TestVerifyRefuses(t *testing.T) {
	is := oidcissuer.Start(t)
	v := newVerifier(t, is, func(c *oidc.Config) { c.Tenant = "tenant-1" })
	rsaKey := is.Key(jose.RS256)
	good := func() oidcissuer.Claims {
		c := is.Access(aud, "oid-alice", time.Hour)
		c["tid"] = "tenant-1"
		return c
	}
	rogue, err := is.NewKey(jose.RS256) // never published
	if err != nil {
		t.Fatal(err)
	}
	pubDER, _ := x509.MarshalPKIXPublicKey(rsaKey.Priv.Public())
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	hs, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: pubPEM},
		(&jose.SignerOptions{}).WithHeader("kid", rsaKey.ID))
	payload, _ := json.Marshal(good())
	hsObj, _ := hs.Sign(payload)
	hsTok, _ := hsObj.CompactSerialize()
	goodTok := sign(t, rsaKey, "", good())

	with := func(k string, val any) oidcissuer.Claims {
		c := good()
		if val == nil {
			delete(c, k)
		} else {
			c[k] = val
		}
		return c
	}
	big := good()
	big["pad"] = strings.Repeat("x", 65<<10)

	tests := []struct {
		name, token, reason string
	}{
		{"alg none", b64(map[string]string{"alg": "none", "typ": "JWT"}) + "." + b64(good()) + ".", `algorithm "none"`},
		{"HS256 keyed with the RSA public key", hsTok, `algorithm "HS256"`},
		{"unknown kid", sign(t, rogue, "", good()), "no signing key"},
		{"published kid, wrong key", sign(t, oidcissuer.Key{ID: rsaKey.ID, Alg: jose.RS256, Priv: rogue.Priv}, "", good()), "bad signature"},
		{"expired", sign(t, rsaKey, "", with("exp", time.Now().Add(-2*time.Minute).Unix())), "expired"},
		{"no exp", sign(t, rsaKey, "", with("exp", nil)), "no valid exp"},
		{"nbf in the future", sign(t, rsaKey, "", with("nbf", time.Now().Add(5*time.Minute).Unix())), "not valid before"},
		{"wrong iss", sign(t, rsaKey, "", with("iss", "https://evil.example")), "not the configured issuer"},
		{"wrong aud", sign(t, rsaKey, "", with("aud", "api://other")), "audience"},
		{"wrong tenant", sign(t, rsaKey, "", with("tid", "tenant-2")), "tenant"},
		{"no principal claim", sign(t, rsaKey, "", with("oid", nil)), "no oid claim"},
		{"groups not a list", sign(t, rsaKey, "", with("groups", "g1")), "not a list"},
		{"ID token (nonce)", sign(t, rsaKey, "", with("nonce", "n-0S6_WzA2Mj")), "ID token"},
		{"ID token (at_hash)", sign(t, rsaKey, "", with("at_hash", "77QmUPtjPfzWtF2AnpK9RQ")), "ID token"},
		{"ID token (typ claim)", sign(t, rsaKey, "", with("typ", "ID")), "ID token"},
		{"logout token type", sign(t, rsaKey, "logout+jwt", good()), "not an access token"},
		{"truncated signature", goodTok[:len(goodTok)-10], "bad signature"},
		{"signature cut off", goodTok[:strings.LastIndexByte(goodTok, '.')+1], ""},
		{"65 KiB token", sign(t, rsaKey, "", big), "longer than"},
		{"not a JWT", "correct horse battery staple", "not a compact JWS"},
		{"JWE-like five parts", "a.b.c.d.e", "not a compact JWS"},
		{"garbage header", "!!!.e30.sig", "malformed token header"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := v.Verify(context.Background(), tt.token)
			var oe *oidc.Error
			if !errors.As(err, &oe) {
				t.Fatalf("Verify() error = %v; want an *oidc.Error", err)
			}
			if !strings.Contains(oe.Reason, tt.reason) {
				t.Errorf("Verify() reason = %q; want it to contain %q", oe.Reason, tt.reason)
			}
			if oe.Unavailable {
				t.Errorf("Verify() marked the issuer unavailable for a bad token: %q", oe.Reason)
			}
			// The reason goes to the audit log: never any part of the token.
			if sigPart := tt.token[strings.LastIndexByte(tt.token, '.')+1:]; len(sigPart) > 8 && strings.Contains(oe.Reason, sigPart) {
				t.Errorf("reason %q contains the token's signature", oe.Reason)
			}
		})
	}
	if _, err := v.Verify(context.Background(), goodTok); err != nil {
		t.Errorf("Verify(good token) error = %v; want nil (the cases above must fail for their own reason)", err)
	}
}

// A rotation at the issuer is picked up on the first unknown kid, and made-up
// kids cost at most one fetch per interval.
func TestKeyRotationAndRefreshLimit(t *testing.T) {
	is := oidcissuer.Start(t)
	now := time.Now()
	clock := func() time.Time { return now }
	v := newVerifier(t, is, func(c *oidc.Config) { c.RefreshInterval = time.Minute; c.Now = clock })
	ctx := context.Background()
	if _, err := v.Verify(ctx, sign(t, is.Key(jose.RS256), "", is.Access(aud, "o", time.Hour))); err != nil {
		t.Fatal(err)
	}
	if n := is.JWKSFetches.Load(); n != 1 {
		t.Fatalf("key set fetched %d times after the first token; want 1", n)
	}
	// Rotation just after the first fetch: the new kid waits for the
	// interval (the limit is real), then is fetched once.
	next, err := is.NewKey(jose.ES256)
	if err != nil {
		t.Fatal(err)
	}
	is.Replace(next)
	tok := sign(t, next, "", is.Access(aud, "o", 2*time.Hour))
	for i := 0; i < 5; i++ {
		if _, err := v.Verify(ctx, tok); err == nil {
			t.Fatalf("token of the rotated key accepted before any refetch")
		}
	}
	if n := is.JWKSFetches.Load(); n != 1 {
		t.Fatalf("key set fetched %d times within the interval; want 1", n)
	}
	now = now.Add(61 * time.Second)
	if _, err := v.Verify(ctx, tok); err != nil {
		t.Fatalf("Verify(rotated key after the interval) error = %v; want nil", err)
	}
	if n := is.JWKSFetches.Load(); n != 2 {
		t.Fatalf("key set fetched %d times; want 2", n)
	}
	// The old key is gone from the issuer, so from pgshield too.
	old := sign(t, oidcissuer.Key{ID: "key-1", Alg: jose.ES256, Priv: next.Priv}, "", is.Access(aud, "o", time.Hour))
	if _, err := v.Verify(ctx, old); err == nil {
		t.Errorf("token signed under a retired kid accepted")
	}
}

func TestIssuerDownThenUp(t *testing.T) {
	is := oidcissuer.Start(t)
	url := is.URL
	is.Close()
	now := time.Now()
	v, err := oidc.NewVerifier(oidc.Config{Issuer: url, Audience: aud, PrincipalClaim: "oid",
		Client: is.Client(), Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	_, err = v.Verify(context.Background(), "e30.e30.e30")
	var oe *oidc.Error
	if errors.As(err, &oe) && !strings.Contains(oe.Reason, "algorithm") {
		t.Fatalf("Verify() = %v; want the header refused before the issuer is contacted", err)
	}
	tok := "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"
	_, err = v.Verify(context.Background(), tok)
	if !errors.As(err, &oe) || !oe.Unavailable {
		t.Fatalf("Verify() with the issuer down = %v; want an Unavailable error", err)
	}
}

func TestConfigRequired(t *testing.T) {
	for _, c := range []oidc.Config{{}, {Issuer: "https://x"}, {Issuer: "https://x", Audience: "a"}} {
		if _, err := oidc.NewVerifier(c); err == nil {
			t.Errorf("NewVerifier(%+v) error = nil; want one naming the missing parameter", c)
		}
	}
}

func FuzzVerify(f *testing.F) {
	is, err := oidcissuer.New()
	if err != nil {
		f.Fatal(err)
	}
	defer is.Close()
	v, err := oidc.NewVerifier(oidc.Config{Issuer: is.URL, Audience: aud, PrincipalClaim: "oid",
		RefreshInterval: time.Hour, Client: is.Client()})
	if err != nil {
		f.Fatal(err)
	}
	tok, err := oidcissuer.Sign(is.Key(jose.ES256), "", is.Access(aud, "o", time.Hour))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(tok)
	f.Add("e30.e30.")
	f.Add(b64(map[string]any{"alg": "RS256", "kid": 7}) + ".e30.AA")
	f.Fuzz(func(t *testing.T, raw string) {
		id, err := v.Verify(context.Background(), raw)
		if err == nil && raw != tok && id.Principal == "" {
			t.Fatalf("accepted a token with no principal")
		}
	})
}
