package storage

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// These tests need no privileges.

func testIdentifier() keyIdentifier {
	var id keyIdentifier
	for i := range id {
		id[i] = byte(0xa0 + i)
	}
	return id
}

func TestPolicyEncoding(t *testing.T) {
	id := testIdentifier()
	p := newPolicy(id)
	want := append([]byte{
		2,    // FSCRYPT_POLICY_V2
		1,    // FSCRYPT_MODE_AES_256_XTS
		4,    // FSCRYPT_MODE_AES_256_CTS
		0x03, // FSCRYPT_POLICY_FLAGS_PAD_32
		0,    // log2_data_unit_size: filesystem block size
		0, 0, 0,
	}, id[:]...)
	got := policyBytes(&p)
	if !bytes.Equal(got, want) {
		t.Fatalf("policyBytes(newPolicy(%s)) =\n%x\nwant\n%x", id, got, want)
	}
	dec, err := decodePolicy(got)
	if err != nil {
		t.Fatalf("decodePolicy() error = %v; want nil", err)
	}
	if dec != p {
		t.Errorf("decodePolicy() = %+v; want %+v", dec, p)
	}
	if err := checkPolicy(dec, id); err != nil {
		t.Errorf("checkPolicy(decoded, id) error = %v; want nil", err)
	}
}

func TestDecodePolicyRejects(t *testing.T) {
	id := testIdentifier()
	p := newPolicy(id)
	good := append([]byte(nil), policyBytes(&p)...)
	mutate := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	tests := map[string][]byte{
		"empty":          {},
		"v1 policy":      {0, 1, 4, 0, 1, 2, 3, 4, 5, 6, 7, 8},
		"unknown":        mutate(func(b []byte) []byte { b[0] = 3; return b }),
		"short v2":       good[:20],
		"long v2":        append(append([]byte(nil), good...), 0),
		"reserved bytes": mutate(func(b []byte) []byte { b[6] = 1; return b }),
	}
	for name, b := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := decodePolicy(b); !errors.Is(err, ErrPolicyMismatch) {
				t.Errorf("decodePolicy(%x) error = %v; want ErrPolicyMismatch", b, err)
			}
		})
	}
}

func TestCheckPolicy(t *testing.T) {
	id := testIdentifier()
	other := id
	other[15] ^= 0xff
	tests := []struct {
		name   string
		modify func(p *unix.FscryptPolicyV2)
		want   error
	}{
		{"match", func(*unix.FscryptPolicyV2) {}, nil},
		{"other key", func(p *unix.FscryptPolicyV2) { p.Master_key_identifier = other }, ErrWrongKey},
		{"v1", func(p *unix.FscryptPolicyV2) { p.Version = unix.FSCRYPT_POLICY_V1 }, ErrPolicyMismatch},
		{"adiantum contents", func(p *unix.FscryptPolicyV2) { p.Contents_encryption_mode = unix.FSCRYPT_MODE_ADIANTUM }, ErrPolicyMismatch},
		{"hctr2 names", func(p *unix.FscryptPolicyV2) { p.Filenames_encryption_mode = unix.FSCRYPT_MODE_AES_256_HCTR2 }, ErrPolicyMismatch},
		{"pad 16", func(p *unix.FscryptPolicyV2) { p.Flags = unix.FSCRYPT_POLICY_FLAGS_PAD_16 }, ErrPolicyMismatch},
		{"direct key", func(p *unix.FscryptPolicyV2) { p.Flags |= unix.FSCRYPT_POLICY_FLAG_DIRECT_KEY }, ErrPolicyMismatch},
		{"data unit size", func(p *unix.FscryptPolicyV2) { p.Log2_data_unit_size = 9 }, ErrPolicyMismatch},
		// Modes are checked before the key: a foreign policy is never
		// reported as a wrong key.
		{"other key and modes", func(p *unix.FscryptPolicyV2) { p.Master_key_identifier = other; p.Flags = 0 }, ErrPolicyMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPolicy(id)
			tt.modify(&p)
			err := checkPolicy(p, id)
			if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("checkPolicy() error = %v; want %v", err, tt.want)
			}
		})
	}
}

// TestIoctlArgLayout checks our structs against the sizes encoded in the
// ioctl request numbers, which are the kernel's sizeof of each argument.
func TestIoctlArgLayout(t *testing.T) {
	iocSize := func(req uint) uintptr { return uintptr(req>>16) & 0x3fff }
	tests := []struct {
		name string
		req  uint
		size uintptr
	}{
		{"FS_IOC_ADD_ENCRYPTION_KEY", unix.FS_IOC_ADD_ENCRYPTION_KEY, unsafe.Sizeof(unix.FscryptAddKeyArg{})},
		{"FS_IOC_REMOVE_ENCRYPTION_KEY", unix.FS_IOC_REMOVE_ENCRYPTION_KEY, unsafe.Sizeof(unix.FscryptRemoveKeyArg{})},
		{"FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS", unix.FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS, unsafe.Sizeof(unix.FscryptRemoveKeyArg{})},
		{"FS_IOC_GET_ENCRYPTION_KEY_STATUS", unix.FS_IOC_GET_ENCRYPTION_KEY_STATUS, unsafe.Sizeof(unix.FscryptGetKeyStatusArg{})},
		// struct fscrypt_get_policy_ex_arg is declared with a one-byte
		// policy union in the request number.
		{"FS_IOC_GET_ENCRYPTION_POLICY_EX", unix.FS_IOC_GET_ENCRYPTION_POLICY_EX, unsafe.Offsetof(unix.FscryptGetPolicyExArg{}.Policy) + 1},
		// The set-policy request number carries the v1 struct size.
		{"FS_IOC_SET_ENCRYPTION_POLICY", unix.FS_IOC_SET_ENCRYPTION_POLICY, unsafe.Sizeof(unix.FscryptPolicyV1{})},
	}
	for _, tt := range tests {
		if got := iocSize(tt.req); got != tt.size {
			t.Errorf("%s encodes size %d; our struct has %d", tt.name, got, tt.size)
		}
	}
	if got, want := unsafe.Offsetof(addKeyArg{}.raw), unsafe.Sizeof(unix.FscryptAddKeyArg{}); got != want {
		t.Errorf("addKeyArg.raw at offset %d; want %d (right after struct fscrypt_add_key_arg)", got, want)
	}
	if policyV2Size != 24 {
		t.Errorf("sizeof(struct fscrypt_policy_v2) = %d; want 24", policyV2Size)
	}
	if got := len(unix.FscryptGetPolicyExArg{}.Policy); got < policyV2Size {
		t.Errorf("FscryptGetPolicyExArg.Policy holds %d bytes; want >= %d", got, policyV2Size)
	}
}

func TestAddKeyArgWipe(t *testing.T) {
	a := new(addKeyArg)
	for i := range a.raw {
		a.raw[i] = 0x5a
	}
	a.Raw_size = KeySize
	a.wipe()
	if a.raw != ([KeySize]byte{}) || a.Raw_size != 0 {
		t.Errorf("after wipe raw = %x, size %d; want zeros", a.raw, a.Raw_size)
	}
}

func TestUnlockRefusesKeySize(t *testing.T) {
	dir := t.TempDir()
	v := &Volume{Image: filepath.Join(dir, "img"), Mount: filepath.Join(dir, "mnt")}
	for _, n := range []int{0, 16, 32, 63, 65, 128} {
		key := bytes.Repeat([]byte{0xc3}, n)
		err := v.Unlock(key)
		if !errors.Is(err, ErrKeySize) {
			t.Errorf("Unlock(%d-byte key) error = %v; want ErrKeySize", n, err)
		}
		if err != nil && n > 0 && strings.Contains(strings.ToLower(err.Error()), hex.EncodeToString(key[:8])) {
			t.Errorf("Unlock error %q leaks key bytes", err)
		}
	}
	if _, err := os.Stat(v.Mount); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Unlock with a bad key touched the mount point: stat error = %v", err)
	}
}

func TestProvisionRefusesExistingImage(t *testing.T) {
	dir := t.TempDir()
	v := &Volume{Image: filepath.Join(dir, "img"), Mount: filepath.Join(dir, "mnt"), Size: 64 << 20}
	old := []byte("existing data, not a filesystem")
	if err := os.WriteFile(v.Image, old, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := v.Provision(context.Background()); !errors.Is(err, ErrImageExists) {
		t.Fatalf("Provision() error = %v; want ErrImageExists", err)
	}
	got, err := os.ReadFile(v.Image)
	if err != nil || !bytes.Equal(got, old) {
		t.Errorf("image after refused Provision = %q, %v; want it untouched", got, err)
	}
}

func TestKeyOpsRefuseUnmounted(t *testing.T) {
	dir := t.TempDir()
	v := &Volume{Image: filepath.Join(dir, "img"), Mount: filepath.Join(dir, "mnt")}
	if err := os.MkdirAll(filepath.Join(v.Mount, DataDirName), 0o700); err != nil {
		t.Fatal(err)
	}
	key := make([]byte, KeySize)
	if err := v.Unlock(key); !errors.Is(err, ErrNotMounted) {
		t.Errorf("Unlock() on a plain directory error = %v; want ErrNotMounted", err)
	}
	if err := v.Lock(); !errors.Is(err, ErrNotMounted) {
		t.Errorf("Lock() on a plain directory error = %v; want ErrNotMounted", err)
	}
	if _, err := v.KeyStatus(); !errors.Is(err, ErrNotMounted) {
		t.Errorf("KeyStatus() on a plain directory error = %v; want ErrNotMounted", err)
	}
	if _, _, err := v.Usage(); !errors.Is(err, ErrNotMounted) {
		t.Errorf("Usage() on a plain directory error = %v; want ErrNotMounted", err)
	}
	if v.NeedsGrow(0.1) {
		t.Error("NeedsGrow() on a plain directory = true; want false")
	}
}
