package audit

import (
	"regexp"
	"sort"
	"strings"
)

// Redacted replaces secrets removed by Redact.
const Redacted = "<redacted>"

// Redaction works in two passes over any text:
//
//  1. A SQL lexer (strings, E”, U&”, dollar quotes, quoted identifiers,
//     comments) finds secrets by their place in a statement: the literal
//     after PASSWORD (CREATE/ALTER ROLE, USER MAPPING options, UPDATE ...
//     SET password = ...), everything after PASSWORD up to the next role
//     option in a CREATE/ALTER ROLE|USER|GROUP that does not parse (so an
//     unquoted or mistyped password in a failed statement is removed too),
//     and every string literal passed to a pgcrypto function that takes a
//     key or password (pgp_sym_encrypt, crypt, hmac, encrypt, ...).
//  2. Regular expressions catch secrets by their shape wherever they are,
//     including in text that is not SQL (PostgreSQL's messages, details,
//     parse-tree dumps): PASSWORD '...' clauses, password=... in
//     connection strings, "password": "..." in JSON, SCRAM and md5
//     verifiers, SCRAM client proofs, JWTs, Bearer tokens and PEM private
//     keys.
//
// The lexer is what makes the first pass right on real SQL; the second is
// the net under it for text the lexer misreads (an apostrophe in English
// prose opens a "string").
var (
	// PASSWORD followed by a string constant: '...', E'...', "..." (not
	// valid SQL for passwords but redacted anyway), $$...$$ or $tag$...
	// (to the end of the text, since RE2 has no back-references). An
	// unterminated literal is redacted to the end of the text.
	passwordRE = regexp.MustCompile(`(?is)(\bpassword\s+)(` +
		`[eE]'(?:[^'\\]|\\.|'')*(?:'|$)` +
		`|'(?:[^']|'')*(?:'|$)` +
		`|"(?:[^"]|"")*(?:"|$)` +
		`|\$\$.*?(?:\$\$|$)` +
		`|\$[A-Za-z_][A-Za-z0-9_]*\$.*` +
		`)`)
	// password=value in a libpq connection string (dblink, postgres_fdw,
	// CREATE SUBSCRIPTION); the value may be single-quoted with backslash
	// escapes. Also catches SQL's password = 'x'.
	conninfoRE = regexp.MustCompile(`(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*(?:'|$)|[^\s'",);]+)`)
	// "password": "..." in JSON text.
	jsonPasswordRE = regexp.MustCompile(`(?i)("(?:password|passwd|secret|token|access_token|refresh_token|client_secret)"\s*:\s*)("(?:[^"\\]|\\.)*(?:"|$))`)
	// A JWT: three base64url segments, the header starting with eyJ ('{"').
	// The signature may be empty (alg "none").
	jwtRE = regexp.MustCompile(`\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*`)
	// A SCRAM client-final-message proof: p=<base64> after c=... (RFC 5802).
	scramRE = regexp.MustCompile(`(\bc=[A-Za-z0-9+/=]*,(?:[^,\s]*,)*?)p=[A-Za-z0-9+/]+=*`)
	// Stored password verifiers: what `\password` sends and pg_authid holds.
	verifierRE = regexp.MustCompile(`SCRAM-SHA-256\$[0-9]+:[A-Za-z0-9+/=]*(?:\$[A-Za-z0-9+/=:]*)?|\bmd5[0-9a-f]{32}\b`)
	bearerRE   = regexp.MustCompile(`(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]{8,}`)
	pemRE      = regexp.MustCompile(`(?s)-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|$)`)
	// A parse-tree dump (debug_print_parse) of a role or user-mapping
	// option: `:defname password :arg ...` up to the option's location.
	defelemRE = regexp.MustCompile(`(?is)(:defname\s+"?password"?\s+:arg\s+).*?(\s:location\b|$)`)
)

// Redact removes secrets from free text or SQL before it is audited or
// logged: see the comment above for what it finds. Each secret is replaced
// with Redacted. It is a best-effort net, not a proof: a secret stored as
// plain data (INSERT INTO users VALUES ('bob', 'hunter2')) looks like any
// other value. Log.Write does not call Redact; callers must.
func Redact(s string) string {
	var r redactor
	return r.text(s)
}

// redactor redacts the fields of one record and remembers what it
// removed, so that a secret echoed elsewhere in the same record (an error
// message quoting the token near which parsing failed) can be scrubbed
// too.
type redactor struct {
	secrets []string
	// sensitive is set when a statement had a password or key removed or
	// calls a function that takes one: its parameters are then redacted.
	sensitive bool
}

// minScrub is the shortest secret scrubbed from the record's other fields;
// shorter ones would blank out ordinary words.
const minScrub = 4

// maxScrub bounds the secrets remembered per record, so a statement with
// thousands of redacted literals costs linear time, not quadratic.
const maxScrub = 64

func (r *redactor) remember(secret string) {
	if len(secret) < minScrub || len(r.secrets) >= maxScrub {
		return
	}
	for _, s := range r.secrets {
		if s == secret {
			return
		}
	}
	r.secrets = append(r.secrets, secret)
}

// text redacts s with both passes.
func (r *redactor) text(s string) string {
	if s == "" {
		return s
	}
	s = r.sql(s)
	return r.shapes(s)
}

// shapes is the regular-expression pass.
func (r *redactor) shapes(s string) string {
	grouped := func(re *regexp.Regexp, s string) string {
		return re.ReplaceAllStringFunc(s, func(m string) string {
			sub := re.FindStringSubmatchIndex(m)
			if sub == nil || sub[3] < 0 {
				return m
			}
			prefix, secret := m[:sub[3]], m[sub[3]:]
			if strings.HasPrefix(secret, Redacted) {
				return m
			}
			r.sensitive = true
			r.remember(strings.Trim(secret, `'"$`))
			return prefix + Redacted
		})
	}
	s = grouped(passwordRE, s)
	s = grouped(conninfoRE, s)
	s = grouped(jsonPasswordRE, s)
	s = defelemRE.ReplaceAllStringFunc(s, func(m string) string {
		sub := defelemRE.FindStringSubmatchIndex(m)
		r.sensitive = true
		r.remember(strings.Trim(strings.TrimSpace(m[sub[3]:sub[4]]), `"`))
		return m[:sub[3]] + Redacted + m[sub[4]:]
	})
	whole := func(re *regexp.Regexp, s string) string {
		return re.ReplaceAllStringFunc(s, func(m string) string {
			r.sensitive = true
			r.remember(m)
			return Redacted
		})
	}
	s = r.cryptoArgs(s)
	s = whole(jwtRE, s)
	s = whole(verifierRE, s)
	s = whole(pemRE, s)
	s = scramRE.ReplaceAllStringFunc(s, func(m string) string {
		sub := scramRE.FindStringSubmatchIndex(m)
		r.remember(m[sub[3]+2:])
		return m[:sub[3]] + "p=" + Redacted
	})
	s = bearerRE.ReplaceAllStringFunc(s, func(m string) string {
		sub := bearerRE.FindStringSubmatchIndex(m)
		r.sensitive = true
		r.remember(m[sub[3]:])
		return m[:sub[3]] + Redacted
	})
	return s
}

// cryptoCallRE finds a call of a function in cryptoFuncs.
var cryptoCallRE = regexp.MustCompile(`(?i)\b(?:pgp_sym_encrypt|pgp_sym_encrypt_bytea|pgp_sym_decrypt|pgp_sym_decrypt_bytea|pgp_pub_encrypt|pgp_pub_encrypt_bytea|pgp_pub_decrypt|pgp_pub_decrypt_bytea|encrypt|decrypt|encrypt_iv|decrypt_iv|hmac|crypt|dearmor|pgp_key_id)\s*\(`)

// cryptoArgs is the text-level net for pgcrypto calls, for when the
// lexer's view of the quoting is off (a stray quote earlier in the text):
// every '...' between the call's parenthesis and its match is redacted,
// counting parentheses outside quotes only.
func (r *redactor) cryptoArgs(s string) string {
	locs := cryptoCallRE.FindAllStringIndex(s, -1)
	if locs == nil {
		return s
	}
	var b strings.Builder
	pos := 0
	for _, loc := range locs {
		if loc[0] < pos {
			continue
		}
		r.sensitive = true
		b.WriteString(s[pos:loc[1]])
		i, depth := loc[1], 1
		for i < len(s) && depth > 0 {
			switch s[i] {
			case '(':
				depth++
			case ')':
				depth--
			case '\'':
				j := i + 1
				for j < len(s) {
					if s[j] == '\'' && j+1 < len(s) && s[j+1] == '\'' {
						j += 2
						continue
					}
					if s[j] == '\'' {
						break
					}
					j++
				}
				r.remember(s[i+1 : min(j, len(s))])
				b.WriteString(Redacted)
				i = min(j+1, len(s))
				continue
			}
			b.WriteByte(s[i])
			i++
		}
		pos = i
	}
	b.WriteString(s[pos:])
	return b.String()
}

// scrub replaces every secret found so far in this record.
func (r *redactor) scrub(s string) string {
	if len(r.secrets) == 0 || s == "" {
		return s
	}
	// Longest first, so a secret that contains another is removed whole.
	sort.Slice(r.secrets, func(i, j int) bool { return len(r.secrets[i]) > len(r.secrets[j]) })
	for _, sec := range r.secrets {
		if sec != Redacted && strings.Contains(s, sec) {
			s = strings.ReplaceAll(s, sec, Redacted)
		}
	}
	return s
}

// cryptoFuncs are pgcrypto's functions that take a password or key as an
// argument; every string literal in their argument list is redacted.
var cryptoFuncs = map[string]bool{
	"pgp_sym_encrypt": true, "pgp_sym_encrypt_bytea": true, "pgp_sym_decrypt": true,
	"pgp_sym_decrypt_bytea": true, "pgp_pub_encrypt": true, "pgp_pub_encrypt_bytea": true,
	"pgp_pub_decrypt": true, "pgp_pub_decrypt_bytea": true, "encrypt": true, "decrypt": true,
	"encrypt_iv": true, "decrypt_iv": true, "hmac": true, "crypt": true, "dearmor": true,
	"pgp_key_id": true,
}

// roleOptions end the redacted span after PASSWORD in a role statement.
var roleOptions = map[string]bool{
	"superuser": true, "nosuperuser": true, "createdb": true, "nocreatedb": true,
	"createrole": true, "nocreaterole": true, "inherit": true, "noinherit": true,
	"login": true, "nologin": true, "replication": true, "noreplication": true,
	"bypassrls": true, "nobypassrls": true, "connection": true, "valid": true,
	"in": true, "role": true, "admin": true, "user": true, "sysid": true, "with": true,
	"encrypted": true, "unencrypted": true, "password": true, "set": true,
	"reset": true, "rename": true,
}

// sql is the lexer pass. SQL quoted inside double quotes (a CSV field, an
// error message's "at or near" excerpt) is redacted as SQL too.
func (r *redactor) sql(s string) string {
	s = r.sqlInIdents(s)
	return r.sqlRules(s)
}

func (r *redactor) sqlInIdents(s string) string {
	toks := lexSQL(s)
	var b strings.Builder
	pos := 0
	for _, t := range toks {
		if t.kind != tkIdent || t.end-t.start < 3 || s[t.end-1] != '"' || t.start < pos {
			continue
		}
		q := strings.IndexByte(s[t.start:t.end], '"') + t.start
		inner := strings.ReplaceAll(s[q+1:t.end-1], `""`, `"`)
		if !strings.ContainsAny(inner, `'$`) {
			continue
		}
		red := r.sql(inner)
		if red == inner {
			continue
		}
		b.WriteString(s[pos : q+1])
		b.WriteString(strings.ReplaceAll(red, `"`, `""`))
		b.WriteByte('"')
		pos = t.end
	}
	if pos == 0 {
		return s
	}
	b.WriteString(s[pos:])
	return b.String()
}

func (r *redactor) sqlRules(s string) string {
	toks := lexSQL(s)
	type span struct{ start, end int }
	var spans []span
	add := func(t token) {
		spans = append(spans, span{t.start, t.end})
		if t.kind == tkString {
			r.remember(t.body)
		}
		r.remember(s[t.start:t.end])
	}
	inRole := false
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		switch {
		case t.kind == tkPunct && t.body == ";":
			inRole = false
		case t.kind == tkWord && (t.body == "create" || t.body == "alter") && i+1 < len(toks):
			n := toks[i+1]
			if n.kind == tkWord && (n.body == "role" || n.body == "group" ||
				n.body == "user" && !(i+2 < len(toks) && toks[i+2].kind == tkWord && toks[i+2].body == "mapping")) {
				inRole = true
			}
		case t.kind == tkWord && t.body == "password" && i+1 < len(toks):
			n := toks[i+1]
			j := i + 1
			switch {
			case n.kind == tkString:
				add(n)
				r.sensitive = true
				j = i + 2
			case n.kind == tkPunct && n.body == "=" && i+2 < len(toks) &&
				(toks[i+2].kind == tkString || toks[i+2].kind == tkWord || toks[i+2].kind == tkNumber):
				add(toks[i+2])
				r.sensitive = true
				j = i + 3
			case n.kind == tkWord && n.body == "null":
				continue
			}
			if inRole {
				// Whatever follows PASSWORD up to the next option is the
				// password or a mistyped form of it.
				for ; j < len(toks); j++ {
					u := toks[j]
					if u.kind == tkPunct && u.body == ";" || u.kind == tkWord && roleOptions[u.body] {
						break
					}
					add(u)
					r.sensitive = true
				}
				i = j - 1
			}
		case t.kind == tkWord && cryptoFuncs[t.body] && i+1 < len(toks) && toks[i+1].kind == tkPunct && toks[i+1].body == "(":
			r.sensitive = true
			depth := 0
			for j := i + 1; j < len(toks); j++ {
				u := toks[j]
				if u.kind == tkPunct && u.body == "(" {
					depth++
				} else if u.kind == tkPunct && u.body == ")" {
					depth--
					if depth == 0 {
						i = j
						break
					}
				} else if u.kind == tkString {
					add(u)
				}
				if j == len(toks)-1 {
					i = j
				}
			}
		}
	}
	if len(spans) == 0 {
		return s
	}
	// Merge overlapping spans and those apart only by white space (an
	// unquoted password lexed as several tokens becomes one marker).
	sort.Slice(spans, func(i, j int) bool { return spans[i].start < spans[j].start })
	merged := spans[:1]
	for _, sp := range spans[1:] {
		last := &merged[len(merged)-1]
		if sp.start <= last.end || strings.TrimSpace(s[last.end:sp.start]) == "" {
			last.end = max(last.end, sp.end)
			continue
		}
		merged = append(merged, sp)
	}
	var b strings.Builder
	b.Grow(len(s))
	pos := 0
	for _, sp := range merged {
		r.remember(s[sp.start:sp.end])
		b.WriteString(s[pos:sp.start])
		b.WriteString(Redacted)
		pos = sp.end
	}
	b.WriteString(s[pos:])
	return b.String()
}

// The SQL lexer. It follows PostgreSQL's scan.l closely enough to find
// where literals, identifiers and comments begin and end; it never fails,
// and an unterminated construct runs to the end of the text.

type tokKind uint8

const (
	tkWord   tokKind = iota // keyword or identifier; body is lower-cased
	tkString                // string constant in any quoting; body is its content
	tkIdent                 // "quoted identifier"
	tkNumber                // numeric constant
	tkParam                 // $1
	tkPunct                 // one byte of anything else; body is that byte
)

type token struct {
	kind       tokKind
	start, end int // byte offsets in the input
	body       string
}

func isIdentStart(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80
}

func isIdentCont(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' || c == '$' }

// lexSQL splits s into tokens, skipping white space and comments. A quote
// that is never closed yields a token to the end of the text, and lexing
// then resumes just after that quote as if it were punctuation, so a stray
// quote (in a failed statement, or an apostrophe in prose) cannot hide
// what follows it from the rules.
func lexSQL(s string) []token {
	var toks []token
	n := len(s)
	// quoted records a quoted token and returns where to continue.
	quoted := func(kind tokKind, start, quote, end int, body string) int {
		toks = append(toks, token{kind, start, end, body})
		if end == n && !closedAt(s, quote, end) {
			return quote + 1
		}
		return end
	}
	for i := 0; i < n; {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			i++
		case c == '-' && i+1 < n && s[i+1] == '-':
			for i < n && s[i] != '\n' {
				i++
			}
		case c == '/' && i+1 < n && s[i+1] == '*':
			depth := 0
			for i < n {
				if s[i] == '/' && i+1 < n && s[i+1] == '*' {
					depth++
					i += 2
				} else if s[i] == '*' && i+1 < n && s[i+1] == '/' {
					depth--
					i += 2
					if depth == 0 {
						break
					}
				} else {
					i++
				}
			}
		case c == '\'':
			end, body := lexQuoted(s, i, false)
			i = quoted(tkString, i, i, end, body)
		case (c == 'e' || c == 'E') && i+1 < n && s[i+1] == '\'':
			end, body := lexQuoted(s, i+1, true)
			i = quoted(tkString, i, i+1, end, body)
		case (c == 'b' || c == 'B' || c == 'x' || c == 'X' || c == 'n' || c == 'N') && i+1 < n && s[i+1] == '\'':
			end, body := lexQuoted(s, i+1, false)
			i = quoted(tkString, i, i+1, end, body)
		case (c == 'u' || c == 'U') && i+2 < n && s[i+1] == '&' && s[i+2] == '\'':
			end, body := lexQuoted(s, i+2, false)
			i = quoted(tkString, i, i+2, end, body)
		case (c == 'u' || c == 'U') && i+2 < n && s[i+1] == '&' && s[i+2] == '"':
			i = quoted(tkIdent, i, i+2, lexIdent(s, i+2), "")
		case c == '"':
			i = quoted(tkIdent, i, i, lexIdent(s, i), "")
		case c == '$' && i+1 < n && s[i+1] >= '0' && s[i+1] <= '9':
			j := i + 1
			for j < n && s[j] >= '0' && s[j] <= '9' {
				j++
			}
			toks = append(toks, token{tkParam, i, j, s[i:j]})
			i = j
		case c == '$':
			if end, body, ok := lexDollar(s, i); ok {
				i = quoted(tkString, i, i, end, body)
			} else {
				toks = append(toks, token{tkPunct, i, i + 1, "$"})
				i++
			}
		case isIdentStart(c):
			j := i + 1
			for j < n && isIdentCont(s[j]) {
				j++
			}
			toks = append(toks, token{tkWord, i, j, strings.ToLower(s[i:j])})
			i = j
		case c >= '0' && c <= '9' || c == '.' && i+1 < n && s[i+1] >= '0' && s[i+1] <= '9':
			j := i + 1
			for j < n && (s[j] >= '0' && s[j] <= '9' || s[j] == '.' || s[j] == '_' || isIdentStart(s[j])) {
				j++
			}
			toks = append(toks, token{tkNumber, i, j, s[i:j]})
			i = j
		default:
			toks = append(toks, token{tkPunct, i, i + 1, s[i : i+1]})
			i++
		}
	}
	return toks
}

// lexQuoted scans a single-quoted string whose opening quote is at q. It
// follows SQL's continuation rule ('a' newline 'b' is one constant) and,
// for E” strings, backslash escapes. It returns the end offset and the
// content.
func lexQuoted(s string, q int, backslash bool) (int, string) {
	var body strings.Builder
	i := q + 1
	n := len(s)
	for i < n {
		c := s[i]
		switch {
		case backslash && c == '\\' && i+1 < n:
			body.WriteByte(s[i+1])
			i += 2
		case c == '\'' && i+1 < n && s[i+1] == '\'':
			body.WriteByte('\'')
			i += 2
		case c == '\'':
			i++
			// Continuation: white space with at least one newline, then a quote.
			j, nl := i, false
			for j < n && (s[j] == ' ' || s[j] == '\t' || s[j] == '\n' || s[j] == '\r' || s[j] == '\f') {
				nl = nl || s[j] == '\n'
				j++
			}
			if nl && j < n && s[j] == '\'' {
				i = j + 1
				continue
			}
			return i, body.String()
		default:
			body.WriteByte(c)
			i++
		}
	}
	return n, body.String()
}

// closedAt reports whether the quoted construct opened at q and ending at
// end (the end of the text) was closed by its last byte.
func closedAt(s string, q, end int) bool {
	if end-q < 2 {
		return false
	}
	switch s[q] {
	case '$':
		tagEnd := strings.IndexByte(s[q+1:], '$')
		tag := s[q : q+tagEnd+2]
		return end-q >= 2*len(tag) && strings.HasSuffix(s[:end], tag)
	default:
		// A quote character ends it; for '' and "" escapes, an odd run of
		// quotes at the end means the last one closes.
		run := 0
		for k := end - 1; k > q && s[k] == s[q]; k-- {
			run++
		}
		return run%2 == 1
	}
}

func lexIdent(s string, q int) int {
	for i := q + 1; i < len(s); i++ {
		if s[i] == '"' {
			if i+1 < len(s) && s[i+1] == '"' {
				i++
				continue
			}
			return i + 1
		}
	}
	return len(s)
}

// lexDollar scans $tag$...$tag$ starting at i; ok is false if s[i:] does
// not open a dollar quote.
func lexDollar(s string, i int) (end int, body string, ok bool) {
	j := i + 1
	if j < len(s) && isIdentStart(s[j]) {
		for j < len(s) && isIdentCont(s[j]) && s[j] != '$' {
			j++
		}
	}
	if j >= len(s) || s[j] != '$' {
		return 0, "", false
	}
	tag := s[i : j+1]
	rest := s[j+1:]
	k := strings.Index(rest, tag)
	if k < 0 {
		return len(s), rest, true
	}
	return j + 1 + k + len(tag), rest[:k], true
}
