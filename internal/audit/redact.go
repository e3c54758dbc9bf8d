package audit

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
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
//     every string literal passed to a pgcrypto function that takes a
//     key or password (pgp_sym_encrypt, crypt, hmac, encrypt, ...; the
//     name quoted or schema-qualified or not), the arguments of format()
//     that its template puts where a password goes, and what is appended
//     with || (or concat) to a literal that ends on PASSWORD. A literal or
//     comment that holds SQL is lexed again, with its quoting undone
//     (EXECUTE 'ALTER ROLE ...' in a DO $$ ... $$ block, its quotes
//     doubled),
//     and so is SQL that an error message or CSV field quotes in "...".
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
	// PASSWORD followed by a string constant: '...', E'...', U&'...',
	// "..." (not valid SQL for passwords but redacted anyway), $$...$$ or
	// $tag$... (to the end of the text, since RE2 has no back-references). An
	// unterminated literal is redacted to the end of the text. A run of
	// quotes opens and closes it, for a statement quoted in a literal
	// ('ALTER ROLE r PASSWORD ''secret''').
	passwordRE = regexp.MustCompile(`(?is)(\bpassword\s+)(` +
		`[eE]'(?:[^'\\]|\\.|'')*(?:'|$)` +
		`|(?:[uU]&|[nN])?'+(?:[^']|'')*(?:'+|$)` +
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
	// budget is how many more bytes the lexer pass may read again as SQL
	// inside literals, comments and quoted identifiers (see sql).
	budget int
}

// minScrub is the shortest secret scrubbed from the record's other fields;
// shorter ones would blank out ordinary words.
const minScrub = 4

// maxScrub bounds the secrets remembered per record, so a statement with
// thousands of redacted literals costs linear time, not quadratic.
const maxScrub = 64

func (r *redactor) remember(secret string) {
	r.remember1(secret)
	if strings.ContainsAny(secret, `'\`) {
		// An error message may quote it as written at another level of
		// quoting ('' doubled, E'' escaped).
		r.remember1(strings.ReplaceAll(secret, "'", "''"))
		r.remember1(strings.ReplaceAll(strings.ReplaceAll(secret, `\`, `\\`), "'", `\'`))
	}
}

func (r *redactor) remember1(secret string) {
	// A part of the marker itself (text redacted again) is no secret.
	if len(secret) < minScrub || len(r.secrets) >= maxScrub || strings.Contains(Redacted, secret) {
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
	// What other fields of the record gave away goes first, while an echo
	// of it is still as PostgreSQL quoted it.
	s = r.scrub(s)
	// The second pass also reads the text as written, only to learn what
	// to scrub: where the lexer misreads a quote (a stray one before a
	// statement), the first pass can rewrite the key an expression needs
	// (PASSWORD E'x' read as the end of one literal, then another).
	r.shapes(s)
	return r.scrub(r.shapes(r.sql(s)))
}

// shapes is the regular-expression pass.
func (r *redactor) shapes(s string) string {
	// grouped redacts the second group of each match of re; the first is
	// the key that says a secret follows.
	grouped := func(re *regexp.Regexp, s string) string {
		var b strings.Builder
		pos := 0
		for pos < len(s) {
			sub := re.FindStringSubmatchIndex(s[pos:])
			if sub == nil {
				break
			}
			vs, ve := pos+sub[3], pos+sub[1]
			if v := s[vs:ve]; notValue(v) {
				// Search on from inside the "value": it may hold the key.
				b.WriteString(s[pos : vs+1])
				pos = vs + 1
				continue
			}
			r.sensitive = true
			r.remember(valueText(s[vs:ve]))
			b.WriteString(s[pos:vs])
			b.WriteString(Redacted)
			pos = ve
		}
		if pos == 0 {
			return s
		}
		b.WriteString(s[pos:])
		return b.String()
	}
	// An expression runs only on text holding a word it cannot match
	// without, which spares most lines most of them. Redacted holds none
	// of these words, so the text they are looked for in stays s.
	lower, ascii := strings.ToLower(s), isASCII(s)
	has := func(words ...string) bool {
		for _, w := range words {
			if strings.Contains(lower, w) {
				return true
			}
		}
		return !ascii // (?i) folds some non-ASCII letters to ASCII ones
	}
	if has("password") {
		s = grouped(passwordRE, s)
		s = grouped(conninfoRE, s)
		s = defelemRE.ReplaceAllStringFunc(s, func(m string) string {
			sub := defelemRE.FindStringSubmatchIndex(m)
			r.sensitive = true
			r.remember(strings.Trim(strings.TrimSpace(m[sub[3]:sub[4]]), `"`))
			return m[:sub[3]] + Redacted + m[sub[4]:]
		})
	}
	if has("passw", "secret", "token") {
		s = grouped(jsonPasswordRE, s)
	}
	whole := func(re *regexp.Regexp, s string) string {
		return re.ReplaceAllStringFunc(s, func(m string) string {
			r.sensitive = true
			r.remember(m)
			return Redacted
		})
	}
	if has(sqlTriggers[1:]...) {
		s = r.cryptoArgs(s)
	}
	if has("eyj") {
		s = whole(jwtRE, s)
	}
	if has("scram-sha-256$", "md5") {
		s = whole(verifierRE, s)
	}
	if has("private key") {
		s = whole(pemRE, s)
	}
	if has("p=") {
		s = scramRE.ReplaceAllStringFunc(s, func(m string) string {
			sub := scramRE.FindStringSubmatchIndex(m)
			r.remember(m[sub[3]+2:])
			return m[:sub[3]] + "p=" + Redacted
		})
	}
	if has("bearer") {
		s = bearerRE.ReplaceAllStringFunc(s, func(m string) string {
			sub := bearerRE.FindStringSubmatchIndex(m)
			r.sensitive = true
			r.remember(m[sub[3]:])
			return m[:sub[3]] + Redacted
		})
	}
	return s
}

// valueText is a value as the expressions matched it, without its quotes
// and the prefix of E'...', N'...' or U&'...' (what an error message
// would quote).
func valueText(v string) string {
	if len(v) > 1 && strings.IndexByte("eEnN", v[0]) >= 0 && v[1] == '\'' {
		v = v[1:]
	} else if len(v) > 2 && (v[0] == 'u' || v[0] == 'U') && v[1] == '&' && v[2] == '\'' {
		v = v[2:]
	}
	return strings.Trim(v, `'"$`)
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// placeholderRE is a format() placeholder, maybe quoted: '%s', %L, %1$L.
var placeholderRE = regexp.MustCompile(`^['"]*%(?:[0-9]+\$)?-*(?:\*(?:[0-9]+\$)?|[0-9]*)[sIL]['"]*$`)

// concatRE is the closing quote of a literal followed by || or a comma:
// 'ALTER ROLE r PASSWORD ' || ..., where the key ends a literal.
var concatRE = regexp.MustCompile(`^'\s*(?:\|\||,)`)

// notValue reports whether what follows a password key, as the regular
// expressions see it, is not the password: it was already redacted, is a
// format() placeholder, or is the end of a literal (the lexer pass has
// redacted what is appended to it).
func notValue(v string) bool {
	return strings.HasPrefix(v, Redacted) || placeholderRE.MatchString(v) || concatRE.MatchString(v)
}

// cryptoCallRE finds a call of a function in cryptoFuncs, its name maybe
// quoted ("crypt") and followed by white space or comments.
var cryptoCallRE = regexp.MustCompile(`(?i)\b(?:pgp_sym_encrypt|pgp_sym_encrypt_bytea|pgp_sym_decrypt|pgp_sym_decrypt_bytea|pgp_pub_encrypt|pgp_pub_encrypt_bytea|pgp_pub_decrypt|pgp_pub_decrypt_bytea|encrypt|decrypt|encrypt_iv|decrypt_iv|hmac|crypt|dearmor|armor|pgp_key_id|pgp_armor_headers|digest)"?(?:\s|/\*(?s:.*?)\*/|--[^\n]*\n)*\(`)

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

// cryptoFuncs are pgcrypto's functions whose arguments are secrets: a
// password or key (crypt, pgp_*, hmac, encrypt, ...), a key being
// converted (dearmor, armor, pgp_key_id), or the plaintext they encrypt or
// hash (digest still hashes passwords in older schemas). Every string
// literal in their argument list is redacted: only algorithm and option
// names are lost with them (and gen_salt's, called among the arguments of
// crypt). gen_salt and gen_random_* themselves take no secret.
var cryptoFuncs = map[string]bool{
	"pgp_sym_encrypt": true, "pgp_sym_encrypt_bytea": true, "pgp_sym_decrypt": true,
	"pgp_sym_decrypt_bytea": true, "pgp_pub_encrypt": true, "pgp_pub_encrypt_bytea": true,
	"pgp_pub_decrypt": true, "pgp_pub_decrypt_bytea": true, "encrypt": true, "decrypt": true,
	"encrypt_iv": true, "decrypt_iv": true, "hmac": true, "crypt": true, "dearmor": true,
	"armor": true, "pgp_key_id": true, "pgp_armor_headers": true, "digest": true,
}

// sqlTriggers are the words without which no rule can match: a literal or
// comment that holds none of them is not lexed again as SQL. All but the
// first are in the name of every function in cryptoFuncs.
var sqlTriggers = []string{"password", "crypt", "hmac", "armor", "pgp_", "digest"}

func hasTrigger(s string) bool {
	l := strings.ToLower(s)
	for _, t := range sqlTriggers {
		if strings.Contains(l, t) {
			return true
		}
	}
	return false
}

// maxDepth bounds the nesting of SQL in literals that is lexed again
// (DO $a$ ... EXECUTE $b$ ... $b$ ... $a$): dollar quotes nest without
// growing, so each level would cost another pass over the text. A literal
// deeper than that, or past the budget (see sql), which holds a trigger
// word is redacted whole.
const maxDepth = 16

// deep reports whether n more bytes at depth may not be lexed again.
func (r *redactor) deep(depth, n int) bool { return depth >= maxDepth || n > r.budget }

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

// sql is the lexer pass. What it reads again as SQL is bounded to a few
// times the text: unterminated quotes nest as deep as they are many
// ($a$ $b$ $c$ ... each runs to the end of the text), so a hostile line
// could otherwise cost time exponential in its length.
func (r *redactor) sql(s string) string {
	r.budget = 8*len(s) + 1<<16
	return r.sqlAt(s, 0, false)
}

// sqlAt redacts s, found at nesting depth depth. SQL quoted inside double
// quotes (a CSV field, an error message's "at or near" excerpt or "SQL
// statement" context) is redacted as SQL too. template says s is the
// template of a format() call, whose %s, %I and %L are placeholders.
func (r *redactor) sqlAt(s string, depth int, template bool) string {
	r.budget -= len(s)
	s = r.sqlInIdents(s, depth)
	return r.sqlRules(s, depth, template)
}

func (r *redactor) sqlInIdents(s string, depth int) string {
	toks, _ := lex(s, false)
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
		var red string
		if r.deep(depth, len(inner)) {
			if !hasTrigger(inner) {
				continue
			}
			r.sensitive = true
			r.remember(inner)
			red = Redacted
		} else if red = r.sqlAt(inner, depth+1, false); red == inner {
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

// span is a byte range of the text being redacted.
type span struct{ start, end int }

func (r *redactor) sqlRules(s string, depth int, template bool) string {
	toks, comments := lex(s, template)
	var spans []span
	add := func(t token) {
		spans = append(spans, span{t.start, t.end})
		if t.kind == tkString {
			r.remember(t.body)
		}
		r.remember(s[t.start:t.end])
	}
	// addStrings redacts the literals of toks[from:to]. skip links each
	// token already seen to the next one not seen, so that nested calls
	// (format(..., format(...))) cost linear time, not quadratic.
	skip := make([]int, len(toks)+1)
	for j := range skip {
		skip[j] = j
	}
	unseen := func(j int) int {
		root := j
		for skip[root] != root {
			root = skip[root]
		}
		for skip[j] != root {
			skip[j], j = root, skip[j]
		}
		return root
	}
	addStrings := func(from, to int) {
		for j := unseen(from); j < to; j = unseen(j + 1) {
			if toks[j].kind == tkString {
				add(toks[j])
				r.sensitive = true
			}
			skip[j] = j + 1
		}
	}
	parens := matchParens(toks)
	templates := map[int]bool{} // tokens that are format() templates
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
			case n.kind == tkParam:
				// A bind parameter or format() placeholder: the value is
				// elsewhere, and the statement stays readable.
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
					r.sensitive = true
					if u.kind != tkParam {
						add(u)
					}
				}
				i = j - 1
			}
		case (t.kind == tkWord || t.kind == tkIdent) && i+1 < len(toks) && toks[i+1].kind == tkPunct && toks[i+1].body == "(":
			// A call, however its name is quoted or qualified: only the
			// last name before the parenthesis says which function.
			switch {
			case cryptoFuncs[t.body]:
				r.sensitive = true
				// Every literal up to the closing parenthesis is redacted:
				// no other rule needs to look inside.
				end := parens[i+1]
				addStrings(i+2, end)
				i = end
			case t.body == "format":
				r.formatCall(toks, parens, i+1, depth, addStrings, templates)
			}
		case t.kind == tkString && endsOnPassword(t.body):
			// 'ALTER ROLE r PASSWORD ' || quote_literal('secret'): the
			// next operand of || (or argument of concat()) is the value.
			if k, ok := nextOperand(toks, i); ok {
				addStrings(k, operandEnd(toks, parens, k))
			}
		}
	}
	spans = mergeSpans(s, spans)

	// Literals and comments that hold SQL are redacted as SQL, unless a
	// rule above redacted them whole; the literal is then quoted again.
	type edit struct {
		span
		repl string
	}
	var edits []edit
	covered := func(t token) bool {
		k := sort.Search(len(spans), func(k int) bool { return spans[k].end > t.start })
		return k < len(spans) && spans[k].start <= t.start
	}
	late := false // spans added after the merge
	for i, t := range toks {
		if t.kind != tkString || !t.sqlish || !hasTrigger(t.body) || covered(t) {
			continue
		}
		if r.deep(depth, len(t.body)) {
			add(t)
			r.sensitive, late = true, true
			continue
		}
		if red := r.sqlAt(t.body, depth+1, templates[i]); red != t.body {
			// An error may quote the literal whole ("at or near").
			r.remember(s[t.start:t.end])
			edits = append(edits, edit{span{t.start, t.end}, requote(s, t, red)})
		}
	}
	for _, c := range comments {
		if !hasTrigger(c.body) || covered(c) {
			continue
		}
		if r.deep(depth, len(c.body)) {
			add(c)
			late = true
			continue
		}
		if red := r.sqlAt(c.body, depth+1, false); red != c.body {
			edits = append(edits, edit{span{c.inner, c.inner + len(c.body)}, red})
		}
	}
	if late {
		spans = mergeSpans(s, spans)
	}
	if len(spans) == 0 && len(edits) == 0 {
		return s
	}
	for _, sp := range spans {
		r.remember(s[sp.start:sp.end])
		edits = append(edits, edit{sp, Redacted})
	}
	sort.Slice(edits, func(i, j int) bool { return edits[i].start < edits[j].start })
	var b strings.Builder
	b.Grow(len(s))
	pos := 0
	for _, e := range edits {
		if e.start < pos {
			continue // a comment inside a redacted span
		}
		b.WriteString(s[pos:e.start])
		b.WriteString(e.repl)
		pos = e.end
	}
	b.WriteString(s[pos:])
	return b.String()
}

// mergeSpans sorts spans and merges those that overlap or are apart only
// by white space (an unquoted password lexed as several tokens becomes one
// marker).
func mergeSpans(s string, spans []span) []span {
	if len(spans) == 0 {
		return spans
	}
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
	return merged
}

// matchParens returns, for each "(" in toks, the index of the ")" that
// closes it, or len(toks) if none does. Computed once, it keeps nested
// calls linear.
func matchParens(toks []token) []int {
	m := make([]int, len(toks))
	var open []int
	for j, t := range toks {
		if t.kind != tkPunct {
			continue
		}
		switch t.body {
		case "(":
			open = append(open, j)
		case ")":
			if len(open) > 0 {
				m[open[len(open)-1]] = j
				open = open[:len(open)-1]
			}
		}
	}
	for _, j := range open {
		m[j] = len(toks)
	}
	return m
}

// endsOnPassword reports whether the SQL in a literal ends where a
// password goes, so that what is appended to it is the password: on
// password=, on PASSWORD with the opening quote of the value, or on
// PASSWORD in a role statement ('ALTER ROLE r PASSWORD ', not 'password').
func endsOnPassword(body string) bool {
	// Cheap test first: the lexer reads the whole body.
	t := strings.TrimRight(body, " \t\n\r\f\v'=&EeUuNn")
	if len(t) < 8 || !strings.EqualFold(t[len(t)-8:], "password") {
		return false
	}
	ts := lexSQL(body)
	n := len(ts)
	opened := n > 1 && ts[n-1].kind == tkString && ts[n-1].open && ts[n-1].end-ts[n-1].quote == 1
	if opened {
		n-- // the value's opening quote
	}
	equals := n > 1 && ts[n-1].kind == tkPunct && ts[n-1].body == "="
	if equals {
		n--
	}
	if n == 0 || ts[n-1].kind != tkWord || ts[n-1].body != "password" {
		return false
	}
	if opened || equals {
		return true
	}
	for i := 0; i+1 < n; i++ {
		if ts[i].kind == tkWord && (ts[i].body == "create" || ts[i].body == "alter") &&
			ts[i+1].kind == tkWord && (ts[i+1].body == "role" || ts[i+1].body == "user" || ts[i+1].body == "group") {
			return true
		}
	}
	return false
}

// nextOperand returns the index of the first token of the operand after
// toks[i] when it is joined by || or by a comma.
func nextOperand(toks []token, i int) (int, bool) {
	if i+1 < len(toks) && toks[i+1].kind == tkPunct && toks[i+1].body == "," {
		return i + 2, i+2 < len(toks)
	}
	if i+2 < len(toks) && toks[i+1].kind == tkPunct && toks[i+1].body == "|" &&
		toks[i+2].kind == tkPunct && toks[i+2].body == "|" && toks[i+1].end == toks[i+2].start {
		return i + 3, i+3 < len(toks)
	}
	return 0, false
}

// operandEnd returns the index just after the operand starting at toks[k]:
// the next ||, comma, closing parenthesis or semicolon outside parentheses.
func operandEnd(toks []token, parens []int, k int) int {
	for j := k; j < len(toks); j++ {
		u := toks[j]
		if u.kind != tkPunct {
			continue
		}
		switch u.body {
		case "(":
			j = parens[j]
		case ")", ",", ";":
			return j
		case "|":
			if j+1 < len(toks) && toks[j+1].kind == tkPunct && toks[j+1].body == "|" {
				return j
			}
		}
	}
	return len(toks)
}

// formatCall finds the arguments of format(template, args...) that are
// secrets: the template is expanded with a marker for each argument it
// uses (quoted as %L would quote it) and the result redacted; an argument
// whose marker is gone took the place of a password or key, and its
// literals are redacted. A template that cannot be read that way but
// holds a trigger word makes every argument a secret.
func (r *redactor) formatCall(toks []token, parens []int, open, depth int, addStrings func(from, to int), templates map[int]bool) {
	end := parens[open]
	var args [][2]int
	from := open + 1
	for j := open + 1; j < end; j++ {
		switch {
		case toks[j].kind != tkPunct:
		case toks[j].body == "(":
			j = parens[j]
		case toks[j].body == ",":
			args = append(args, [2]int{from, j})
			from = j + 1
		}
	}
	args = append(args, [2]int{from, end})
	if len(args) < 2 {
		return
	}
	all := func() {
		r.sensitive = true
		addStrings(args[1][0], end)
	}
	a0 := args[0]
	if a0[1]-a0[0] != 1 || toks[a0[0]].kind != tkString {
		// Not a single literal ('...' || '...', a variable).
		for _, t := range toks[a0[0]:a0[1]] {
			if t.kind == tkString && hasTrigger(t.body) {
				all()
				return
			}
		}
		return
	}
	tmpl := toks[a0[0]].body
	templates[a0[0]] = true
	exp, used, ok := expandFormat(tmpl)
	if !ok {
		if hasTrigger(tmpl) {
			all()
		}
		return
	}
	if len(used) == 0 {
		return
	}
	if r.deep(depth, 2*len(exp)) {
		if hasTrigger(tmpl) {
			all()
		}
		return
	}
	probe := redactor{budget: r.budget}
	out := probe.shapes(probe.sqlAt(exp, depth+1, false))
	r.budget = probe.budget
	variadic := false
	for _, a := range args[1:] {
		if a[0] < a[1] && toks[a[0]].kind == tkWord && toks[a[0]].body == "variadic" {
			variadic = true
		}
	}
	kept := map[int]bool{}
	for rest := out; ; {
		i := strings.Index(rest, fmtMarkerPrefix)
		if i < 0 {
			break
		}
		rest = rest[i+len(fmtMarkerPrefix):]
		n := 0
		for n < len(rest) && rest[n] >= '0' && rest[n] <= '9' {
			n++
		}
		if k, err := strconv.Atoi(rest[:n]); err == nil && strings.HasPrefix(rest[n:], "x") {
			kept[k] = true
		}
	}
	for k := range used {
		if kept[k] {
			continue
		}
		if variadic {
			all()
			return
		}
		if k+1 < len(args) {
			r.sensitive = true
			addStrings(args[k+1][0], args[k+1][1])
		}
	}
}

const fmtMarkerPrefix = "pgshieldfmtarg"

func fmtMarker(k int) string { return fmt.Sprintf("%s%dx", fmtMarkerPrefix, k) }

// expandFormat expands a format() template as PostgreSQL's text_format
// would, with fmtMarker(k) for argument k (0 is the first after the
// template): bare for %s and %I, quoted for %L. used holds the arguments
// the template takes; ok is false for a template format() rejects.
func expandFormat(tmpl string) (exp string, used map[int]bool, ok bool) {
	var b strings.Builder
	used = map[int]bool{}
	next := 0
	for i := 0; i < len(tmpl); i++ {
		if tmpl[i] != '%' {
			b.WriteByte(tmpl[i])
			continue
		}
		n, arg, width, typ := fmtSpec(tmpl, i)
		if n == 0 {
			return "", nil, false
		}
		i += n - 1
		if typ == '%' {
			b.WriteByte('%')
			continue
		}
		if width == -1 {
			width = next
			next++
		}
		if width >= 0 {
			used[width] = true
			next = width + 1
		}
		if arg < 0 {
			arg = next
		}
		next = arg + 1
		used[arg] = true
		if typ == 'L' {
			b.WriteString("'" + fmtMarker(arg) + "'")
		} else {
			b.WriteString(fmtMarker(arg))
		}
	}
	return b.String(), used, true
}

// fmtSpec reads the format() specifier at s[i] ('%'): its length (0 if
// invalid), its argument (-1: the next one), the argument that gives its
// width (-1: the next one, -2: none) and its type (s, I, L or %).
func fmtSpec(s string, i int) (n, arg, width int, typ byte) {
	j := i + 1
	num := func() (int, bool) {
		k, v := j, 0
		for k < len(s) && s[k] >= '0' && s[k] <= '9' && v < 1e6 {
			v = v*10 + int(s[k]-'0')
			k++
		}
		if k > j && k < len(s) && s[k] == '$' && v > 0 {
			j = k + 1
			return v - 1, true
		}
		return 0, false
	}
	if j < len(s) && s[j] == '%' {
		return 2, -1, -2, '%'
	}
	arg, width = -1, -2
	if v, ok := num(); ok {
		arg = v
	}
	for j < len(s) && s[j] == '-' {
		j++
	}
	if j < len(s) && s[j] == '*' {
		j++
		width = -1
		if v, ok := num(); ok {
			width = v
		}
	} else {
		for j < len(s) && s[j] >= '0' && s[j] <= '9' {
			j++
		}
	}
	if j >= len(s) || s[j] != 's' && s[j] != 'I' && s[j] != 'L' {
		return 0, 0, 0, 0
	}
	return j + 1 - i, arg, width, s[j]
}

// requote writes body, the redacted content of the literal t, as a
// literal again, in t's quoting where that can hold it.
func requote(s string, t token, body string) string {
	closing := !t.open
	switch s[t.quote] {
	case '$':
		tag := s[t.quote : strings.IndexByte(s[t.quote+1:], '$')+t.quote+2]
		if !strings.Contains(body, tag) {
			if closing {
				return tag + body + tag
			}
			return tag + body
		}
	case '\'':
		if pre := s[t.start:t.quote]; pre == "e" || pre == "E" {
			q := "E'" + strings.ReplaceAll(strings.ReplaceAll(body, `\`, `\\`), "'", `\'`)
			if closing {
				q += "'"
			}
			return q
		}
	}
	// Plain quoting; U&'' escapes are undone in body, so they go too.
	q := "'" + strings.ReplaceAll(body, "'", "''")
	if pre := s[t.start:t.quote]; pre == "n" || pre == "N" {
		q = pre + q
	}
	if closing {
		q += "'"
	}
	return q
}

// The SQL lexer. It follows PostgreSQL's scan.l closely enough to find
// where literals, identifiers and comments begin and end; it never fails,
// and an unterminated construct runs to the end of the text.

type tokKind uint8

const (
	tkWord    tokKind = iota // keyword or identifier; body is lower-cased
	tkString                 // string constant in any quoting; body is its value
	tkIdent                  // "quoted identifier"; body is its name, lower-cased
	tkNumber                 // numeric constant
	tkParam                  // $1, or a %s/%I/%L placeholder in a format() template
	tkPunct                  // one byte of anything else; body is that byte
	tkComment                // -- or /* */ comment; body is its text
)

type token struct {
	kind       tokKind
	start, end int // byte offsets in the input
	body       string
	quote      int  // tkString: offset of the opening ' or $
	open       bool // tkString: never closed
	sqlish     bool // tkString: text that may be SQL (not B'' or X'')
	inner      int  // tkComment: offset of body
}

func isIdentStart(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80
}

func isIdentCont(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' || c == '$' }

// maxRestarts bounds how often lex resumes inside an unterminated quote;
// each such token runs to the end of the text, so unbounded restarts
// would cost time quadratic in its length. The last token holds the rest.
const maxRestarts = 8

// lexSQL splits s into tokens, skipping white space and comments.
func lexSQL(s string) []token {
	toks, _ := lex(s, false)
	return toks
}

// lex splits s into tokens, and returns its comments apart. A quote that
// is never closed yields a token to the end of the text, and lexing then
// resumes just after that quote as if it were punctuation, so a stray
// quote (in a failed statement, or an apostrophe in prose) cannot hide
// what follows it from the rules. In a format() template, %s, %I and %L
// (also as a whole literal, '%s') are tkParam.
func lex(s string, template bool) (toks, comments []token) {
	n := len(s)
	restarts := 0
	// quoted records a quoted token and returns where to continue.
	quoted := func(kind tokKind, start, quote, end int, body string) int {
		t := token{kind: kind, start: start, end: end, body: body, quote: quote}
		t.open = end == n && !closedAt(s, quote, end)
		if kind == tkString {
			c := s[start]
			t.sqlish = !(c == 'b' || c == 'B' || c == 'x' || c == 'X')
			if template {
				if k, _, _, _ := fmtSpec(body, 0); k > 0 && k == len(body) && body[k-1] != '%' {
					t.kind = tkParam
				}
			}
		}
		toks = append(toks, t)
		if t.open {
			if restarts++; restarts > maxRestarts {
				return end
			}
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
			j := i
			for j < n && s[j] != '\n' {
				j++
			}
			comments = append(comments, token{kind: tkComment, start: i, end: j, body: s[i+2 : j], inner: i + 2})
			i = j
		case c == '/' && i+1 < n && s[i+1] == '*':
			j, depth := i, 0
			for j < n {
				if s[j] == '/' && j+1 < n && s[j+1] == '*' {
					depth++
					j += 2
				} else if s[j] == '*' && j+1 < n && s[j+1] == '/' {
					depth--
					j += 2
					if depth == 0 {
						break
					}
				} else {
					j++
				}
			}
			bodyEnd := j
			if depth == 0 {
				bodyEnd = j - 2
			}
			comments = append(comments, token{kind: tkComment, start: i, end: j, body: s[i+2 : max(bodyEnd, i+2)], inner: i + 2})
			i = j
		case template && c == '%':
			if k, _, _, typ := fmtSpec(s, i); k > 0 && typ != '%' {
				toks = append(toks, token{kind: tkParam, start: i, end: i + k, body: s[i : i+k]})
				i += k
			} else {
				toks = append(toks, token{kind: tkPunct, start: i, end: i + 1, body: "%"})
				i++
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
			i = quoted(tkString, i, i+2, end, unescapeUnicode(body))
		case (c == 'u' || c == 'U') && i+2 < n && s[i+1] == '&' && s[i+2] == '"':
			end := lexIdent(s, i+2)
			i = quoted(tkIdent, i, i+2, end, identName(s, i+2, end))
		case c == '"':
			end := lexIdent(s, i)
			i = quoted(tkIdent, i, i, end, identName(s, i, end))
		case c == '$' && i+1 < n && s[i+1] >= '0' && s[i+1] <= '9':
			j := i + 1
			for j < n && s[j] >= '0' && s[j] <= '9' {
				j++
			}
			toks = append(toks, token{kind: tkParam, start: i, end: j, body: s[i:j]})
			i = j
		case c == '$':
			if end, body, ok := lexDollar(s, i); ok {
				i = quoted(tkString, i, i, end, body)
			} else {
				toks = append(toks, token{kind: tkPunct, start: i, end: i + 1, body: "$"})
				i++
			}
		case isIdentStart(c):
			j := i + 1
			for j < n && isIdentCont(s[j]) {
				j++
			}
			toks = append(toks, token{kind: tkWord, start: i, end: j, body: strings.ToLower(s[i:j])})
			i = j
		case c >= '0' && c <= '9' || c == '.' && i+1 < n && s[i+1] >= '0' && s[i+1] <= '9':
			j := i + 1
			for j < n && (s[j] >= '0' && s[j] <= '9' || s[j] == '.' || s[j] == '_' || isIdentStart(s[j])) {
				j++
			}
			toks = append(toks, token{kind: tkNumber, start: i, end: j, body: s[i:j]})
			i = j
		default:
			toks = append(toks, token{kind: tkPunct, start: i, end: i + 1, body: s[i : i+1]})
			i++
		}
	}
	return toks, comments
}

// identName is the lower-cased name of the quoted identifier s[q:end],
// for matching function names ("crypt"(...) calls crypt).
func identName(s string, q, end int) string {
	inner := s[q+1 : end]
	if closedAt(s, q, end) {
		inner = s[q+1 : end-1]
	}
	return strings.ToLower(strings.ReplaceAll(inner, `""`, `"`))
}

// lexQuoted scans a single-quoted string whose opening quote is at q. It
// follows SQL's continuation rule ('a' newline 'b' is one constant) and,
// for E” strings, undoes backslash escapes. It returns the end offset and
// the value.
func lexQuoted(s string, q int, backslash bool) (int, string) {
	var body strings.Builder
	i := q + 1
	n := len(s)
	for i < n {
		c := s[i]
		switch {
		case backslash && c == '\\' && i+1 < n:
			i += unescapeE(s[i:], &body)
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

// unescapeE writes the value of the E” escape at the start of s (a
// backslash and at least one more byte) and returns its length.
func unescapeE(s string, b *strings.Builder) int {
	digits := func(from, most int, ok func(byte) bool) int {
		k := from
		for k < len(s) && k-from < most && ok(s[k]) {
			k++
		}
		return k
	}
	isOct := func(c byte) bool { return c >= '0' && c <= '7' }
	isHex := func(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }
	switch c := s[1]; c {
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
	case 'x':
		if k := digits(2, 2, isHex); k > 2 {
			v, _ := strconv.ParseUint(s[2:k], 16, 8)
			b.WriteByte(byte(v))
			return k
		}
		b.WriteByte('x')
	case 'u', 'U':
		size := 4
		if c == 'U' {
			size = 8
		}
		if k := digits(2, size, isHex); k == 2+size {
			v, _ := strconv.ParseUint(s[2:k], 16, 32)
			b.WriteRune(rune(v))
			return k
		}
		b.WriteByte(c)
	default:
		if k := digits(1, 3, isOct); k > 1 {
			v, _ := strconv.ParseUint(s[1:k], 8, 16)
			b.WriteByte(byte(v))
			return k
		}
		b.WriteByte(c)
	}
	return 2
}

// unescapeUnicode undoes the escapes of a U&” string with the default
// escape character: \XXXX, \+XXXXXX and \\. (UESCAPE is not followed.)
func unescapeUnicode(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		if s[i+1] == '\\' {
			b.WriteByte('\\')
			i++
			continue
		}
		hex, size := i+1, 4
		if s[i+1] == '+' {
			hex, size = i+2, 6
		}
		if hex+size <= len(s) {
			if v, err := strconv.ParseUint(s[hex:hex+size], 16, 32); err == nil {
				b.WriteRune(rune(v))
				i = hex + size - 1
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
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
