package apitype

import "time"

// Key states, as `key show` and `status` report them.
const (
	KeyAvailable = "Available"
	KeyLocked    = "Locked" // the operator asked: pgshield key lock
	// KeyInaccessible: the customer-managed key was revoked, disabled or
	// deleted, or stayed unreachable past the grace period.
	KeyInaccessible = "Inaccessible"
)

// KeyState is the state of the server's data key.
type KeyState struct {
	State  string    `json:"state"` // KeyAvailable, KeyLocked or KeyInaccessible
	Since  time.Time `json:"since"`
	Reason string    `json:"reason,omitempty"`
}

// KeyInfo is the answer of GET /v1/key and of POST /v1/key/lock, unlock,
// revalidate, set and rotate.
type KeyInfo struct {
	KeyState
	LastValidated *time.Time `json:"last_validated,omitempty"`
	LastError     string     `json:"last_error,omitempty"`
	// GraceSince is set while the KMS cannot be reached.
	GraceSince *time.Time `json:"grace_since,omitempty"`
	Backend    string     `json:"backend"`
	KeySource  string     `json:"key_source"` // system-managed or customer-managed
	KeyURI     string     `json:"key_uri"`    // redacted
	TotalBytes uint64     `json:"volume_total_bytes,omitempty"`
	FreeBytes  uint64     `json:"volume_free_bytes,omitempty"`
}

// KeyChangeRequest is the body of POST /v1/key/set and /v1/key/rotate; set
// needs KeyURI, rotate without it re-wraps under the same key's newest
// version.
type KeyChangeRequest struct {
	KeyURI string `json:"key_uri,omitempty"`
}
