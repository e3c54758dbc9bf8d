package patroni

import (
	"fmt"
	"strings"
)

// ParseConf reads postgresql.conf lines (name = value, comments, blank
// lines) into raw values: quotes removed and escapes undone, as Patroni
// wants them (it quotes and escapes each value again when it writes
// postgresql.conf). A name given twice keeps its last value, as
// PostgreSQL does.
func ParseConf(text string) (map[string]string, error) {
	out := map[string]string{}
	for n, line := range strings.Split(text, "\n") {
		s := strings.TrimSpace(line)
		if s == "" || s[0] == '#' {
			continue
		}
		name, rest, ok := strings.Cut(s, "=")
		if !ok {
			// PostgreSQL allows "name value"; pgshield never writes it.
			return nil, fmt.Errorf("line %d: no '=' in %q", n+1, s)
		}
		name = strings.ToLower(strings.TrimSpace(name))
		if name == "" || strings.ContainsAny(name, " \t'") {
			return nil, fmt.Errorf("line %d: bad parameter name %q", n+1, name)
		}
		rest = strings.TrimSpace(rest)
		var val string
		if strings.HasPrefix(rest, "'") {
			var b strings.Builder
			closed := false
			for i := 1; i < len(rest); i++ {
				switch ch := rest[i]; {
				case ch == '\\' && i+1 < len(rest):
					i++
					b.WriteByte(rest[i])
				case ch == '\'' && i+1 < len(rest) && rest[i+1] == '\'':
					i++
					b.WriteByte('\'')
				case ch == '\'':
					closed = true
					if tail := strings.TrimSpace(rest[i+1:]); tail != "" && tail[0] != '#' {
						return nil, fmt.Errorf("line %d: text after the quoted value of %s", n+1, name)
					}
				default:
					b.WriteByte(ch)
				}
				if closed {
					break
				}
			}
			if !closed {
				return nil, fmt.Errorf("line %d: unterminated quote in the value of %s", n+1, name)
			}
			val = b.String()
		} else {
			val, _, _ = strings.Cut(rest, "#")
			val = strings.TrimSpace(val)
			if val == "" || strings.ContainsAny(val, " \t") {
				return nil, fmt.Errorf("line %d: bad value for %s", n+1, name)
			}
		}
		out[name] = val
	}
	return out, nil
}
