package audit

import (
	"bufio"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The password corpus: every combination of a way to write a secret into
// SQL, generated, so that a new form is one more line here rather than
// one more hand-written case. Each secret is distinctive ("S3cr3t-0042",
// with an apostrophe and a backslash before "T41l-0042" when the quoting
// has to escape them) and must appear nowhere in what comes out.

type corpusCase struct {
	name   string   // how the secret was put in
	sql    string   // the statement the client sends
	inner  string   // the statement it makes PostgreSQL run (EXECUTE), if another
	marks  []string // substrings of the secret that must not survive
	echoes []string // tokens holding the secret that an error may quote
}

// corpusSecret is secret n: plain, or tricky (with ' and \ inside).
func corpusSecret(n int, tricky bool) (string, []string) {
	head, tail := fmt.Sprintf("3cr3t-%04d", n), fmt.Sprintf("T41l-%04d", n)
	if tricky {
		return "S" + head + `'q\` + tail, []string{head, tail}
	}
	return "S" + head + "-" + tail, []string{head, tail}
}

// Ways to write a string constant, each able to carry ' and \.
var corpusLiterals = []struct {
	name  string
	quote func(string) string
}{
	{"plain", func(v string) string { return "'" + strings.ReplaceAll(v, "'", "''") + "'" }},
	{"E-backslash", func(v string) string {
		return "E'" + strings.ReplaceAll(strings.ReplaceAll(v, `\`, `\\`), "'", `\'`) + "'"
	}},
	{"E-doubled", func(v string) string {
		return "e'" + strings.ReplaceAll(strings.ReplaceAll(v, `\`, `\\`), "'", "''") + "'"
	}},
	{"dollar", func(v string) string { return "$$" + v + "$$" }},
	{"tagged", func(v string) string { return "$pw$" + v + "$pw$" }},
	{"unicode", func(v string) string {
		// The S spelled \0053, so the text never holds the secret whole.
		v = strings.ReplaceAll(strings.ReplaceAll(v, `\`, `\\`), "'", `\0027`)
		return `U&'\0053` + v[1:] + "'"
	}},
}

// Ways to have PostgreSQL run a statement: as sent, or through EXECUTE in
// a DO block. tokens are the constants the wrapping made (the EXECUTE
// argument, the DO body), which an error message may quote whole.
var corpusWrappers = []struct {
	name string
	wrap func(stmt string) (sql string, tokens []string, ok bool)
}{
	{"plain", func(s string) (string, []string, bool) { return s, nil, true }},
	{"DO EXECUTE ''", func(s string) (string, []string, bool) {
		return doExecute("'" + strings.ReplaceAll(s, "'", "''") + "'")
	}},
	{"DO EXECUTE $x$", func(s string) (string, []string, bool) {
		if strings.Contains(s, "$x$") {
			return "", nil, false
		}
		return doExecute("$x$" + s + "$x$")
	}},
	{"DO EXECUTE E''", func(s string) (string, []string, bool) {
		return doExecute("E'" + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), "'", `\'`) + "'")
	}},
	{"DO DO EXECUTE ''", func(s string) (string, []string, bool) {
		inner, toks, ok := doExecuteTag("'"+strings.ReplaceAll(s, "'", "''")+"'", "$in$")
		if !ok {
			return "", nil, false
		}
		outer, more, ok := doExecute("'" + strings.ReplaceAll(inner, "'", "''") + "'")
		return outer, append(toks, more...), ok
	}},
}

// doExecute makes DO <tag> BEGIN EXECUTE lit; END <tag>, with a dollar
// tag that lit lacks.
func doExecute(lit string) (string, []string, bool) {
	for _, tag := range []string{"$$", "$do$", "$outer$"} {
		if s, toks, ok := doExecuteTag(lit, tag); ok {
			return s, toks, true
		}
	}
	return "", nil, false
}

func doExecuteTag(lit, tag string) (string, []string, bool) {
	if strings.Contains(lit, tag) {
		return "", nil, false
	}
	body := tag + " BEGIN EXECUTE " + lit + "; END " + tag
	return "DO " + body + ";", []string{lit, body}, true
}

// corpusRoleHeads are the statements that set a password, up to PASSWORD.
func corpusRoleHeads() []string {
	var out []string
	for _, verb := range []string{"CREATE ROLE", "ALTER ROLE", "alter user", "Create User"} {
		for _, with := range []string{"", " WITH"} {
			for _, enc := range []string{"", " ENCRYPTED"} {
				out = append(out, verb+" r"+with+enc+" PASSWORD")
			}
		}
	}
	return out
}

// corpusCryptoNames spell a function name as SQL allows.
func corpusCryptoNames(name string) []string {
	return []string{name, strings.ToUpper(name), `"` + name + `"`, "public." + name,
		`"public"."` + name + `"`, "ext . " + name, name + " /* c */ ", name + "\n"}
}

func passwordCorpus() []corpusCase {
	var cases []corpusCase
	n := 0
	next := func() (string, []string) {
		n++
		return corpusSecret(n, n%2 == 0)
	}
	addWrapped := func(name, stmt, inner string, marks []string, lit string, wrappers int) {
		for _, w := range corpusWrappers[:wrappers] {
			s, toks, ok := w.wrap(stmt)
			if !ok {
				continue
			}
			in := inner
			if w.name != "plain" && in == "" {
				in = stmt
			}
			cases = append(cases, corpusCase{name + " / " + w.name, s, in, marks, append([]string{lit}, toks...)})
		}
	}

	// The secret as the value of PASSWORD, in every quoting.
	for _, head := range corpusRoleHeads() {
		for _, lit := range corpusLiterals {
			for _, tail := range []string{"", " VALID UNTIL 'infinity'", " LOGIN;"} {
				v, marks := next()
				stmt := head + " " + lit.quote(v) + tail
				addWrapped(head+" "+lit.name, stmt, "", marks, lit.quote(v), len(corpusWrappers))
			}
		}
	}

	// The statement built from pieces: format() and concatenation.
	for _, head := range corpusRoleHeads() {
		verb, opts, _ := strings.Cut(strings.TrimSuffix(head, " PASSWORD"), " r")
		for _, lit := range corpusLiterals[:4] {
			for _, build := range []struct {
				name  string
				value func(v string) string // the constant, if not the secret alone
				expr  func(lit string) string
			}{
				{"format %L", nil, func(l string) string {
					return "format('" + verb + " %I" + opts + " PASSWORD %L', 'r', " + l + ")"
				}},
				{"format %s", nil, func(l string) string {
					return "format('" + verb + " r" + opts + " PASSWORD %s', quote_literal(" + l + "))"
				}},
				{"format '%s'", nil, func(l string) string {
					return "format('" + verb + " %I" + opts + " PASSWORD ''%s''', 'r', " + l + ")"
				}},
				{"format %2$L", nil, func(l string) string {
					return "format('" + verb + " %1$I" + opts + " PASSWORD %2$L VALID UNTIL %3$L', 'r', " + l + ", 'infinity')"
				}},
				{"format %1$s", nil, func(l string) string {
					return "format('%2$s %3$I" + opts + " PASSWORD %1$L', " + l + ", '" + verb + "', 'r')"
				}},
				{"|| quote_literal", nil, func(l string) string {
					return "'" + verb + " r" + opts + " PASSWORD ' || quote_literal(" + l + ")"
				}},
				{"|| '''...'''", func(v string) string { return "'" + strings.ReplaceAll(v, "'", "''") + "'" }, func(l string) string {
					return "'" + verb + " r" + opts + " PASSWORD ' || " + l
				}},
				{"''' || ... || '''", func(v string) string { return strings.ReplaceAll(v, "'", "''") }, func(l string) string {
					return "'" + verb + " r" + opts + " PASSWORD ''' || " + l + " || ''''"
				}},
				{"concat()", nil, func(l string) string {
					return "concat('" + verb + " r" + opts + " PASSWORD ', quote_literal(" + l + "))"
				}},
			} {
				v, marks := next()
				name := head + " " + build.name + " " + lit.name
				innerLit := corpusLiterals[0].quote(v)
				inner := verb + " r" + opts + " PASSWORD " + innerLit
				c := v
				if build.value != nil {
					c = build.value(v)
				}
				written := lit.quote(c)
				expr := build.expr(written)
				echoes := []string{written, innerLit}
				if s, toks, ok := doExecute(expr); ok {
					cases = append(cases, corpusCase{name + " / DO EXECUTE", s, inner, marks, append(echoes, toks[1])})
				}
				cases = append(cases, corpusCase{name + " / SELECT", "SELECT " + expr + ";", "", marks, echoes})
			}
		}
	}

	// pgcrypto: the arguments that are keys or passwords.
	for _, call := range []struct {
		name string
		args func(key string) string
	}{
		{"crypt", func(k string) string { return k + ", gen_salt('bf')" }},
		{"crypt", func(k string) string { return k + ", '$2a$06$abcdefghijklmnopqrstuv'" }},
		{"pgp_sym_encrypt", func(k string) string { return "'data', " + k }},
		{"pgp_sym_encrypt_bytea", func(k string) string { return "'\\x00'::bytea, " + k + ", 'cipher-algo=aes256'" }},
		{"pgp_sym_decrypt", func(k string) string { return "c, " + k }},
		{"pgp_sym_decrypt_bytea", func(k string) string { return "c, " + k + ", 'cipher-algo=aes256'" }},
		{"pgp_pub_encrypt", func(k string) string { return k + ", dearmor(pub)" }},
		{"pgp_pub_encrypt_bytea", func(k string) string { return "c, dearmor(pub), " + k }},
		{"pgp_pub_decrypt", func(k string) string { return "c, dearmor(priv), " + k }},
		{"pgp_pub_decrypt_bytea", func(k string) string { return "c, dearmor(" + k + ")" }},
		{"hmac", func(k string) string { return "'data', " + k + ", 'sha256'" }},
		{"encrypt", func(k string) string { return "'data', " + k + ", 'aes'" }},
		{"decrypt", func(k string) string { return "c, " + k + ", 'aes'" }},
		{"encrypt_iv", func(k string) string { return "'data', " + k + ", 'iv', 'aes'" }},
		{"decrypt_iv", func(k string) string { return "c, " + k + ", 'iv', 'aes-cbc'" }},
		{"digest", func(k string) string { return k + ", 'sha256'" }},
		{"dearmor", func(k string) string { return k }},
		{"armor", func(k string) string { return k + "::bytea" }},
		{"pgp_key_id", func(k string) string { return "dearmor(" + k + ")" }},
	} {
		for _, fn := range corpusCryptoNames(call.name) {
			for _, lit := range []int{0, 1, 3} {
				l := corpusLiterals[lit]
				v, marks := next()
				stmt := "SELECT " + fn + "(" + call.args(l.quote(v)) + ") FROM t;"
				addWrapped(call.name+" "+fn+" "+l.name, stmt, "", marks, l.quote(v), 3)
			}
		}
	}
	return cases
}

// corpusCarriers are the jsonlog lines a statement reaches the audit log
// in: pgaudit's record of it (proven or not), the statement of an error
// that echoes a token holding the secret, and, for EXECUTE, pgaudit's
// record of the statement run and an error inside it (internal query,
// "SQL statement" context).
func corpusCarriers(c corpusCase) []string {
	q := func(s string) string {
		b, _ := json.Marshal(s)
		return string(b)
	}
	audit := "AUDIT: SESSION,1,1,ROLE,ALTER ROLE,,," + pgauditCSV(c.sql) + ",<none>"
	lines := []string{
		`{"error_severity":"LOG","message":` + q(audit) + `,"func_name":"log_audit_event","file_name":"pgaudit.c"}`,
		`{"error_severity":"LOG","message":` + q(audit) + `}`,
	}
	for _, echo := range c.echoes {
		// Only the outer statement to learn the secret from, whichever
		// level of quoting the echo comes from.
		lines = append(lines, `{"error_severity":"ERROR","state_code":"42601","message":`+q(`syntax error at or near "`+echo+`"`)+
			`,"statement":`+q(c.sql)+`}`)
	}
	if c.inner != "" {
		lines = append(lines,
			`{"error_severity":"LOG","message":`+q("AUDIT: SESSION,1,2,ROLE,ALTER ROLE,,,"+pgauditCSV(c.inner)+",<none>")+
				`,"func_name":"log_audit_event","file_name":"pgaudit.c"}`,
			`{"error_severity":"ERROR","state_code":"42710","message":"role \"r\" already exists","internal_query":`+q(c.inner)+
				`,"context":`+q(`SQL statement "`+c.inner+`"`+"\nPL/pgSQL function inline_code_block line 1 at EXECUTE")+
				`,"statement":`+q(c.sql)+`}`)
	}
	return lines
}

func TestRedactPasswordCorpus(t *testing.T) {
	cases := passwordCorpus()
	if len(cases) < 1000 {
		t.Fatalf("corpus has %d cases; the generator lost some", len(cases))
	}
	t.Logf("%d statements", len(cases))
	if path := os.Getenv("PGSHIELD_WRITE_PASSWORD_CORPUS"); path != "" {
		// How testdata/password_corpus.jsonl.gz was made: run this SQL
		// against PostgreSQL with pgaudit (see its README).
		var b strings.Builder
		for i, c := range cases {
			if i%7 == 0 {
				fmt.Fprintf(&b, "-- %s\n%s\n", strings.ReplaceAll(c.name, "\n", `\n`), strings.TrimSuffix(c.sql, ";")+";")
			}
		}
		if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Unix(0, 0)
	failed := 0
	for _, c := range cases {
		leaked := func(where, out string) bool {
			for _, m := range c.marks {
				if strings.Contains(out, m) {
					if failed++; failed <= 20 {
						t.Errorf("%s: %s leaks %q:\n  in:  %s\n  out: %s", c.name, where, m, c.sql, out)
					}
					return true
				}
			}
			return false
		}
		if leaked("Redact", Redact(c.sql)) {
			continue
		}
		if c.inner != "" && leaked("Redact(inner)", Redact(c.inner)) {
			continue
		}
		for _, line := range corpusCarriers(c) {
			b, _, err := encode(1, zeroHash, ParseServerLogLine([]byte(line), now))
			if err != nil {
				t.Fatal(err)
			}
			if leaked("ParseServerLogLine("+line+")", string(b)) {
				break
			}
		}
	}
	if failed > 20 {
		t.Errorf("... %d leaks in all", failed)
	}
}

// Statements without secrets keep their text.
func TestRedactKeepsHarmless(t *testing.T) {
	for _, s := range []string{
		"SELECT 'password'",
		"SELECT 'password', 'ALTER ROLE r VALID UNTIL ''x''' FROM t",
		"ALTER ROLE r VALID UNTIL 'x'",
		"ALTER ROLE r LOGIN CONNECTION LIMIT 3",
		"COMMENT ON ROLE r IS 'password rotated monthly'",
		"SELECT format('ALTER ROLE %I VALID UNTIL %L', 'r', 'infinity')",
		"SELECT format('%s-%s', 'a', 'b')",
		"SELECT 'ALTER ROLE r' || ' LOGIN'",
		"DO $$ BEGIN EXECUTE 'ALTER ROLE r VALID UNTIL ''infinity'''; END $$",
		"SELECT gen_salt('bf'), gen_random_uuid()",
		"SELECT rolname FROM pg_authid WHERE rolpassword IS NULL",
		"ALTER ROLE r PASSWORD NULL",
		"ALTER ROLE r PASSWORD $1",
		"SELECT E'a\\'b', U&'d\\0061t\\+000061', $q$x$q$",
		"/* nightly */ SELECT 1 -- done",
	} {
		if got := Redact(s); got != s {
			t.Errorf("Redact(%q) = %q; want it unchanged", s, got)
		}
	}
	// Over-redaction, by design: every literal in a pgcrypto call (the
	// algorithm names and gen_salt's argument too), and every literal
	// after PASSWORD in a role statement up to the next option.
	for in, want := range map[string]string{
		"SELECT crypt('S3cr3t', gen_salt('bf'))":                "SELECT crypt(<redacted>, gen_salt(<redacted>))",
		"SELECT hmac('data', 'S3cr3t', 'sha256')":               "SELECT hmac(<redacted>, <redacted>, <redacted>)",
		"ALTER ROLE r PASSWORD 'S3cr3t' 'oops' VALID UNTIL 'x'": "ALTER ROLE r PASSWORD <redacted> VALID UNTIL 'x'",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q; want %q", in, got, want)
		}
	}
	// Verifiers (what \password sends) go, and the statement stays whole.
	for _, v := range []string{"SCRAM-SHA-256$4096:c2FsdHNhbHQ=$c3RvcmVka2V5:c2VydmVya2V5", "md5" + strings.Repeat("0123456789abcdef", 2)} {
		for _, s := range []string{
			"ALTER ROLE r PASSWORD '" + v + "'",
			"DO $$ BEGIN EXECUTE 'ALTER ROLE r PASSWORD ''" + v + "'''; END $$",
			"SELECT format('ALTER ROLE %I PASSWORD %L', 'r', '" + v + "')",
		} {
			got := Redact(s)
			if strings.Contains(got, v[8:20]) || !strings.Contains(got, "PASSWORD") || !strings.Contains(got, Redacted) {
				t.Errorf("Redact(%q) = %q", s, got)
			}
		}
	}
}

// testdata/pglog/password_corpus.jsonl.gz is what PostgreSQL wrote when
// every 7th statement of the corpus ran (see testdata/pglog/README):
// pgaudit's records of each statement and of what EXECUTE ran, the
// log_statement lines, and the errors (role exists, unknown option, a
// quote injected through format's %s, functions missing), each with the
// fields PostgreSQL fills in. No secret may come out of any of them.
func TestRedactPasswordCorpusFromPostgres(t *testing.T) {
	f, err := os.Open(filepath.Join("testdata", "pglog", "password_corpus.jsonl.gz"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(zr)
	sc.Buffer(nil, 1<<20)
	now := time.Unix(0, 0)
	lines, withSecret, audits, failed := 0, 0, 0, 0
	for sc.Scan() {
		lines++
		if strings.Contains(sc.Text(), "3cr3t-") {
			withSecret++
		}
		e := ParseServerLogLine(sc.Bytes(), now)
		if e.Type == TypePostgresAudit {
			audits++
		}
		b, _, err := encode(1, zeroHash, e)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "3cr3t-") || strings.Contains(string(b), "T41l-") {
			if failed++; failed <= 10 {
				t.Errorf("ParseServerLogLine(%s)\n= %s; the secret is still there", sc.Text(), b)
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if lines < 1500 || withSecret < 1000 || audits < 800 {
		t.Errorf("%d lines, %d with a secret, %d pgaudit records; want the whole fixture", lines, withSecret, audits)
	}
}

// A statement a hostile role sends to the log must not stall the reader
// (PostgreSQL waits on it): shapes that made an earlier lexer quadratic
// or the recursion exponential take about linear time.
func TestRedactHostileInputs(t *testing.T) {
	const n = 4000
	var tags, nested, closing strings.Builder
	for i := range n {
		fmt.Fprintf(&tags, "$a%d$password '", i)
	}
	for i := range 500 {
		fmt.Fprintf(&nested, "DO $t%d$ BEGIN EXECUTE ", i)
		fmt.Fprintf(&closing, "; END $t%d$", 499-i)
	}
	nested.WriteString("'ALTER ROLE r PASSWORD ''S3cr3t-deep'''")
	for name, s := range map[string]string{
		"unterminated dollar tags": tags.String(),
		"nested dollar quotes":     nested.String() + closing.String(),
		"nested crypt":             strings.Repeat("crypt('password', ", n) + strings.Repeat(")", n),
		"nested format":            strings.Repeat("format('ALTER ROLE %I PASSWORD %L', 'r', ", n) + "'x'" + strings.Repeat(")", n),
		"format placeholders":      "format('" + strings.Repeat("PASSWORD %s ", n) + "'" + strings.Repeat(", 'x'", n) + ")",
		"doubled quotes":           strings.Repeat("'password '' ", n),
		"unterminated comments":    "/* " + strings.Repeat("password 'x' /* ", n),
		"identifiers":              strings.Repeat(`"password 'x' " `, n),
		"concatenation":            strings.Repeat(`'ALTER ROLE r PASSWORD ' || `, n) + "'x'",
	} {
		start := time.Now()
		out := Redact(s)
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("Redact(%s, %d bytes) took %v", name, len(s), d)
		}
		if strings.Contains(out, "S3cr3t") {
			t.Errorf("Redact(%s) leaks the secret", name)
		}
	}
}
