package config

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"unicode/utf8"
)

// Per-role and per-database pool modes (pgshield.pool_mode_overrides), as
// PgBouncer's pool_mode in [databases] and [users]: a role's mode beats its
// database's, which beats pgshield.pool_mode.
//
// The value is a comma-separated list of kind:name=mode, kind db or role,
// mode session, transaction or off:
//
//	db:reports=transaction, role:"Batch Jobs"=session
//
// Names are compared byte for byte with the role and database a client
// names in its startup packet, which are the catalog's names (no case
// folding: CREATE ROLE App makes app). A name that is not plain
// [A-Za-z0-9_$.-] is written in double quotes, "" for a quote. Names are
// never put in SQL: they are only compared.

// maxPoolOverrides bounds the list (each entry is a map entry held for the
// life of the parameters).
const maxPoolOverrides = 1000

// maxIdentLen is PostgreSQL's NAMEDATALEN - 1: no role or database has a
// longer name, so a longer one could never match.
const maxIdentLen = 63

var plainIdentRE = regexp.MustCompile(`^[A-Za-z0-9_$.-]+$`)

var poolModes = map[string]bool{"session": true, "transaction": true, "off": true}

// PoolOverrides maps role and database names to their pool mode.
type PoolOverrides struct {
	Roles, Databases map[string]string
}

// ModeFor is the pool mode of a client of role in database: the role's
// override, else the database's, else the global mode.
func (p PoolParams) ModeFor(role, database string) string {
	if m, ok := p.Overrides.Roles[role]; ok {
		return m
	}
	if m, ok := p.Overrides.Databases[database]; ok {
		return m
	}
	return p.Mode
}

// ParsePoolOverrides parses a pgshield.pool_mode_overrides value.
func ParsePoolOverrides(v string) (PoolOverrides, error) {
	o := PoolOverrides{Roles: map[string]string{}, Databases: map[string]string{}}
	s := strings.TrimSpace(v)
	for n := 0; s != ""; n++ {
		if n == maxPoolOverrides {
			return PoolOverrides{}, fmt.Errorf("more than %d entries", maxPoolOverrides)
		}
		kind, rest, ok := strings.Cut(s, ":")
		kind = strings.ToLower(strings.TrimSpace(kind))
		var m map[string]string
		switch {
		case !ok:
			return PoolOverrides{}, fmt.Errorf("entry %d: want db:NAME=MODE or role:NAME=MODE", n+1)
		case kind == "db" || kind == "database":
			kind, m = "db", o.Databases
		case kind == "role" || kind == "user":
			kind, m = "role", o.Roles
		default:
			return PoolOverrides{}, fmt.Errorf("entry %d: %q is neither db nor role", n+1, clip(kind))
		}
		name, rest, err := parseIdent(strings.TrimLeft(rest, " \t"))
		if err != nil {
			return PoolOverrides{}, fmt.Errorf("entry %d: %w", n+1, err)
		}
		rest = strings.TrimLeft(rest, " \t")
		if !strings.HasPrefix(rest, "=") {
			return PoolOverrides{}, fmt.Errorf("entry %d (%s:%s): want =MODE after the name", n+1, kind, quoteIdent(name))
		}
		mode, tail, _ := strings.Cut(rest[1:], ",")
		mode = strings.ToLower(strings.TrimSpace(mode))
		if !poolModes[mode] {
			return PoolOverrides{}, fmt.Errorf("entry %d (%s:%s): mode %q is not session, transaction or off", n+1, kind, quoteIdent(name), clip(mode))
		}
		if _, dup := m[name]; dup {
			return PoolOverrides{}, fmt.Errorf("%s:%s is named twice", kind, quoteIdent(name))
		}
		m[name] = mode
		s = strings.TrimSpace(tail)
		if s == "" && strings.HasSuffix(strings.TrimSpace(rest), ",") {
			return PoolOverrides{}, errors.New("an empty entry after the last comma")
		}
	}
	return o, nil
}

// parseIdent reads a plain or double-quoted name at the start of s.
func parseIdent(s string) (name, rest string, err error) {
	if strings.HasPrefix(s, `"`) {
		var b strings.Builder
		for i := 1; i < len(s); i++ {
			if s[i] != '"' {
				b.WriteByte(s[i])
				continue
			}
			if i+1 < len(s) && s[i+1] == '"' {
				b.WriteByte('"')
				i++
				continue
			}
			name, rest = b.String(), s[i+1:]
			return name, rest, checkIdent(name)
		}
		return "", "", errors.New("a quoted name without its closing quote")
	}
	i := 0
	for i < len(s) && (s[i] == '_' || s[i] == '$' || s[i] == '.' || s[i] == '-' ||
		('a' <= s[i] && s[i] <= 'z') || ('A' <= s[i] && s[i] <= 'Z') || ('0' <= s[i] && s[i] <= '9')) {
		i++
	}
	if i == 0 {
		return "", "", errors.New(`want a name (in double quotes unless it is only letters, digits and _$.-)`)
	}
	return s[:i], s[i:], checkIdent(s[:i])
}

func checkIdent(name string) error {
	switch {
	case name == "":
		return errors.New("an empty name")
	case len(name) > maxIdentLen:
		return fmt.Errorf("a name of %d bytes (PostgreSQL's names have at most %d)", len(name), maxIdentLen)
	case !utf8.ValidString(name):
		return errors.New("a name that is not UTF-8")
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return errors.New("a control character in a name")
		}
	}
	return nil
}

func quoteIdent(name string) string {
	if plainIdentRE.MatchString(name) {
		return name
	}
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
}

// clip shortens a piece of a refused value for its error message.
func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// String is the canonical form: databases then roles, each sorted by name.
func (o PoolOverrides) String() string {
	var out []string
	for _, kind := range []struct {
		prefix string
		m      map[string]string
	}{{"db:", o.Databases}, {"role:", o.Roles}} {
		names := make([]string, 0, len(kind.m))
		for n := range kind.m {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			out = append(out, kind.prefix+quoteIdent(n)+"="+kind.m[n])
		}
	}
	return strings.Join(out, ", ")
}

func checkPoolOverrides(v string) (string, error) {
	o, err := ParsePoolOverrides(v)
	if err != nil {
		return "", err
	}
	return o.String(), nil
}
