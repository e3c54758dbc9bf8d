package keys

import (
	"bytes"
	"testing"
)

func TestNewDataKey(t *testing.T) {
	a := mustDataKey(t, VolumeKeySize)
	b := mustDataKey(t, VolumeKeySize)
	if len(a) != VolumeKeySize {
		t.Errorf("len(NewDataKey(%d)) = %d", VolumeKeySize, len(a))
	}
	if bytes.Equal(a, b) {
		t.Errorf("NewDataKey twice gave %x both times", a)
	}
	if bytes.Equal(a, make([]byte, len(a))) {
		t.Errorf("NewDataKey = all zeros")
	}
	for _, size := range []int{-1, 0, 15, maxDataKeySize + 1} {
		if k, err := NewDataKey(size); err == nil {
			t.Errorf("NewDataKey(%d) = %d bytes, nil; want an error", size, len(k))
		}
	}
}

func TestWipe(t *testing.T) {
	b := []byte("secret key material")
	alias := b[:]
	Wipe(b)
	if !bytes.Equal(alias, make([]byte, len(alias))) {
		t.Errorf("after Wipe, buffer = %q; want zeros", alias)
	}
	Wipe(nil) // must not panic
	full := []byte("abcdef")
	Wipe(full[2:4])
	if string(full) != "ab\x00\x00ef" {
		t.Errorf("Wipe(sub-slice) left %q; want only the sub-slice zeroed", full)
	}
}
