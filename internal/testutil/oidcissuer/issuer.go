// Package oidcissuer is an OIDC issuer for tests: discovery document and
// JWKS over HTTPS on loopback, real RSA and ECDSA keys, real signed tokens
// (go-jose), and key rotation.
package oidcissuer

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Key is one signing key of the issuer.
type Key struct {
	ID   string
	Alg  jose.SignatureAlgorithm
	Priv crypto.Signer
}

// Issuer serves discovery and keys; it is stopped with Close.
type Issuer struct {
	URL    string
	srv    *httptest.Server
	mu     sync.Mutex
	keys   []Key // published
	serial int
	// JWKSFetches counts key set requests.
	JWKSFetches atomic.Int64
}

// New starts an issuer with one RSA key (RS256/PS256) and one P-256 key
// (ES256) published.
func New() (*Issuer, error) {
	is := &Issuer{}
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer":                                is.URL,
			"jwks_uri":                              is.URL + "/keys",
			"authorization_endpoint":                is.URL + "/authorize",
			"token_endpoint":                        is.URL + "/token",
			"response_types_supported":              []string{"code"},
			"subject_types_supported":               []string{"public"},
			"id_token_signing_alg_values_supported": []string{"RS256", "PS256", "ES256"},
		})
	})
	mux.HandleFunc("/keys", func(w http.ResponseWriter, r *http.Request) {
		is.JWKSFetches.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(is.JWKS())
	})
	is.srv = httptest.NewTLSServer(mux)
	is.URL = is.srv.URL
	for _, alg := range []jose.SignatureAlgorithm{jose.RS256, jose.ES256} {
		k, err := is.NewKey(alg)
		if err != nil {
			is.Close()
			return nil, err
		}
		is.Publish(k)
	}
	return is, nil
}

// Start is New for a test: it fails the test on error and stops the issuer
// when the test ends.
func Start(tb testing.TB) *Issuer {
	tb.Helper()
	is, err := New()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(is.Close)
	return is
}

// Close stops the server.
func (is *Issuer) Close() { is.srv.Close() }

// Client trusts the issuer's certificate.
func (is *Issuer) Client() *http.Client { return is.srv.Client() }

// WriteCA writes the issuer's certificate as a PEM file in dir and returns
// its path, for pgshield.oidc_ca_file.
func (is *Issuer) WriteCA(dir string) (string, error) {
	p := filepath.Join(dir, "oidc-ca.pem")
	b := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: is.srv.Certificate().Raw})
	return p, os.WriteFile(p, b, 0o644)
}

// NewKey makes a key that is not published yet. alg RS256 and PS256 make
// RSA 2048 keys, ES256 a P-256 key.
func (is *Issuer) NewKey(alg jose.SignatureAlgorithm) (Key, error) {
	is.mu.Lock()
	is.serial++
	id := fmt.Sprintf("key-%d", is.serial)
	is.mu.Unlock()
	var priv crypto.Signer
	var err error
	switch alg {
	case jose.RS256, jose.PS256:
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	case jose.ES256:
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	default:
		return Key{}, fmt.Errorf("unsupported algorithm %s", alg)
	}
	if err != nil {
		return Key{}, err
	}
	return Key{ID: id, Alg: alg, Priv: priv}, nil
}

// Publish adds k to the key set.
func (is *Issuer) Publish(k Key) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.keys = append(is.keys, k)
}

// Replace publishes exactly keys: a rotation.
func (is *Issuer) Replace(keys ...Key) {
	is.mu.Lock()
	defer is.mu.Unlock()
	is.keys = append([]Key(nil), keys...)
}

// Keys returns the published keys.
func (is *Issuer) Keys() []Key {
	is.mu.Lock()
	defer is.mu.Unlock()
	return append([]Key(nil), is.keys...)
}

// Key returns the first published key for alg (RSA keys serve RS256 and
// PS256).
func (is *Issuer) Key(alg jose.SignatureAlgorithm) Key {
	for _, k := range is.Keys() {
		_, rsaKey := k.Priv.(*rsa.PrivateKey)
		if k.Alg == alg || (rsaKey && (alg == jose.RS256 || alg == jose.PS256)) {
			k.Alg = alg
			return k
		}
	}
	return Key{}
}

// JWKS is the published key set.
func (is *Issuer) JWKS() jose.JSONWebKeySet {
	var set jose.JSONWebKeySet
	for _, k := range is.Keys() {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.Priv.Public(), KeyID: k.ID, Use: "sig"})
	}
	return set
}

// Claims are a token's claims; Access fills in the usual access token ones.
type Claims map[string]any

// Access returns claims for an access token of the issuer for audience and
// object ID oid, valid for ttl from now.
func (is *Issuer) Access(audience, oid string, ttl time.Duration) Claims {
	now := time.Now()
	return Claims{
		"iss": is.URL, "aud": audience, "sub": "sub-" + oid, "oid": oid,
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(ttl).Unix(),
		"scp": "user_impersonation", "ver": "2.0",
	}
}

// Sign signs claims with k (its Alg), with header typ if not empty.
func Sign(k Key, typ string, c Claims) (string, error) {
	opts := (&jose.SignerOptions{}).WithHeader(jose.HeaderKey("kid"), k.ID)
	if typ != "" {
		opts = opts.WithType(jose.ContentType(typ))
	}
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: k.Alg, Key: k.Priv}, opts)
	if err != nil {
		return "", err
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	obj, err := sig.Sign(payload)
	if err != nil {
		return "", err
	}
	tok, err := obj.CompactSerialize()
	if err == nil {
		observe(tok)
	}
	return tok, err
}
