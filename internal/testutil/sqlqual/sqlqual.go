// Package sqlqual checks that a privileged SQL statement resolves only
// pg_catalog objects: every function call and type cast schema-qualified,
// every operator written OPERATOR(pg_catalog.op), every parameter cast, and
// the bodies of functions (dollar-quoted) checked the same way. pgshield's
// packages that run SQL as a superuser test their statements with it (as
// psql's describe.c and pg_dump write their catalog queries). It is a
// lexer, not a parser: it errs on the side of refusing.
package sqlqual

import (
	"fmt"
	"regexp"
	"strings"
	"unicode"
)

type kind int

const (
	kIdent kind = iota
	kQuotedIdent
	kString
	kDollarString
	kNumber
	kParam
	kOp
	kPunct
)

type token struct {
	k    kind
	text string // identifiers lower-cased; dollar strings: the body
	pos  int
}

// keywords that may stand before "(" without being a function call.
var parenKeywords = map[string]bool{
	"in": true, "exists": true, "values": true, "coalesce": true, "nullif": true, "greatest": true,
	"least": true, "any": true, "all": true, "some": true, "array": true, "row": true, "cast": true,
	"table": true, "as": true, "key": true, "check": true, "unique": true, "references": true,
	"filter": true, "over": true, "using": true, "on": true, "and": true, "or": true, "not": true,
	"select": true, "where": true, "returning": true, "into": true, "from": true, "join": true,
	"except": true, "default": true, "operator": true, "query": true, "then": true, "else": true,
}

// Check returns the problems found in stmt; none means it is qualified.
func Check(stmt string) []string {
	toks, err := lex(stmt)
	if err != nil {
		return []string{err.Error()}
	}
	var probs []string
	bad := func(t token, format string, args ...any) {
		probs = append(probs, fmt.Sprintf("at %d (%q): %s", t.pos, t.text, fmt.Sprintf(format, args...)))
	}
	qualifiedAt := func(i int) bool { // toks[i] is a name preceded by "schema."
		return i >= 2 && toks[i-1].k == kPunct && toks[i-1].text == "." &&
			(toks[i-2].k == kIdent || toks[i-2].k == kQuotedIdent)
	}
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		next := func(n int) token {
			if i+n < len(toks) {
				return toks[i+n]
			}
			return token{k: kPunct, text: ""}
		}
		switch t.k {
		case kDollarString:
			for _, p := range Check(t.text) {
				probs = append(probs, "in a function body: "+p)
			}
		case kIdent, kQuotedIdent:
			if t.k == kIdent && t.text == "operator" && next(1).text == "(" {
				// OPERATOR(pg_catalog.op)
				if next(2).text != "pg_catalog" || next(3).text != "." || next(4).k != kOp || next(5).text != ")" {
					bad(t, "OPERATOR() must name pg_catalog's operator")
				}
				i += 5
				break
			}
			if n := next(1); n.k == kPunct && n.text == "(" {
				if t.k == kIdent && parenKeywords[t.text] {
					break
				}
				if !qualifiedAt(i) {
					bad(t, "function call or type not schema-qualified")
				}
			}
			if t.k == kIdent && t.text == "collate" {
				if !(next(2).text == "." && next(1).text == "pg_catalog") {
					bad(t, "collation not schema-qualified")
				}
			}
		case kParam:
			if n := next(1); !(n.k == kPunct && n.text == "::") {
				bad(t, "parameter without a cast: its type would be inferred")
			}
		case kPunct:
			if t.text == "::" {
				if !(next(1).text == "pg_catalog" && next(2).text == ".") {
					bad(t, "cast to a type not schema-qualified")
				}
			}
		case kOp:
			if t.text == "=" && setAssignment(toks, i) {
				break
			}
			bad(t, "operator not written OPERATOR(pg_catalog.%s)", t.text)
		}
	}
	return probs
}

// setAssignment: "SET name = value" (a setting, not an operator).
func setAssignment(toks []token, i int) bool {
	j := i - 1
	for j >= 0 && (toks[j].k == kIdent || (toks[j].k == kPunct && toks[j].text == ".")) {
		if toks[j].k == kIdent && toks[j].text == "set" {
			return true
		}
		j--
	}
	return false
}

var dollarTag = regexp.MustCompile(`^\$([A-Za-z_][A-Za-z0-9_]*)?\$`)

func lex(s string) ([]token, error) {
	var toks []token
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case strings.HasPrefix(s[i:], "--"):
			if j := strings.IndexByte(s[i:], '\n'); j >= 0 {
				i += j
			} else {
				i = len(s)
			}
		case strings.HasPrefix(s[i:], "/*"):
			j := strings.Index(s[i+2:], "*/")
			if j < 0 {
				return nil, fmt.Errorf("unterminated comment at %d", i)
			}
			i += j + 4
		case c == '\'' || ((c == 'E' || c == 'e') && i+1 < len(s) && s[i+1] == '\''):
			start := i
			esc := c != '\''
			if esc {
				i++
			}
			i++
			for {
				if i >= len(s) {
					return nil, fmt.Errorf("unterminated string at %d", start)
				}
				if esc && s[i] == '\\' {
					i += 2
					continue
				}
				if s[i] == '\'' {
					if i+1 < len(s) && s[i+1] == '\'' {
						i += 2
						continue
					}
					i++
					break
				}
				i++
			}
			toks = append(toks, token{k: kString, text: s[start:i], pos: start})
		case c == '"':
			start := i
			i++
			for {
				if i >= len(s) {
					return nil, fmt.Errorf("unterminated quoted identifier at %d", start)
				}
				if s[i] == '"' {
					if i+1 < len(s) && s[i+1] == '"' {
						i += 2
						continue
					}
					i++
					break
				}
				i++
			}
			toks = append(toks, token{k: kQuotedIdent, text: s[start:i], pos: start})
		case c == '$' && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9':
			start := i
			i++
			for i < len(s) && s[i] >= '0' && s[i] <= '9' {
				i++
			}
			toks = append(toks, token{k: kParam, text: s[start:i], pos: start})
		case c == '$':
			tag := dollarTag.FindString(s[i:])
			if tag == "" {
				return nil, fmt.Errorf("stray $ at %d", i)
			}
			end := strings.Index(s[i+len(tag):], tag)
			if end < 0 {
				return nil, fmt.Errorf("unterminated dollar quote at %d", i)
			}
			toks = append(toks, token{k: kDollarString, text: s[i+len(tag) : i+len(tag)+end], pos: i})
			i += len(tag) + end + len(tag)
		case c == '_' || unicode.IsLetter(rune(c)):
			start := i
			for i < len(s) && (s[i] == '_' || s[i] == '$' || unicode.IsLetter(rune(s[i])) || unicode.IsDigit(rune(s[i]))) {
				i++
			}
			toks = append(toks, token{k: kIdent, text: strings.ToLower(s[start:i]), pos: start})
		case c >= '0' && c <= '9':
			start := i
			for i < len(s) && (s[i] == '.' || (s[i] >= '0' && s[i] <= '9')) {
				i++
			}
			toks = append(toks, token{k: kNumber, text: s[start:i], pos: start})
		case strings.HasPrefix(s[i:], "::"):
			toks = append(toks, token{k: kPunct, text: "::", pos: i})
			i += 2
		case strings.ContainsRune("(),;.[]", rune(c)):
			toks = append(toks, token{k: kPunct, text: string(c), pos: i})
			i++
		case strings.ContainsRune("+-*/<>=~!@#%^&|`?:", rune(c)):
			start := i
			for i < len(s) && strings.ContainsRune("+-*/<>=~!@#%^&|`?", rune(s[i])) {
				i++
			}
			if i == start {
				i++
			}
			toks = append(toks, token{k: kOp, text: s[start:i], pos: start})
		default:
			return nil, fmt.Errorf("unexpected %q at %d", c, i)
		}
	}
	return toks, nil
}

// InlineSQL finds calls that pass a string literal straight to Exec, Query
// or QueryRow in Go source: privileged statements belong in a privsql.go.
var InlineSQL = regexp.MustCompile(`\.(Exec|Query|QueryRow)\(\s*[\w.]+(\(\))?\s*,\s*[` + "`" + `"]`)
