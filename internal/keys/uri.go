package keys

import (
	"net/url"
	"slices"
	"strings"
)

// redacted replaces every secret part of a key URI.
const redacted = "REDACTED"

// Schemes of the key URIs Open accepts.
const (
	// SchemeSystem is pgshield's system-managed key: a KEK file on the
	// local disk (see CreateSystemKEK).
	SchemeSystem = "pgshield-local"
	// SchemeBase64Key is localsecrets' key-in-the-URL scheme. For tests only:
	// the key itself is in the URL.
	SchemeBase64Key = "base64key"
	// SchemeAWSKMS is AWS KMS (gocloud.dev/secrets/awskms).
	SchemeAWSKMS = "awskms"
	// SchemeAzureKeyVault is Azure Key Vault (gocloud.dev/secrets/azurekeyvault).
	SchemeAzureKeyVault = "azurekeyvault"
	// SchemeGCPKMS is Google Cloud KMS (gocloud.dev/secrets/gcpkms).
	SchemeGCPKMS = "gcpkms"
	// SchemeHashiVault is HashiCorp Vault transit (gocloud.dev/secrets/hashivault).
	SchemeHashiVault = "hashivault"
)

// kmsSchemes are the schemes whose URL host and path only name a key.
var kmsSchemes = []string{SchemeSystem, SchemeAWSKMS, SchemeAzureKeyVault, SchemeGCPKMS, SchemeHashiVault}

// publicParams are query parameters whose values are kept by RedactURI: they
// choose a region, SDK or algorithm and carry no credential. Every other
// query value is redacted.
var publicParams = map[string]bool{
	"region":    true, // awskms
	"awssdk":    true, // awskms
	"profile":   true, // awskms: a profile name, not its secrets
	"algorithm": true, // azurekeyvault
	"engine":    true, // hashivault
}

// RedactURI returns uri in a form safe for logs, errors, status output and
// the on-disk envelope: user information and fragments are dropped, query
// values other than region/awssdk/profile/algorithm/engine become REDACTED,
// the key of a base64key:// URI becomes REDACTED, and a URI of an unknown
// scheme, or one that does not parse, keeps only its scheme. RedactURI is
// idempotent.
func RedactURI(uri string) string {
	u, err := url.Parse(uri)
	if err != nil || u.Scheme == "" {
		return schemeOnly(uri)
	}
	switch {
	case u.Scheme == SchemeBase64Key:
		if u.Host == "" && u.Opaque == "" && u.Path == "" && u.User == nil {
			return SchemeBase64Key + "://"
		}
		return SchemeBase64Key + "://" + redacted
	case slices.Contains(kmsSchemes, u.Scheme):
		if u.Opaque != "" {
			return u.Scheme + ":" + redacted
		}
		r := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path, RawPath: u.RawPath}
		if u.RawQuery != "" {
			q, err := url.ParseQuery(u.RawQuery)
			if err != nil {
				r.RawQuery = redacted + "=" + redacted
			} else {
				for name, vals := range q {
					if publicParams[name] {
						continue
					}
					for i := range vals {
						vals[i] = redacted
					}
				}
				r.RawQuery = q.Encode()
			}
		}
		return r.String()
	default:
		return u.Scheme + "://" + redacted
	}
}

// schemeOnly returns "scheme://REDACTED" for a URI that does not parse, or
// REDACTED when not even a plain scheme can be read from it.
func schemeOnly(uri string) string {
	scheme, _, ok := strings.Cut(uri, ":")
	if !ok || scheme == "" || !isSchemeName(scheme) {
		return redacted
	}
	return strings.ToLower(scheme) + "://" + redacted
}

func isSchemeName(s string) bool {
	for i, c := range s {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case i > 0 && ('0' <= c && c <= '9' || c == '+' || c == '-' || c == '.'):
		default:
			return false
		}
	}
	return true
}

// uriSecrets returns the substrings of uri that must never appear in an
// error: the URI itself, its user information, its query, the values of its
// query parameters (raw and escaped), and a base64key's key. Longest first.
func uriSecrets(uri string) []string {
	out := []string{uri}
	u, err := url.Parse(uri)
	if err != nil {
		return out
	}
	add := func(s string) {
		// Very short values (flags like "1") are no secret, and replacing
		// them everywhere would garble the message.
		if len(s) >= 4 && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	if u.User != nil {
		add(u.User.String())
		add(u.User.Username())
		if p, ok := u.User.Password(); ok {
			add(p)
			add(url.QueryEscape(p))
		}
	}
	if u.Scheme == SchemeBase64Key {
		add(u.Host)
		add(u.Opaque)
	}
	if u.RawQuery != "" {
		add(u.RawQuery)
		if q, err := url.ParseQuery(u.RawQuery); err == nil {
			for name, vals := range q {
				if publicParams[name] {
					continue
				}
				for _, v := range vals {
					add(v)
					add(url.QueryEscape(v))
					add(url.PathEscape(v))
				}
			}
		}
	}
	add(u.Fragment)
	slices.SortStableFunc(out, func(a, b string) int { return len(b) - len(a) })
	return out
}

// scrubbedError stands in for a driver error whose text quoted a secret
// part of a key URI. It keeps the message with the secrets replaced and the
// Kind of the original, but not the original error.
type scrubbedError struct {
	msg  string
	kind Kind
}

func (e *scrubbedError) Error() string { return e.msg }

// scrub returns err unchanged when its text quotes no secret part of uri,
// and otherwise a scrubbedError whose text has them replaced by REDACTED (the
// whole URI by its redacted form).
func scrub(err error, uri string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	secrets := uriSecrets(uri)
	clean := msg
	for _, s := range secrets {
		repl := redacted
		if s == uri {
			repl = RedactURI(uri)
		}
		clean = strings.ReplaceAll(clean, s, repl)
	}
	if clean == msg {
		return err
	}
	return &scrubbedError{msg: clean, kind: ErrorKind(err)}
}
