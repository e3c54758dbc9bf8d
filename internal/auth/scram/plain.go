package scram

import (
	"crypto/hmac"

	"github.com/xdg-go/scram"
)

// MaxVerifyIterations bounds the PBKDF2 iterations VerifyPassword runs
// (PostgreSQL's default is 4096). SCRAM exchanges are not affected: there
// the client does the work.
const MaxVerifyIterations = 100000

// VerifyPassword reports whether password matches creds, as PostgreSQL's
// scram_verify_plain_password does for a password sent in the clear:
// SaltedPassword = PBKDF2-HMAC-SHA-256(SASLprep(password), salt, iterations),
// ClientKey = HMAC(SaltedPassword, "Client Key"), and SHA-256(ClientKey)
// compared with StoredKey in constant time. The derivation is xdg-go/scram's
// (what GetStoredCredentials computes for a new verifier). It always runs
// the full PBKDF2, so checking against mock credentials costs what a real
// check does.
func VerifyPassword(creds Credentials, password string) bool {
	// The iteration count comes from pg_authid, which a role sets for
	// itself (ALTER ROLE ... PASSWORD 'SCRAM-SHA-256$2147483647:...'):
	// uncapped, one login attempt by anyone who knows the name would cost
	// minutes of CPU. A verifier over the cap never matches; the capped work
	// is still done, so the answer takes as long as any other.
	overCap := creds.Iters > MaxVerifyIterations
	if overCap {
		creds.Iters = MaxVerifyIterations
	}
	c, err := scram.SHA256.NewClient("", password, "")
	if err != nil {
		// Like PostgreSQL's pg_saslprep callers: a password SASLprep
		// refuses (invalid UTF-8, prohibited or unassigned code points) is
		// used as it is, which is also what libpq hashes for it.
		c, _ = scram.SHA256.NewClientUnprepped("", password, "")
	}
	sc, err := c.GetStoredCredentialsWithError(creds.KeyFactors)
	if err != nil {
		return false
	}
	return hmac.Equal(sc.StoredKey, creds.StoredKey) && !overCap
}
