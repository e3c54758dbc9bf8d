package keys

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// RunConformance checks the behaviour every Keeper must have, whatever its
// driver: round trips, randomized and opaque wrapping, KindCorrupt for a
// damaged wrapped key, no key material in errors, a redacted URI, the
// on-disk envelope, and concurrent use. It does not close k.
func RunConformance(t *testing.T, k *Keeper) {
	t.Helper()
	ctx := context.Background()

	t.Run("RoundTrip", func(t *testing.T) {
		for _, size := range []int{minDataKeySize, 32, VolumeKeySize, 1024, maxDataKeySize} {
			dk, err := NewDataKey(size)
			if err != nil {
				t.Fatalf("NewDataKey(%d) error = %v", size, err)
			}
			wrapped, err := k.Wrap(ctx, dk)
			if err != nil {
				t.Fatalf("Wrap(%d bytes) error = %v", size, err)
			}
			got, err := k.Unwrap(ctx, wrapped)
			if err != nil {
				t.Fatalf("Unwrap(Wrap(%d bytes)) error = %v", size, err)
			}
			if !bytes.Equal(got, dk) {
				t.Errorf("Unwrap(Wrap(key)) = %x; want %x", got, dk)
			}
			Wipe(got)
			Wipe(dk)
		}
	})

	t.Run("WrapIsOpaqueAndRandomized", func(t *testing.T) {
		dk := mustDataKey(t, VolumeKeySize)
		w1, err := k.Wrap(ctx, dk)
		if err != nil {
			t.Fatalf("Wrap error = %v", err)
		}
		w2, err := k.Wrap(ctx, dk)
		if err != nil {
			t.Fatalf("Wrap error = %v", err)
		}
		if bytes.Contains(w1, dk) || bytes.Contains(w1, dk[:16]) {
			t.Errorf("Wrap(key) = %x contains the key", w1)
		}
		if bytes.Equal(w1, w2) {
			t.Errorf("Wrap(key) twice gave the same ciphertext %x; want randomized wrapping", w1)
		}
	})

	t.Run("WrapRejectsBadSizes", func(t *testing.T) {
		for _, dk := range [][]byte{nil, {}, make([]byte, maxDataKeySize+1)} {
			if _, err := k.Wrap(ctx, dk); err == nil {
				t.Errorf("Wrap(%d bytes) error = nil; want an error", len(dk))
			}
		}
	})

	t.Run("DamagedIsCorrupt", func(t *testing.T) {
		dk := mustDataKey(t, VolumeKeySize)
		wrapped, err := k.Wrap(ctx, dk)
		if err != nil {
			t.Fatalf("Wrap error = %v", err)
		}
		damaged := map[string][]byte{
			"empty":     {},
			"one byte":  wrapped[:1],
			"truncated": wrapped[:len(wrapped)-1],
			"extended":  append(bytes.Clone(wrapped), 0),
		}
		for _, i := range []int{0, len(wrapped) / 2, len(wrapped) - 1} {
			b := bytes.Clone(wrapped)
			b[i] ^= 0x01
			damaged[fmt.Sprintf("bit flipped at %d", i)] = b
		}
		for name, b := range damaged {
			got, err := k.Unwrap(ctx, b)
			if err == nil {
				t.Errorf("%s: Unwrap error = nil (plaintext %x); want an error", name, got)
				continue
			}
			if kind := ErrorKind(err); kind != KindCorrupt {
				t.Errorf("%s: ErrorKind(Unwrap error %v) = %v; want %v", name, err, kind, KindCorrupt)
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("%s: Unwrap error = %v; want errors.Is ErrCorrupt", name, err)
			}
			assertNoSecrets(t, err, dk)
		}
	})

	t.Run("URIIsRedacted", func(t *testing.T) {
		if got := RedactURI(k.URI()); got != k.URI() {
			t.Errorf("RedactURI(URI()) = %q; want URI() = %q unchanged", got, k.URI())
		}
	})

	t.Run("Envelope", func(t *testing.T) {
		dk := mustDataKey(t, VolumeKeySize)
		w, err := k.WrapKey(ctx, PurposeVolume, dk)
		if err != nil {
			t.Fatalf("WrapKey error = %v", err)
		}
		if w.KeyURI != k.URI() {
			t.Errorf("WrapKey().KeyURI = %q; want %q", w.KeyURI, k.URI())
		}
		path := filepath.Join(t.TempDir(), "volume.key.json")
		if err := w.Save(path); err != nil {
			t.Fatalf("Save(%q) error = %v", path, err)
		}
		loaded, err := LoadWrapped(path)
		if err != nil {
			t.Fatalf("LoadWrapped(%q) error = %v", path, err)
		}
		got, err := k.UnwrapKey(ctx, loaded)
		if err != nil {
			t.Fatalf("UnwrapKey error = %v", err)
		}
		if !bytes.Equal(got, dk) {
			t.Errorf("UnwrapKey(LoadWrapped(Save(WrapKey(key)))) = %x; want %x", got, dk)
		}
	})

	t.Run("Concurrent", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		for range 16 {
			wg.Go(func() {
				dk, err := NewDataKey(VolumeKeySize)
				if err != nil {
					errs <- err
					return
				}
				w, err := k.Wrap(ctx, dk)
				if err != nil {
					errs <- err
					return
				}
				got, err := k.Unwrap(ctx, w)
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, dk) {
					errs <- errors.New("round trip mismatch")
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("concurrent Wrap/Unwrap: %v", err)
		}
	})
}

func mustDataKey(t *testing.T, size int) []byte {
	t.Helper()
	dk, err := NewDataKey(size)
	if err != nil {
		t.Fatalf("NewDataKey(%d) error = %v", size, err)
	}
	return dk
}

// encodings returns the forms in which key bytes could leak into text.
func encodings(b []byte) []string {
	return []string{
		hex.EncodeToString(b),
		strings.ToUpper(hex.EncodeToString(b)),
		base64.StdEncoding.EncodeToString(b),
		base64.URLEncoding.EncodeToString(b),
		base64.RawStdEncoding.EncodeToString(b),
		base64.RawURLEncoding.EncodeToString(b),
		fmt.Sprintf("%v", b),
		fmt.Sprintf("%q", b),
	}
}

// assertNoSecrets fails t if err's text, in any of its formats, holds any
// of the secrets in one of the encodings above (or raw).
func assertNoSecrets(t *testing.T, err error, secrets ...[]byte) {
	t.Helper()
	texts := []string{err.Error(), fmt.Sprintf("%v", err), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err)}
	for _, s := range secrets {
		for _, enc := range append(encodings(s), string(s)) {
			for _, text := range texts {
				if strings.Contains(text, enc) {
					t.Errorf("error %q holds key material %q", text, enc)
				}
			}
		}
	}
}
