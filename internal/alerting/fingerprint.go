package alerting

import "strings"

// A fingerprint is a startup packet's shape: its parameter keys in the
// order sent, some with the value they must have. Written as
//
//	[NAME:]KEY[=VALUE],KEY[=VALUE],...
//
// NAME is what the alert calls the tool. Only the values of user,
// database, application_name and client_encoding can be compared: the
// gateway copies no other value into its records (FingerprintValueKeys).
//
// The defaults are shapes that an attack tool's own code sends and that
// no honest driver produces (see fingerprint_test.go for the drivers'
// shapes they are tested against). Tools that connect through libpq or a
// driver (hydra, medusa, patator, sqlmap, Metasploit's postgres-pr) send
// what that driver sends and are matched by application_name only.
const DefaultHarmfulFingerprints = "" +
	// nmap: nselib/pgsql.lua detectVersion probes the protocol version
	// with v3.sendStartup(socket, "versionprobe", "versionprobe") before
	// every pgsql-brute run (scripts/pgsql-brute.nse, unless
	// pgsql.version is given), in plaintext.
	"nmap:user=versionprobe,database=versionprobe;" +
	// ncrack: modules/ncrack_psql.cc writes a fixed packet: user, then
	// database postgres, application_name psql, client_encoding UTF8.
	// psql itself always sends fallback_application_name (libpq's
	// fe-connect.c, psql's startup.c), so this key list is not psql's.
	"ncrack:user,database=postgres,application_name=psql,client_encoding=UTF8"

// FingerprintValueKeys are the keys a fingerprint may give a value for.
var FingerprintValueKeys = []string{"user", "database", "application_name", "client_encoding"}

// Startup is what a fingerprint is compared with: the keys in the order
// sent and the values the gateway records.
type Startup struct {
	Keys                                        string // comma-separated
	User, Database, Application, ClientEncoding string
}

func (s Startup) value(key string) (string, bool) {
	switch key {
	case "user":
		return s.User, true
	case "database":
		return s.Database, true
	case "application_name":
		return s.Application, true
	case "client_encoding":
		return s.ClientEncoding, true
	}
	return "", false
}

// MatchFingerprint returns the name of the first fingerprint s matches
// (its key list when it has no name), or "".
func MatchFingerprint(s Startup, fps []string) string {
	if s.Keys == "" {
		return ""
	}
	for _, fp := range fps {
		name, shape, named := strings.Cut(fp, ":")
		if !named {
			name, shape = fp, fp
		}
		if matchShape(s, shape) {
			return name
		}
	}
	return ""
}

func matchShape(s Startup, shape string) bool {
	elems := strings.Split(shape, ",")
	keys := strings.Split(s.Keys, ",")
	if len(elems) != len(keys) {
		return false
	}
	for i, e := range elems {
		k, want, valued := strings.Cut(e, "=")
		if k != keys[i] {
			return false
		}
		if valued {
			got, ok := s.value(k)
			if !ok || got != want {
				return false
			}
		}
	}
	return true
}
