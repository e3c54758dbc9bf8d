package keys

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"time"

	"gocloud.dev/secrets"

	// Drivers for the customer-managed key URLs, registered on
	// secrets.DefaultURLMux, and localsecrets for base64key:// and the
	// system-managed key.
	_ "gocloud.dev/secrets/awskms"
	_ "gocloud.dev/secrets/azurekeyvault"
	_ "gocloud.dev/secrets/gcpkms"
	_ "gocloud.dev/secrets/hashivault"
	_ "gocloud.dev/secrets/localsecrets"
)

// maxDataKeySize bounds the plaintext Wrap accepts: AWS KMS encrypts at most
// 4096 bytes, and a data key is far smaller.
const maxDataKeySize = 4096

// Keeper wraps and unwraps data keys with one key-encryption key. Make one
// with Open. It is safe for concurrent use. Close releases it; a closed
// Keeper returns errors wrapping ErrClosed.
type Keeper struct {
	sk    *secrets.Keeper
	uri   string // redacted; never holds a secret
	local bool   // backed by localsecrets: every Decrypt failure is KindCorrupt

	// mu is held for reading by Wrap and Unwrap for their whole call, and
	// for writing by Close, so that Close waits for calls in flight.
	mu     sync.RWMutex
	closed bool
}

// Open opens the Keeper named by uri: pgshield-local:///path/to/kek for the
// system-managed key (see CreateSystemKEK), awskms://, azurekeyvault://,
// gcpkms:// or hashivault:// for a customer-managed key (credentials come
// from the environment, as the gocloud.dev/secrets drivers document), or
// base64key://<key> in tests. Errors name the key by its redacted URI only.
func Open(ctx context.Context, uri string) (*Keeper, error) {
	red := RedactURI(uri)
	u, err := url.Parse(uri)
	if err != nil {
		// url.Parse's error quotes the whole URI.
		return nil, fmt.Errorf("keys: open %s: malformed key URI", red)
	}
	switch u.Scheme {
	case SchemeSystem:
		sk, err := openSystemKeeper(u)
		if err != nil {
			return nil, err
		}
		return &Keeper{sk: sk, uri: red, local: true}, nil
	case SchemeBase64Key:
		if u.Host == "" {
			// localsecrets would invent a random key, and every key
			// wrapped with it would be lost with the process.
			return nil, fmt.Errorf("keys: open %s: base64key:// needs a 32-byte URL-safe base64 key", red)
		}
	case SchemeAWSKMS, SchemeAzureKeyVault, SchemeGCPKMS, SchemeHashiVault:
	default:
		return nil, fmt.Errorf("keys: open %s: unsupported key URI scheme %q (want %s, %s, %s, %s, %s or %s)",
			red, u.Scheme, SchemeSystem, SchemeAWSKMS, SchemeAzureKeyVault, SchemeGCPKMS, SchemeHashiVault, SchemeBase64Key)
	}
	sk, err := secrets.DefaultURLMux().OpenKeeperURL(ctx, u)
	if err != nil {
		return nil, fmt.Errorf("keys: open %s: %w", red, scrub(err, uri))
	}
	return &Keeper{sk: sk, uri: red, local: u.Scheme == SchemeBase64Key}, nil
}

// URI returns the Keeper's key URI in redacted form (see RedactURI).
func (k *Keeper) URI() string { return k.uri }

// Wrap encrypts dataKey with the key-encryption key and returns the wrapped
// key. dataKey is not retained; the caller still owns it and should Wipe it.
// A customer-managed key sends dataKey to the KMS over TLS.
func (k *Keeper) Wrap(ctx context.Context, dataKey []byte) ([]byte, error) {
	if len(dataKey) == 0 || len(dataKey) > maxDataKeySize {
		return nil, fmt.Errorf("keys: wrap with %s: data key has %d bytes, want 1 to %d", k.uri, len(dataKey), maxDataKeySize)
	}
	k.mu.RLock()
	defer k.mu.RUnlock()
	if k.closed {
		return nil, fmt.Errorf("keys: wrap with %s: %w", k.uri, ErrClosed)
	}
	ct, err := k.sk.Encrypt(ctx, dataKey)
	if err != nil {
		return nil, fmt.Errorf("keys: wrap with %s: %w", k.uri, err)
	}
	return ct, nil
}

// Unwrap decrypts a key returned by Wrap. The returned plaintext belongs to
// the caller, who should Wipe it once it has been handed on. A wrapped key
// that is damaged or was wrapped by another key fails with an error wrapping
// ErrCorrupt (KindCorrupt); a revoked key fails with KindDenied; an
// unreachable KMS with KindTransient.
func (k *Keeper) Unwrap(ctx context.Context, wrapped []byte) ([]byte, error) {
	if len(wrapped) == 0 {
		return nil, fmt.Errorf("keys: unwrap with %s: %w", k.uri, ErrCorrupt)
	}
	k.mu.RLock()
	defer k.mu.RUnlock()
	if k.closed {
		return nil, fmt.Errorf("keys: unwrap with %s: %w", k.uri, ErrClosed)
	}
	pt, err := k.sk.Decrypt(ctx, wrapped)
	if err != nil {
		if corruptOnUnwrap(err, k.local) {
			return nil, fmt.Errorf("keys: unwrap with %s: %w: %w", k.uri, ErrCorrupt, err)
		}
		return nil, fmt.Errorf("keys: unwrap with %s: %w", k.uri, err)
	}
	return pt, nil
}

// Close releases the Keeper's resources, after any Wrap or Unwrap in flight
// has returned. Closing twice returns ErrClosed.
func (k *Keeper) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return fmt.Errorf("keys: close %s: %w", k.uri, ErrClosed)
	}
	k.closed = true
	if err := k.sk.Close(); err != nil {
		return fmt.Errorf("keys: close %s: %w", k.uri, err)
	}
	return nil
}

// WrapKey wraps dataKey and returns it in an envelope for purpose
// (PurposeVolume or PurposeBackup), ready to Save.
func (k *Keeper) WrapKey(ctx context.Context, purpose string, dataKey []byte) (*WrappedKey, error) {
	if !validPurpose(purpose) {
		return nil, fmt.Errorf("keys: wrap key: unknown purpose %q", purpose)
	}
	ct, err := k.Wrap(ctx, dataKey)
	if err != nil {
		return nil, err
	}
	return &WrappedKey{
		Version:    WrappedKeyVersion,
		KeyURI:     k.uri,
		Purpose:    purpose,
		Ciphertext: ct,
		CreatedAt:  time.Now().UTC(),
	}, nil
}

// UnwrapKey validates w and unwraps its ciphertext (see Unwrap). It does not
// compare w.KeyURI with the Keeper's: the same key may be named by more than
// one URI, and a key of another Keeper fails as KindCorrupt or KindDenied.
func (k *Keeper) UnwrapKey(ctx context.Context, w *WrappedKey) ([]byte, error) {
	if w == nil {
		return nil, errors.New("keys: unwrap key: nil envelope")
	}
	if err := w.Validate(); err != nil {
		return nil, err
	}
	return k.Unwrap(ctx, w.Ciphertext)
}
