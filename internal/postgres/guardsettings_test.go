package postgres

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/pgshield/pgshield/internal/config"
)

// hostileNames are administrator names that an unquoted list mangles:
// spaces, dots, @, quotes, backslashes, commas, upper case and multibyte
// characters.
var hostileNames = []string{
	"Contoso DBAs", "Mary.Smith@Contoso.com", "O'Brien", `say "hi"`, `back\slash`,
	"Ünïcødé 管理者", "a,b",
}

// regressCluster is the configuration whose pgshield_guard lines
// pgext/pgshield_guard/regress.conf carries: the pg_regress suite then shows
// the real server protecting exactly these names.
func regressCluster() *Cluster {
	return &Cluster{Cfg: &config.Config{
		AdminUser: "pgadmin", ServiceRole: config.DefaultServiceRole, AdminPrincipals: hostileNames,
		Parameters: map[string]string{"pgshield.allowed_extensions": "citext,hstore,pg_stat_statements,uuid-ossp"},
	}}
}

func TestGuardSettingsRoundTrip(t *testing.T) {
	extra := []string{`'`, `"`, `\`, `\\'`, `''`, `""`, `\'`, "x\\n", "\\101", " lead", "trail ", "UPPER", "日本語"}
	c := regressCluster()
	c.Cfg.AdminPrincipals = append(slices.Clone(hostileNames), extra...)
	settings := parseConf(t, c.guardSettings())

	want := map[string][]string{
		"pgshield_guard.reserved_roles":       {"postgres", "pgshield_service", "pgshield_auth"},
		"pgshield_guard.reserved_memberships": {"pg_execute_server_program", "pg_read_server_files", "pg_write_server_files", "pg_write_all_data"},
		"pgshield_guard.admin_roles":          append([]string{"pgadmin"}, c.Cfg.AdminPrincipals...),
		"pgshield_guard.allowed_extensions":   {"citext", "hstore", "pg_stat_statements", "uuid-ossp"},
	}
	if len(settings) != len(want) {
		t.Fatalf("guardSettings wrote %d settings; want %d:\n%s", len(settings), len(want), c.guardSettings())
	}
	for _, gs := range c.GuardValues() {
		got, ok := settings[gs.Name]
		if !ok {
			t.Errorf("%s not written", gs.Name)
			continue
		}
		// What current_setting reports is what GuardValues promises the
		// daemon's read-back.
		if got != gs.Value {
			t.Errorf("%s reads back as %q; GuardValues says %q", gs.Name, got, gs.Value)
		}
		names, ok := splitIdentifierString(got)
		if !ok {
			t.Errorf("%s = %q does not parse as an identifier list", gs.Name, got)
			continue
		}
		if !slices.Equal(names, want[gs.Name]) {
			t.Errorf("%s parses as %q; want %q", gs.Name, names, want[gs.Name])
		}
	}

	// No extension allowed: an empty list, which parses as none.
	c.Cfg.Parameters = map[string]string{"pgshield.allowed_extensions": ""}
	if got := parseConf(t, c.guardSettings())["pgshield_guard.allowed_extensions"]; got != "" {
		t.Errorf("empty extension list written as %q", got)
	}
}

// TestGuardSettingsRegressConf: the lines the pg_regress suite starts its
// server with are the ones pgshield writes.
func TestGuardSettingsRegressConf(t *testing.T) {
	b, err := os.ReadFile("../../pgext/pgshield_guard/regress.conf")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	for _, l := range strings.Split(strings.TrimSpace(regressCluster().guardSettings()), "\n") {
		if strings.HasPrefix(l, "#") {
			continue
		}
		if !slices.Contains(lines, l) {
			t.Errorf("regress.conf lacks\n  %s", l)
		}
	}
}

// TestSplitIdentifierStringModel checks the test's model of PostgreSQL's
// SplitIdentifierString on the cases the finding was about.
func TestSplitIdentifierStringModel(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
		ok   bool
	}{
		{"", nil, true},
		{"  ", nil, true},
		{"a, B ,c", []string{"a", "b", "c"}, true},
		{`pgadmin,Contoso DBAs`, nil, false},
		{`pgadmin,Mary.Smith@Contoso.com`, []string{"pgadmin", "mary.smith@contoso.com"}, true},
		{`"Mary.Smith@Contoso.com"`, []string{"Mary.Smith@Contoso.com"}, true},
		{`"say ""hi""", "x"`, []string{`say "hi"`, "x"}, true},
		{`a"b`, []string{`a"b`}, true}, // an unquoted name ends only at a comma or space
		{`"a"b`, nil, false},
		{`"a`, nil, false},
		{`a,`, nil, false},
		{`,a`, nil, false},
		{`""`, []string{""}, true},
	} {
		got, ok := splitIdentifierString(tc.in)
		if ok != tc.ok || (ok && !slices.Equal(got, tc.want)) {
			t.Errorf("splitIdentifierString(%q) = %q, %v; want %q, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

// confLine is a postgresql.conf line "name = 'value'" as PostgreSQL's
// configuration lexer takes it: a quoted string is ' ... ' holding no
// newline, with backslash escapes and a doubled quote for a quote.
var confLine = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_.]*)\s*=\s*('(?:[^'\\\n]|\\.|'')*')\s*$`)

// parseConf parses the settings in a postgresql.conf fragment.
func parseConf(t *testing.T, conf string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, l := range strings.Split(conf, "\n") {
		if strings.TrimSpace(l) == "" || strings.HasPrefix(strings.TrimSpace(l), "#") {
			continue
		}
		m := confLine.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("PostgreSQL would not read %q", l)
		}
		out[m[1]] = gucScanstr(m[2])
	}
	return out
}

// gucScanstr is GUC_scanstr (guc-file.l): it unquotes a quoted value.
func gucScanstr(s string) string {
	s = s[1 : len(s)-1]
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\\' && i+1 < len(s):
			i++
			switch c := s[i]; c {
			case 'b':
				b.WriteByte('\b')
			case 'f':
				b.WriteByte('\f')
			case 'n':
				b.WriteByte('\n')
			case 'r':
				b.WriteByte('\r')
			case 't':
				b.WriteByte('\t')
			case '0', '1', '2', '3', '4', '5', '6', '7':
				v, k := 0, 0
				for ; k < 3 && i+k < len(s) && s[i+k] >= '0' && s[i+k] <= '7'; k++ {
					v = v<<3 + int(s[i+k]-'0')
				}
				i += k - 1
				b.WriteByte(byte(v))
			default:
				b.WriteByte(c)
			}
		case s[i] == '\'' && i+1 < len(s) && s[i+1] == '\'':
			i++
			b.WriteByte('\'')
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

// splitIdentifierString models PostgreSQL's SplitIdentifierString with ','
// as the separator: quoted names keep their case with "" for a quote;
// unquoted ones end at the separator or whitespace and are downcased (ASCII,
// as for UTF-8 databases); names are truncated to NAMEDATALEN-1 bytes.
func splitIdentifierString(s string) ([]string, bool) {
	isSpace := func(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' }
	i := 0
	for i < len(s) && isSpace(s[i]) {
		i++
	}
	if i == len(s) {
		return nil, true
	}
	var out []string
	for {
		var name string
		if s[i] == '"' {
			var b strings.Builder
			i++
			for {
				j := strings.IndexByte(s[i:], '"')
				if j < 0 {
					return nil, false
				}
				b.WriteString(s[i : i+j])
				i += j + 1
				if i < len(s) && s[i] == '"' {
					b.WriteByte('"')
					i++
					continue
				}
				break
			}
			name = b.String()
		} else {
			start := i
			for i < len(s) && s[i] != ',' && !isSpace(s[i]) {
				i++
			}
			if i == start {
				return nil, false
			}
			name = strings.Map(func(r rune) rune {
				if r >= 'A' && r <= 'Z' {
					return r + 'a' - 'A'
				}
				return r
			}, s[start:i])
		}
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		done := false
		switch {
		case i < len(s) && s[i] == ',':
			i++
			for i < len(s) && isSpace(s[i]) {
				i++
			}
		case i == len(s):
			done = true
		default:
			return nil, false
		}
		if len(name) > 63 {
			name = name[:63] // PostgreSQL cuts at a character boundary; names here are shorter
		}
		out = append(out, name)
		if done {
			return out, true
		}
		if i == len(s) {
			return nil, false // a separator with no name after it
		}
	}
}

func ExampleCluster_GuardValues() {
	for _, s := range regressCluster().GuardValues() {
		fmt.Printf("%s = '%s'\n", s.Name, confQuote(s.Value))
	}
	// Output:
	// pgshield_guard.reserved_roles = '"postgres","pgshield_service","pgshield_auth"'
	// pgshield_guard.reserved_memberships = '"pg_execute_server_program","pg_read_server_files","pg_write_server_files","pg_write_all_data"'
	// pgshield_guard.admin_roles = '"pgadmin","Contoso DBAs","Mary.Smith@Contoso.com","O''Brien","say ""hi""","back\\slash","Ünïcødé 管理者","a,b"'
	// pgshield_guard.allowed_extensions = '"citext","hstore","pg_stat_statements","uuid-ossp"'
}
