// Package storage manages the encrypted volume under which all of
// PostgreSQL's data lives (data directory with WAL and pgsql_tmp, server log,
// audit log, backup spool).
//
// The fscrypt backend keeps an ext4 filesystem in a sparse image file,
// attaches it through a loop device, and encrypts the directory DataDir with
// a Linux native file encryption (fscrypt) v2 policy: AES-256-XTS for
// contents, AES-256-CTS for names. The kernel does all cryptography; this
// package only creates the filesystem and calls the fscrypt ioctls to add the
// 64-byte master key to the filesystem keyring (Unlock) and to remove it
// again (Lock). Once the key is removed, even root reads only ciphertext and
// encrypted names.
//
// Lifecycle:
//
//	Provision → Unlock → (PostgreSQL runs) → Lock → Detach
//	Attach    → Unlock → ...
//
// Callers hold a Backend, which New picks once from Options: fscrypt on an
// image (Volume with Image), fscrypt on a storage path (Volume with Path),
// or gocryptfs (Gocryptfs). They share the lifecycle above and say what
// differs through capabilities (CanResize, Exited), never their kind.
//
// Key material handed to Unlock is copied only into the ioctl argument and
// wiped after the call; it never reaches a child process's argv or
// environment, a log line or an error string.
package storage
