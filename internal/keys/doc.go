// Package keys holds pgshield's key hierarchy for data at rest: a random data
// key per server (and per backup repository), stored only wrapped by a
// key-encryption key (KEK).
//
// The KEK lives behind a [Keeper], opened from a URL:
//
//   - pgshield-local:///etc/pgshield/keys/<server-id>.key: the system-managed
//     key, 32 random bytes in a file of mode 0600 inside a directory of mode
//     0700, created once by [CreateSystemKEK] and used through
//     gocloud.dev/secrets/localsecrets (NaCl secretbox).
//   - awskms://, azurekeyvault://, gcpkms://, hashivault://: customer-managed
//     keys; the gocloud.dev/secrets drivers send the data key to the KMS.
//   - base64key://<32-byte key, URL-safe base64>: a local key in the URL
//     itself, for tests only.
//
// This package does no cryptography of its own: wrapping is done by the
// gocloud.dev/secrets keepers and randomness comes from crypto/rand.
//
// Failures are classified by [ErrorKind] so that callers can tell a revoked,
// disabled or deleted key ([KindDenied]: the server becomes Inaccessible at
// once) from a KMS outage ([KindTransient]: a grace period applies) and from a
// damaged wrapped key ([KindCorrupt]).
//
// Key material never appears in errors: errors name a key only by its
// redacted URI ([RedactURI]), and an error from a driver's URL opener that
// quotes a secret part of the URL is replaced by a scrubbed copy. Plaintext keys returned by this
// package are owned by the caller, who should [Wipe] them after use.
//
// A wrapped key is stored on disk as a small JSON envelope, [WrappedKey],
// written atomically with mode 0600 and read back with strict decoding.
package keys
