package pgbackend

import "regexp"

// plainName is a lower-case SQL identifier that needs no quoting.
var plainName = regexp.MustCompile(`^[a-z_][a-z0-9_$]*$`)

// TokenShapedName reports whether name is one SQL must quote (upper case,
// '@', '.', '-', space, quotes, non-ASCII, ...), as identity-provider names
// are. With both token and password logins on, the gateway asks a
// token-shaped name for a token (cleartext, over TLS) and any other name for
// SCRAM: the first authentication request then depends on the name alone,
// never on the catalog, so it does not reveal whether a role is a principal.
func TokenShapedName(name string) bool { return !plainName.MatchString(name) }
