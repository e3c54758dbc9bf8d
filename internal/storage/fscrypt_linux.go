package storage

// Thin wrappers around the fscrypt ioctls (Documentation/filesystems/
// fscrypt.rst in the kernel tree). No cryptography happens here: the kernel
// derives the key identifier and per-file keys from the master key and
// encrypts contents and names itself.

import (
	"encoding/hex"
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The policy this package sets on DataDir and accepts when it finds one.
//
// PAD_32 pads encrypted names to 32 bytes, hiding their lengths best; names
// are short and rarely encrypted (dentries are cached), and PAD_4 measured
// the same. No IV_INO_LBLK_64/32 or DIRECT_KEY: they exist for inline-
// encryption hardware and Adiantum, measured no faster with software
// AES-XTS, and would give all files' contents one key instead of a key per
// file.
const (
	policyVersion   = unix.FSCRYPT_POLICY_V2
	contentsMode    = unix.FSCRYPT_MODE_AES_256_XTS
	filenamesMode   = unix.FSCRYPT_MODE_AES_256_CTS
	policyFlags     = unix.FSCRYPT_POLICY_FLAGS_PAD_32
	policyV2Size    = int(unsafe.Sizeof(unix.FscryptPolicyV2{}))
	identifierBytes = unix.FSCRYPT_KEY_IDENTIFIER_SIZE
)

// keyIdentifier is what the kernel derives from a v2 master key and stores
// in the policy. It is public (it is on disk in plaintext) and safe to log.
type keyIdentifier [identifierBytes]byte

func (id keyIdentifier) String() string { return hex.EncodeToString(id[:]) }

// addKeyArg is struct fscrypt_add_key_arg followed by its flexible raw[]
// member, sized for our key. It is allocated once per Unlock and wiped.
type addKeyArg struct {
	unix.FscryptAddKeyArg
	raw [KeySize]byte
}

func (a *addKeyArg) wipe() {
	clear(a.raw[:])
	a.Raw_size = 0
	runtime.KeepAlive(a)
}

// newPolicy returns the v2 policy for the key with the given identifier.
func newPolicy(id keyIdentifier) unix.FscryptPolicyV2 {
	return unix.FscryptPolicyV2{
		Version:                   policyVersion,
		Contents_encryption_mode:  contentsMode,
		Filenames_encryption_mode: filenamesMode,
		Flags:                     policyFlags,
		// Log2_data_unit_size 0: the filesystem block size (kernel default).
		Master_key_identifier: id,
	}
}

// checkPolicy verifies that p is the policy newPolicy(want) would set. A
// different key identifier is ErrWrongKey; anything else ErrPolicyMismatch.
func checkPolicy(p unix.FscryptPolicyV2, want keyIdentifier) error {
	if p.Version != policyVersion || p.Contents_encryption_mode != contentsMode ||
		p.Filenames_encryption_mode != filenamesMode || p.Flags != policyFlags ||
		p.Log2_data_unit_size != 0 {
		return fmt.Errorf("%w: version %d, contents mode %d, filenames mode %d, flags %#x, log2 data unit size %d",
			ErrPolicyMismatch, p.Version, p.Contents_encryption_mode, p.Filenames_encryption_mode,
			p.Flags, p.Log2_data_unit_size)
	}
	if keyIdentifier(p.Master_key_identifier) != want {
		return fmt.Errorf("%w: policy key identifier %s, key identifier %s",
			ErrWrongKey, keyIdentifier(p.Master_key_identifier), want)
	}
	return nil
}

// decodePolicy parses the policy bytes FS_IOC_GET_ENCRYPTION_POLICY_EX
// returned. Only v2 policies are accepted; v1 policies are ErrPolicyMismatch.
func decodePolicy(b []byte) (unix.FscryptPolicyV2, error) {
	var p unix.FscryptPolicyV2
	if len(b) == 0 {
		return p, fmt.Errorf("%w: empty policy", ErrPolicyMismatch)
	}
	if b[0] != policyVersion {
		return p, fmt.Errorf("%w: policy version %d, want %d", ErrPolicyMismatch, b[0], policyVersion)
	}
	if len(b) != policyV2Size {
		return p, fmt.Errorf("%w: v2 policy of %d bytes, want %d", ErrPolicyMismatch, len(b), policyV2Size)
	}
	// struct fscrypt_policy_v2: five single-byte fields, 4 reserved bytes
	// (3 after the data unit size), then the 16-byte identifier. No
	// multi-byte integers, so no byte order to care about.
	p.Version = b[0]
	p.Contents_encryption_mode = b[1]
	p.Filenames_encryption_mode = b[2]
	p.Flags = b[3]
	p.Log2_data_unit_size = b[4]
	if b[5] != 0 || b[6] != 0 || b[7] != 0 {
		return p, fmt.Errorf("%w: reserved policy bytes set", ErrPolicyMismatch)
	}
	copy(p.Master_key_identifier[:], b[8:])
	return p, nil
}

// policyBytes returns the in-memory encoding of p, which is what
// FS_IOC_SET_ENCRYPTION_POLICY reads.
func policyBytes(p *unix.FscryptPolicyV2) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(p)), policyV2Size)
}

func ioctlPtr(fd int, req uint, arg unsafe.Pointer) error {
	for range 8 { // bounded EINTR retry
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(arg))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return errno
		}
		return nil
	}
	return unix.EINTR
}

// getPolicy returns the encryption policy of the directory open at fd;
// ok is false when the directory is not encrypted.
func getPolicy(fd int) (p unix.FscryptPolicyV2, ok bool, err error) {
	var arg unix.FscryptGetPolicyExArg
	arg.Size = uint64(len(arg.Policy))
	switch err := ioctlPtr(fd, unix.FS_IOC_GET_ENCRYPTION_POLICY_EX, unsafe.Pointer(&arg)); err {
	case nil:
	case unix.ENODATA:
		return p, false, nil
	case unix.EOVERFLOW:
		return p, false, fmt.Errorf("%w: policy larger than %d bytes", ErrPolicyMismatch, len(arg.Policy))
	default:
		return p, false, fmt.Errorf("FS_IOC_GET_ENCRYPTION_POLICY_EX: %w", err)
	}
	if arg.Size > uint64(len(arg.Policy)) {
		return p, false, fmt.Errorf("%w: policy size %d", ErrPolicyMismatch, arg.Size)
	}
	p, err = decodePolicy(arg.Policy[:arg.Size])
	return p, true, err
}

// setPolicy sets p on the empty directory open at fd. For a v2 policy the
// kernel requires the key to be in the filesystem keyring already.
func setPolicy(fd int, p *unix.FscryptPolicyV2) error {
	// The request number encodes the v1 struct size; the kernel reads the
	// version byte first and then the whole struct of that version.
	if err := ioctlPtr(fd, unix.FS_IOC_SET_ENCRYPTION_POLICY, unsafe.Pointer(p)); err != nil {
		return fmt.Errorf("FS_IOC_SET_ENCRYPTION_POLICY: %w", err)
	}
	return nil
}

// addKey adds key to the keyring of the filesystem that holds fd and returns
// the identifier the kernel derived. key is copied into a buffer that is
// wiped before addKey returns; the caller still owns (and wipes) key.
func addKey(fd int, key []byte) (keyIdentifier, error) {
	var id keyIdentifier
	if len(key) != KeySize {
		return id, ErrKeySize
	}
	arg := new(addKeyArg)
	defer arg.wipe()
	arg.Key_spec.Type = unix.FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER
	arg.Raw_size = uint32(len(key))
	copy(arg.raw[:], key)
	if err := ioctlPtr(fd, unix.FS_IOC_ADD_ENCRYPTION_KEY, unsafe.Pointer(arg)); err != nil {
		return id, fmt.Errorf("FS_IOC_ADD_ENCRYPTION_KEY: %w", err)
	}
	copy(id[:], arg.Key_spec.U[:identifierBytes])
	return id, nil
}

func keySpec(id keyIdentifier) unix.FscryptKeySpecifier {
	var s unix.FscryptKeySpecifier
	s.Type = unix.FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER
	copy(s.U[:], id[:])
	return s
}

// removeKey removes the key from the filesystem keyring for all users and
// returns the kernel's removal status flags. A key that is not there is
// reported as unix.ENOKEY.
func removeKey(fd int, id keyIdentifier) (flags uint32, err error) {
	arg := unix.FscryptRemoveKeyArg{Key_spec: keySpec(id)}
	err = ioctlPtr(fd, unix.FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS, unsafe.Pointer(&arg))
	if err == unix.EACCES || err == unix.EPERM {
		// Without CAP_SYS_ADMIN only our own claim can go.
		arg = unix.FscryptRemoveKeyArg{Key_spec: keySpec(id)}
		err = ioctlPtr(fd, unix.FS_IOC_REMOVE_ENCRYPTION_KEY, unsafe.Pointer(&arg))
	}
	if err != nil {
		return 0, err
	}
	return arg.Removal_status_flags, nil
}

// keyStatus returns the FSCRYPT_KEY_STATUS_* of the key in the filesystem
// keyring.
func keyStatus(fd int, id keyIdentifier) (uint32, error) {
	arg := unix.FscryptGetKeyStatusArg{Key_spec: keySpec(id)}
	if err := ioctlPtr(fd, unix.FS_IOC_GET_ENCRYPTION_KEY_STATUS, unsafe.Pointer(&arg)); err != nil {
		return 0, fmt.Errorf("FS_IOC_GET_ENCRYPTION_KEY_STATUS: %w", err)
	}
	return arg.Status, nil
}
