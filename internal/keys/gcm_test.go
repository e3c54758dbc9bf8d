package keys

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"gocloud.dev/secrets/localsecrets"
)

func TestSystemKeeperGCMAndLegacy(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "keys")
	path := filepath.Join(dir, "s.key")
	if err := CreateSystemKEK(path); err != nil {
		t.Fatal(err)
	}
	k, err := Open(ctx, SystemKeyURI(path))
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	dataKey := bytes.Repeat([]byte{7}, 64)
	w1, err := k.Wrap(ctx, dataKey)
	if err != nil {
		t.Fatal(err)
	}
	w2, _ := k.Wrap(ctx, dataKey)
	if !bytes.HasPrefix(w1, gcmMagic) || len(w1) != len(gcmMagic)+12+len(dataKey)+16 || bytes.Equal(w1, w2) {
		t.Fatalf("Wrap() = %x; want magic, a fresh 12-byte nonce, ciphertext and a 16-byte tag", w1)
	}
	if got, err := k.Unwrap(ctx, w1); err != nil || !bytes.Equal(got, dataKey) {
		t.Fatalf("Unwrap(Wrap(k)) = %x, %v", got, err)
	}
	// A key wrapped by an earlier version (localsecrets over the same KEK)
	// still unwraps.
	var kek [KEKSize]byte
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	copy(kek[:], b)
	legacy, err := localsecrets.NewKeeper(kek).Encrypt(ctx, dataKey)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := k.Unwrap(ctx, legacy); err != nil || !bytes.Equal(got, dataKey) {
		t.Fatalf("Unwrap(legacy secretbox) = %x, %v", got, err)
	}
	// Any change to a GCM-wrapped key (magic, nonce, ciphertext, tag) is
	// corruption, never a wrong key silently accepted.
	for _, i := range []int{0, len(gcmMagic), len(gcmMagic) + 12, len(w1) - 1} {
		bad := bytes.Clone(w1)
		bad[i] ^= 1
		if _, err := k.Unwrap(ctx, bad); !errors.Is(err, ErrCorrupt) {
			t.Errorf("Unwrap(byte %d flipped) error = %v; want ErrCorrupt", i, err)
		}
	}
	if _, err := k.Unwrap(ctx, w1[:len(gcmMagic)+5]); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Unwrap(truncated) error = %v; want ErrCorrupt", err)
	}
}
