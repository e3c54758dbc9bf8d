package audit

import "regexp"

// Redacted replaces secrets removed by Redact.
const Redacted = "<redacted>"

var (
	// PASSWORD followed by a string constant: '...', E'...', "..." (not
	// valid SQL for passwords but redacted anyway), $$...$$ or $tag$...
	// (to the end of the text, since RE2 has no back-references). An
	// unterminated literal is redacted to the end of the text. Covers
	// ENCRYPTED PASSWORD and PASSWORD in CREATE/ALTER ROLE/USER.
	passwordRE = regexp.MustCompile(`(?is)(\bpassword\s+)(` +
		`[eE]'(?:[^'\\]|\\.|'')*(?:'|$)` +
		`|'(?:[^']|'')*(?:'|$)` +
		`|"(?:[^"]|"")*(?:"|$)` +
		`|\$\$.*?(?:\$\$|$)` +
		`|\$[A-Za-z_][A-Za-z0-9_]*\$.*` +
		`)`)
	// A JWT: three base64url segments, the header starting with eyJ ('{"').
	// The signature may be empty (alg "none").
	jwtRE = regexp.MustCompile(`\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*`)
	// A SCRAM client-final-message proof: p=<base64> after c=... (RFC 5802).
	scramRE = regexp.MustCompile(`(\bc=[A-Za-z0-9+/=]*,(?:[^,\s]*,)*?)p=[A-Za-z0-9+/]+=*`)
)

// Redact removes obvious secrets from free text before it is audited:
// PASSWORD '...' clauses in SQL (any case, any quoting, including ENCRYPTED
// PASSWORD), JWT-looking tokens and SCRAM client proofs. Each secret is
// replaced with Redacted. Redact is a best-effort net, not a parser: it
// cannot find secrets in arbitrary places (for example a password stored
// with UPDATE ... SET password = '...'), so audit the minimum text needed.
// Log.Write does not call Redact; callers must.
func Redact(s string) string {
	s = passwordRE.ReplaceAllString(s, "${1}"+Redacted)
	s = jwtRE.ReplaceAllString(s, Redacted)
	s = scramRE.ReplaceAllString(s, "${1}p="+Redacted)
	return s
}
