package oidc

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// maxJWKSLen bounds the issuer's key set document.
const maxJWKSLen = 1 << 20

// keySet holds the issuer's signing keys. A token with a key ID not in the
// cache triggers one refetch, but no more often than every interval: an
// attacker sending made-up key IDs cannot make pgshield hammer the issuer.
// go-oidc's RemoteKeySet refetches on every miss, hence this one.
type keySet struct {
	uri      string
	client   *http.Client
	interval time.Duration
	now      func() time.Time

	fetchMu sync.Mutex // one fetch at a time
	mu      sync.Mutex
	keys    []jose.JSONWebKey
	fetched time.Time // zero: never
}

func newKeySet(uri string, client *http.Client, interval time.Duration, now func() time.Time) *keySet {
	return &keySet{uri: uri, client: client, interval: interval, now: now}
}

type outcomeKey struct{}

// sigOutcome carries what the key set learnt out of go-oidc's Verify, whose
// errors are flattened to strings.
type sigOutcome struct {
	err     error
	payload []byte
}

func withOutcome(ctx context.Context, o *sigOutcome) context.Context {
	return context.WithValue(ctx, outcomeKey{}, o)
}

// VerifySignature implements go-oidc's KeySet.
func (s *keySet) VerifySignature(ctx context.Context, raw string) ([]byte, error) {
	payload, err := s.verify(ctx, raw)
	if o, ok := ctx.Value(outcomeKey{}).(*sigOutcome); ok {
		o.err, o.payload = err, payload
	}
	return payload, err
}

func (s *keySet) verify(ctx context.Context, raw string) ([]byte, error) {
	jws, err := jose.ParseSigned(raw, keySetAlgs())
	if err != nil {
		return nil, refuse("malformed token: %v", err)
	}
	if len(jws.Signatures) != 1 {
		return nil, refuse("token must carry exactly one signature")
	}
	kid := jws.Signatures[0].Header.KeyID
	s.mu.Lock()
	keys, fetched := s.keys, s.fetched
	s.mu.Unlock()
	if fetched.IsZero() || (!hasKey(keys, kid) && s.now().Sub(fetched) >= s.interval) {
		if keys, err = s.refresh(ctx, fetched); err != nil {
			return nil, err
		}
	}
	found := false
	for i := range keys {
		k := &keys[i]
		if kid != "" && k.KeyID != kid {
			continue
		}
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		if k.Algorithm != "" && k.Algorithm != jws.Signatures[0].Header.Algorithm {
			continue
		}
		found = true
		if payload, err := jws.Verify(k); err == nil {
			return payload, nil
		}
	}
	if !found {
		return nil, refuse("no signing key of the issuer has key ID %q", printable(kid))
	}
	return nil, refuse("bad signature")
}

func hasKey(keys []jose.JSONWebKey, kid string) bool {
	for _, k := range keys {
		if k.KeyID == kid {
			return true
		}
	}
	return false
}

// refresh fetches the key set unless another caller already did since
// seen; it returns the keys now cached.
func (s *keySet) refresh(ctx context.Context, seen time.Time) ([]jose.JSONWebKey, error) {
	s.fetchMu.Lock()
	defer s.fetchMu.Unlock()
	s.mu.Lock()
	if !s.fetched.Equal(seen) {
		keys := s.keys
		s.mu.Unlock()
		return keys, nil
	}
	s.mu.Unlock()
	keys, err := s.fetch(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	// A failed fetch counts too: the interval also spaces out retries
	// against an issuer that is down.
	s.fetched = s.now()
	if err != nil {
		if s.keys == nil {
			return nil, err
		}
		return s.keys, nil
	}
	s.keys = keys
	return keys, nil
}

func (s *keySet) fetch(ctx context.Context) ([]jose.JSONWebKey, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.uri, nil)
	if err != nil {
		return nil, &Error{Reason: "bad jwks_uri", Unavailable: true}
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, &Error{Reason: fmt.Sprintf("fetching the issuer's keys: %v", err), Unavailable: true}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, &Error{Reason: fmt.Sprintf("fetching the issuer's keys: HTTP %d", resp.StatusCode), Unavailable: true}
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSLen+1))
	if err != nil {
		return nil, &Error{Reason: fmt.Sprintf("fetching the issuer's keys: %v", err), Unavailable: true}
	}
	if len(body) > maxJWKSLen {
		return nil, &Error{Reason: "the issuer's key set is too large", Unavailable: true}
	}
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, &Error{Reason: "the issuer's key set is malformed", Unavailable: true}
	}
	var keys []jose.JSONWebKey
	for _, raw := range set.Keys {
		// Keys of types go-jose does not know are skipped, not fatal.
		var k jose.JSONWebKey
		if json.Unmarshal(raw, &k) != nil {
			continue
		}
		// Only public keys; a symmetric key in a JWKS would re-open the
		// HMAC confusion the algorithm allow-list closes.
		if k.Valid() && k.IsPublic() {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil, &Error{Reason: "the issuer publishes no usable signing key", Unavailable: true}
	}
	return keys, nil
}
