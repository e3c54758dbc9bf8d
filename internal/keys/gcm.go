package keys

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"

	"gocloud.dev/gcerrors"
	"gocloud.dev/secrets"
	"gocloud.dev/secrets/driver"
	"gocloud.dev/secrets/localsecrets"
)

// gcmMagic starts every key the system-managed keeper wraps with AES-256-GCM.
// Keys wrapped before it existed (localsecrets: a random 24-byte nonce, then
// a NaCl secretbox) start with random bytes, so they cannot be mistaken for
// it except with probability 2^-64.
var gcmMagic = []byte("pgsh-gcm")

// systemKeeper wraps with AES-256-GCM, an approved algorithm, so the default
// key hierarchy stays usable in FIPS 140-3 mode; it still unwraps keys
// wrapped by earlier versions with NaCl secretbox, and `key rotate`
// re-wraps those. The AEAD is the standard library's, through crypto/cipher.
type systemKeeper struct {
	aead   cipher.AEAD
	legacy *secrets.Keeper // localsecrets over the same KEK
}

var errGCMOpen = errors.New("AES-256-GCM: message authentication failed")

func newSystemKeeper(kek [KEKSize]byte) (*secrets.Keeper, error) {
	block, err := aes.NewCipher(kek[:])
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return secrets.NewKeeper(&systemKeeper{aead: aead, legacy: localsecrets.NewKeeper(kek)}), nil
}

func (k *systemKeeper) Encrypt(_ context.Context, plaintext []byte) ([]byte, error) {
	n := k.aead.NonceSize()
	out := make([]byte, len(gcmMagic)+n, len(gcmMagic)+n+len(plaintext)+k.aead.Overhead())
	copy(out, gcmMagic)
	if _, err := rand.Read(out[len(gcmMagic):]); err != nil {
		return nil, err
	}
	// The magic is authenticated too, as additional data.
	return k.aead.Seal(out, out[len(gcmMagic):], plaintext, gcmMagic), nil
}

func (k *systemKeeper) Decrypt(ctx context.Context, ct []byte) ([]byte, error) {
	n := k.aead.NonceSize()
	if len(ct) >= len(gcmMagic)+n+k.aead.Overhead() && string(ct[:len(gcmMagic)]) == string(gcmMagic) {
		pt, err := k.aead.Open(nil, ct[len(gcmMagic):len(gcmMagic)+n], ct[len(gcmMagic)+n:], gcmMagic)
		if err != nil {
			return nil, errGCMOpen
		}
		return pt, nil
	}
	return k.legacy.Decrypt(ctx, ct)
}

func (k *systemKeeper) Close() error                       { return k.legacy.Close() }
func (k *systemKeeper) ErrorAs(error, any) bool            { return false }
func (k *systemKeeper) ErrorCode(error) gcerrors.ErrorCode { return gcerrors.Unknown }

var _ driver.Keeper = (*systemKeeper)(nil)
