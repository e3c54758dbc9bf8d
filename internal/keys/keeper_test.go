package keys

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gocloud.dev/secrets"
	"gocloud.dev/secrets/localsecrets"
)

// testKeyURI returns a base64key:// URI with a fresh random key, and the key.
func testKeyURI(t *testing.T) (string, []byte) {
	t.Helper()
	sk, err := localsecrets.NewRandomKey()
	if err != nil {
		t.Fatalf("NewRandomKey error = %v", err)
	}
	return "base64key://" + base64.URLEncoding.EncodeToString(sk[:]), sk[:]
}

func mustOpen(t *testing.T, uri string) *Keeper {
	t.Helper()
	k, err := Open(context.Background(), uri)
	if err != nil {
		t.Fatalf("Open(%q) error = %v", RedactURI(uri), err)
	}
	t.Cleanup(func() { k.Close() })
	return k
}

// systemKEK creates a system KEK in a fresh 0700 directory and returns its
// path and URI.
func systemKEK(t *testing.T) (path, uri string) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "keys", "server-1.key")
	if err := CreateSystemKEK(path); err != nil {
		t.Fatalf("CreateSystemKEK(%q) error = %v", path, err)
	}
	return path, SystemKeyURI(path)
}

func TestConformanceBase64Key(t *testing.T) {
	uri, _ := testKeyURI(t)
	k := mustOpen(t, uri)
	if got, want := k.URI(), "base64key://REDACTED"; got != want {
		t.Errorf("URI() = %q; want %q", got, want)
	}
	RunConformance(t, k)
}

func TestConformanceSystemKey(t *testing.T) {
	path, uri := systemKEK(t)
	k := mustOpen(t, uri)
	if got, want := k.URI(), "pgshield-local://"+path; got != want {
		t.Errorf("URI() = %q; want %q", got, want)
	}
	RunConformance(t, k)
}

func TestSystemKeyPersists(t *testing.T) {
	ctx := context.Background()
	_, uri := systemKEK(t)
	dk := mustDataKey(t, VolumeKeySize)
	k1 := mustOpen(t, uri)
	wrapped, err := k1.Wrap(ctx, dk)
	if err != nil {
		t.Fatalf("Wrap error = %v", err)
	}
	if err := k1.Close(); err != nil {
		t.Fatalf("Close error = %v", err)
	}
	k2 := mustOpen(t, uri)
	got, err := k2.Unwrap(ctx, wrapped)
	if err != nil {
		t.Fatalf("Unwrap with a reopened system keeper error = %v", err)
	}
	if !bytes.Equal(got, dk) {
		t.Errorf("Unwrap = %x; want %x", got, dk)
	}
}

func TestWrongKeyIsCorruptAndLeaksNothing(t *testing.T) {
	ctx := context.Background()
	uriA, keyA := testKeyURI(t)
	uriB, keyB := testKeyURI(t)
	pathC, uriC := systemKEK(t)
	kekC, err := os.ReadFile(pathC)
	if err != nil {
		t.Fatal(err)
	}
	a, b, c := mustOpen(t, uriA), mustOpen(t, uriB), mustOpen(t, uriC)

	dk := mustDataKey(t, VolumeKeySize)
	wrapped, err := a.Wrap(ctx, dk)
	if err != nil {
		t.Fatalf("Wrap error = %v", err)
	}
	for name, k := range map[string]*Keeper{"base64key": b, "pgshield-local": c} {
		got, err := k.Unwrap(ctx, wrapped)
		if err == nil {
			t.Fatalf("%s: Unwrap with the wrong key error = nil (plaintext %x); want an error", name, got)
		}
		if kind := ErrorKind(err); kind != KindCorrupt {
			t.Errorf("%s: ErrorKind(%v) = %v; want %v", name, err, kind, KindCorrupt)
		}
		assertNoSecrets(t, err, keyA, keyB, kekC, dk, wrapped)
		for _, s := range []string{uriA, uriB, strings.TrimPrefix(uriA, "base64key://")} {
			if strings.Contains(err.Error(), s) {
				t.Errorf("%s: Unwrap error %q holds the key URI", name, err)
			}
		}
	}
}

func TestOpenRejects(t *testing.T) {
	ctx := context.Background()
	_, key := testKeyURI(t)
	secret := base64.URLEncoding.EncodeToString(key)
	for _, tc := range []struct {
		desc string
		uri  string
	}{
		{"empty", ""},
		{"no scheme", "/etc/pgshield/keys/x.key"},
		{"unknown scheme quoting a key", "base64keys://" + secret},
		{"file scheme", "file:///etc/pgshield/keys/x.key"},
		{"malformed", "base64key://" + secret + "%zz"},
		{"random base64key", "base64key://"},
		{"short base64key", "base64key://" + base64.URLEncoding.EncodeToString(key[:16])},
		{"base64key with query", "base64key://" + secret + "?token=" + secret},
		{"system key with host", "pgshield-local://example.com/etc/pgshield/keys/x.key"},
		{"system key relative", "pgshield-local:x.key"},
		{"system key with query", "pgshield-local:///etc/x.key?token=" + secret},
		{"system key not clean", "pgshield-local:///tmp/../etc/x.key"},
		{"system key missing", "pgshield-local://" + filepath.Join(t.TempDir(), "missing.key")},
		{"hashivault with token in query", "hashivault://mykey?token=" + secret},
		{"awskms with unknown parameter", "awskms://alias/pgshield?region=us-east-1&secret_access_key=" + secret},
	} {
		k, err := Open(ctx, tc.uri)
		if err == nil {
			k.Close()
			t.Errorf("%s: Open(%q) error = nil; want an error", tc.desc, RedactURI(tc.uri))
			continue
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("%s: Open error %q holds the secret", tc.desc, err)
		}
		assertNoSecrets(t, err, key)
	}
}

func TestSchemesRegistered(t *testing.T) {
	mux := secrets.DefaultURLMux()
	for _, s := range []string{SchemeAWSKMS, SchemeAzureKeyVault, SchemeGCPKMS, SchemeHashiVault, SchemeBase64Key} {
		if !mux.ValidKeeperScheme(s) {
			t.Errorf("scheme %q not registered on secrets.DefaultURLMux; want its driver imported", s)
		}
	}
}

func TestClose(t *testing.T) {
	ctx := context.Background()
	uri, _ := testKeyURI(t)
	k, err := Open(ctx, uri)
	if err != nil {
		t.Fatalf("Open error = %v", err)
	}
	wrapped, err := k.Wrap(ctx, mustDataKey(t, 32))
	if err != nil {
		t.Fatalf("Wrap error = %v", err)
	}
	if err := k.Close(); err != nil {
		t.Fatalf("Close error = %v", err)
	}
	if _, err := k.Wrap(ctx, mustDataKey(t, 32)); !errors.Is(err, ErrClosed) || ErrorKind(err) != KindOther {
		t.Errorf("Wrap after Close error = %v (kind %v); want ErrClosed, KindOther", err, ErrorKind(err))
	}
	if _, err := k.Unwrap(ctx, wrapped); !errors.Is(err, ErrClosed) || ErrorKind(err) != KindOther {
		t.Errorf("Unwrap after Close error = %v (kind %v); want ErrClosed, KindOther", err, ErrorKind(err))
	}
	if err := k.Close(); !errors.Is(err, ErrClosed) {
		t.Errorf("second Close error = %v; want ErrClosed", err)
	}
}

func TestUnwrapKeyValidates(t *testing.T) {
	uri, _ := testKeyURI(t)
	k := mustOpen(t, uri)
	ctx := context.Background()
	if _, err := k.UnwrapKey(ctx, nil); err == nil {
		t.Errorf("UnwrapKey(nil) error = nil; want an error")
	}
	if _, err := k.UnwrapKey(ctx, &WrappedKey{Version: 2}); err == nil {
		t.Errorf("UnwrapKey(version 2) error = nil; want an error")
	}
	if _, err := k.WrapKey(ctx, "wal", mustDataKey(t, 32)); err == nil {
		t.Errorf("WrapKey(purpose %q) error = nil; want an error", "wal")
	}
}
