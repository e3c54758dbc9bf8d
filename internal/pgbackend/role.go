package pgbackend

import "time"

// Role is what the gateway needs to know of a role to authenticate it.
type Role struct {
	Name       string
	Exists     bool
	CanLogin   bool
	Superuser  bool
	Password   string // rolpassword: a SCRAM verifier, md5 hash or empty
	ValidUntil *time.Time
	// Principal is set for a token principal: it logs in with an access
	// token, never a password.
	Principal *TokenPrincipal
}

// Principal kinds, as in Azure's pgaadauth_create_principal.
const (
	PrincipalUser    = "user"    // ObjectID is the token's principal claim
	PrincipalGroup   = "group"   // ObjectID is listed in the token's groups claim
	PrincipalService = "service" // ObjectID is the token's principal claim (an application)
)

// TokenPrincipal is the mapping of a role to an identity provider's object:
// the role logs in with an access token whose principal claim is ObjectID
// (user, service) or whose groups claim lists it (group).
type TokenPrincipal struct {
	Name      string    `json:"name"`
	ObjectID  string    `json:"object_id"`
	Kind      string    `json:"type"`
	Admin     bool      `json:"admin"`
	CreatedAt time.Time `json:"created_at"`
}
