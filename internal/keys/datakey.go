package keys

import (
	"crypto/rand"
	"fmt"
	"io"
	"runtime"
)

// VolumeKeySize is the size in bytes of a volume data key: an fscrypt v2
// master key, as storage.Unlock takes it.
const VolumeKeySize = 64

// minDataKeySize is the smallest key NewDataKey makes: 128 bits.
const minDataKeySize = 16

// NewDataKey returns size bytes from crypto/rand, for use as a data key. size
// must be between 16 and 4096. The caller owns the key and should Wipe it
// once it has been wrapped and handed on.
func NewDataKey(size int) ([]byte, error) {
	if size < minDataKeySize || size > maxDataKeySize {
		return nil, fmt.Errorf("keys: data key size %d out of range [%d, %d]", size, minDataKeySize, maxDataKeySize)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(rand.Reader, b); err != nil {
		return nil, fmt.Errorf("keys: new data key: reading randomness: %w", err)
	}
	return b, nil
}

// Wipe overwrites b with zeros. Call it on key material once it is no longer
// needed, and drop the reference. It cannot reach copies made elsewhere: by
// append growing a slice, by conversion to a string, or inside a driver.
func Wipe(b []byte) {
	clear(b)
	runtime.KeepAlive(b)
}
