package audit

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzVerify checks that Verify, Search and Open never panic or fail on
// arbitrary file contents, and that Open keeps a verifying log verifying.
func FuzzVerify(f *testing.F) {
	f.Add([]byte(""))
	f.Add([]byte("{}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, currentName), data, 0o600); err != nil {
			t.Fatal(err)
		}
		rep, err := Verify(dir)
		if err != nil {
			t.Fatalf("Verify() error = %v", err)
		}
		if rep.OK && len(data) > 0 && rep.Records == 0 {
			t.Fatalf("Verify() = %+v on %q; want records or a problem", rep, data)
		}
		if _, err := Search(dir, Filter{}); err != nil {
			t.Fatalf("Search() error = %v", err)
		}
		l, err := Open(dir)
		if err != nil {
			t.Fatalf("Open() error = %v", err)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		// Open seals damage at the tail only; it must never break a log
		// that verified.
		after, err := Verify(dir)
		if err != nil || (rep.OK && !after.OK) {
			t.Fatalf("Verify() after Open = %+v, %v; before = %+v", after, err, rep)
		}
	})
}

// redactForms put a secret where Redact must find it; %s is the secret,
// already escaped for its quoting.
var redactForms = []struct {
	format string
	escape func(string) string
}{
	{"ALTER ROLE r PASSWORD '%s'", func(s string) string { return strings.ReplaceAll(s, "'", "''") }},
	{"create user u with encrypted password E'%s' valid until 'infinity'", func(s string) string {
		return strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), "'", `\'`)
	}},
	{"ALTER ROLE r PASSWORD $$%s$$;", func(s string) string { return s }},
	{"SELECT dblink_connect('host=h password=%s dbname=d')", func(s string) string { return s }},
	{"SELECT pgp_sym_encrypt(c, '%s') FROM t", func(s string) string { return strings.ReplaceAll(s, "'", "''") }},
	// A statement in a literal, built by format() or ||, a quoted or
	// qualified pgcrypto name, a U&'' literal.
	{"DO $$ BEGIN EXECUTE 'ALTER ROLE r PASSWORD ''%s'''; END $$", func(s string) string { return strings.ReplaceAll(s, "'", "''''") }},
	{`DO $$ BEGIN EXECUTE E'ALTER ROLE r PASSWORD \'%s\''; END $$`, func(s string) string {
		return strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), "'", `\'\'`)
	}},
	{"SELECT format('ALTER ROLE %%I PASSWORD %%L', 'r', '%s')", func(s string) string { return strings.ReplaceAll(s, "'", "''") }},
	{"EXECUTE 'ALTER ROLE r PASSWORD ' || '''%s''';", func(s string) string { return strings.ReplaceAll(s, "'", "''''") }},
	{`SELECT "crypt"('%s', gen_salt('bf'))`, func(s string) string { return strings.ReplaceAll(s, "'", "''") }},
	{"SELECT public . CRYPT /* c */ ('%s', x)", func(s string) string { return strings.ReplaceAll(s, "'", "''") }},
	{"ALTER ROLE r PASSWORD U&'%s' LOGIN", func(s string) string {
		return strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), "'", "''")
	}},
}

// FuzzRedact checks that Redact never panics and that a secret placed in
// any of redactForms, between arbitrary text, never comes out.
func FuzzRedact(f *testing.F) {
	f.Add("SELECT 1; ", "Unique-Secret-42", " -- end", uint8(0))
	f.Add("", "it's", "", uint8(1))
	f.Add("/* ", "s3cr3t", " */", uint8(2))
	f.Add("x'", "hunter22", "'", uint8(3))
	f.Add("E'", "k3y", `\'`, uint8(4))
	f.Add("SELECT 1; ", "Unique-Secret-42", "", uint8(5))
	f.Add("", "it's-S3cr3t", "", uint8(6))
	f.Add("", `back\sl'ash`, "", uint8(7))
	f.Add("x ", "S3cr3t-%L-x", "", uint8(8))
	f.Add("", "S3cr3t''", "", uint8(9))
	f.Add("'", "S3cr3t", "", uint8(10))
	f.Add("--", "S3cr3t", "", uint8(11))
	f.Add("", `\0041S3cr3t`, "", uint8(11))
	f.Add("-- ", "S3cr3t", "", uint8(5))
	f.Fuzz(func(t *testing.T, prefix, secret, suffix string, form uint8) {
		out := Redact(prefix + secret + suffix) // must not panic
		_ = out
		fm := redactForms[int(form)%len(redactForms)]
		// Secrets the form cannot carry, or that are too short to tell
		// from the surrounding text.
		if len(secret) < 4 || strings.ContainsAny(secret, "\x00\n\r") ||
			strings.Contains(fm.format, "$") && strings.Contains(secret, "$") ||
			strings.Contains(fm.format, "dblink") && strings.ContainsAny(secret, " '\"),;\\\t\f\v") ||
			strings.Contains(prefix+suffix+fm.format+Redacted, secret) {
			return
		}
		in := prefix + "\n" + fmt.Sprintf(fm.format, fm.escape(secret)) + "\n" + suffix
		if out := Redact(in); strings.Contains(out, secret) {
			t.Fatalf("Redact(%q) = %q; the secret %q is still there", in, out, secret)
		}
	})
}

// FuzzParseServerLogLine checks that any line PostgreSQL's log could carry
// becomes an event that encodes, that only a line with pgaudit's source
// location becomes a pgaudit record, and that a password in a jsonlog
// statement or pgaudit record never survives. testdata/fuzz holds real
// lines (testdata/pglog) as seeds, forged pgaudit records among them.
func FuzzParseServerLogLine(f *testing.F) {
	for _, s := range []string{jsonPgauditRead, jsonFailedAlter, jsonSyntaxError, jsonBindParams, "", "{", "plain text", `{"message":"AUDIT: "}`} {
		f.Add([]byte(s), "Unique-Secret-42")
	}
	f.Fuzz(func(t *testing.T, line []byte, secret string) {
		now := time.Unix(0, 0)
		e := ParseServerLogLine(line, now)
		if _, _, err := encode(1, zeroHash, e); err != nil {
			t.Fatalf("encode(ParseServerLogLine(%q)) error = %v", line, err)
		}
		if e.Type == TypePostgresAudit {
			var j pgJSON
			if json.Unmarshal(line, &j) != nil || j.FileName != "pgaudit.c" || j.FuncName != "log_audit_event" {
				t.Fatalf("ParseServerLogLine(%q) is a pgaudit record without pgaudit's location", line)
			}
		}
		if len(secret) < 4 || strings.ContainsAny(secret, "'\\\"\x00\n\r,") || !utf8.ValidString(secret) ||
			strings.Contains("ALTER ROLE r PASSWORD AUDIT: SESSION,1,1,ROLE,,,<not logged> error_severity ERROR statement message LOG"+
				Redacted+zeroHash+"1970-01-01T00:00:00Z", secret) {
			return
		}
		stmt := "ALTER ROLE r PASSWORD '" + secret + "'"
		do := "DO $x$ BEGIN EXECUTE 'ALTER ROLE r PASSWORD ''" + secret + "'''; END $x$"
		if strings.Contains(secret, "$x$") {
			do = stmt
		}
		fm := "SELECT format('ALTER ROLE %I PASSWORD %L', 'r', '" + secret + "')"
		for _, l := range []string{
			fmt.Sprintf(`{"error_severity":"ERROR","message":%q,"statement":%q}`, "near \""+secret+"\"", stmt),
			fmt.Sprintf(`{"error_severity":"LOG","message":%q}`, "AUDIT: SESSION,1,1,ROLE,ALTER ROLE,,,"+pgauditCSV(stmt)+",<not logged>"),
			fmt.Sprintf(`{"error_severity":"LOG","message":%q,"func_name":"log_audit_event","file_name":"pgaudit.c"}`,
				"AUDIT: SESSION,1,1,FUNCTION,DO,,,"+pgauditCSV(do)+",<none>"),
			fmt.Sprintf(`{"error_severity":"ERROR","message":%q,"statement":%q}`, "near \"'"+secret+"'\"", fm),
		} {
			b, _, err := encode(1, zeroHash, ParseServerLogLine([]byte(l), now))
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(b), secret) {
				t.Fatalf("ParseServerLogLine(%s) = %s; the secret is still there", l, b)
			}
		}
	})
}

// FuzzParseCSV checks pgaudit's CSV round-trips through parseCSV.
func FuzzParseCSV(f *testing.F) {
	f.Add("SESSION", "select 1, \"a\"", "<none>")
	f.Add("", "", "")
	f.Add("a\nb", ",", "\"")
	f.Fuzz(func(t *testing.T, a, b, c string) {
		parseCSV(a + b + c) // must not panic
		line := pgauditCSV(a) + "," + pgauditCSV(b) + "," + pgauditCSV(c)
		got, ok := parseCSV(line)
		if !ok || len(got) != 3 || got[0] != a || got[1] != b || got[2] != c {
			t.Fatalf("parseCSV(%q) = %q, %v; want [%q %q %q]", line, got, ok, a, b, c)
		}
	})
}
