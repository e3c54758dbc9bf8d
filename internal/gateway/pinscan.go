package gateway

import "strings"

// Transaction pooling cannot carry session state from one transaction to
// the next (the client's next transaction may run on another backend), so
// a client that makes some is pinned to its backend for the rest of its
// session. needsPin decides that from SQL text (a simple Query, a Parse).
// It is a superset match: a false positive only costs the client its
// pooling; a false negative costs only the client's own session state
// (its next transaction may not see it), never another client's
// isolation, as every change of client resets the backend.

// maxPinScan bounds the text needsPin reads; longer text pins.
const maxPinScan = 1 << 20

// pinAnywhere are the words that pin wherever they occur outside
// comments: temporary objects, WITH HOLD cursors, set_config (session or
// not: cheap to over-match), session-level advisory locks.
var pinAnywhere = map[string]bool{
	"temp": true, "temporary": true, "pg_temp": true, "hold": true, "set_config": true,
	"pg_advisory_lock": true, "pg_advisory_lock_shared": true,
	"pg_try_advisory_lock": true, "pg_try_advisory_lock_shared": true,
}

// pinAtStart are the statements that pin: LISTEN, SQL PREPARE (and
// DEALLOCATE, DISCARD, which change what the gateway tracks), LOAD, and
// SET or RESET of a session setting (not SET LOCAL, SET TRANSACTION, SET
// CONSTRAINTS: they end with the transaction).
var pinAtStart = map[string]bool{
	"listen": true, "prepare": true, "deallocate": true, "discard": true, "load": true, "reset": true, "set": true,
}

// needsPin reports whether sql may make session state. Statement starts
// are found at the top level (after ';'); inside string literals (DO
// blocks, EXECUTE in functions) every word counts as a statement start.
func needsPin(sql string) bool {
	if len(sql) > maxPinScan {
		return true
	}
	return scanPin(sql, false)
}

// scanPin scans text; inString makes every word a possible statement start.
func scanPin(sql string, inString bool) bool {
	start, setPending := true, false
	word := func(w string) bool {
		if setPending {
			setPending = false
			return w != "local" && w != "transaction" && w != "constraints"
		}
		if pinAnywhere[w] {
			return true
		}
		if start || inString {
			if w == "set" {
				setPending = true
			} else if pinAtStart[w] {
				return true
			}
		}
		start = false
		return false
	}
	i, n := 0, len(sql)
	for i < n {
		c := sql[i]
		switch {
		case c == '-' && i+1 < n && sql[i+1] == '-':
			for i < n && sql[i] != '\n' {
				i++
			}
		case c == '/' && i+1 < n && sql[i+1] == '*':
			depth := 0
			for i < n {
				if sql[i] == '/' && i+1 < n && sql[i+1] == '*' {
					depth++
					i += 2
				} else if sql[i] == '*' && i+1 < n && sql[i+1] == '/' {
					depth--
					i += 2
					if depth == 0 {
						break
					}
				} else {
					i++
				}
			}
		case c == ';':
			if setPending {
				return true
			}
			start = true
			i++
		case c == '\'' || c == '"':
			// A string's words are scanned as code (a DO block, EXECUTE);
			// a quoted identifier's as words ("pg_advisory_lock"(1)).
			j := i + 1
			for j < n && sql[j] != c {
				j++
			}
			body := sql[i+1 : min(j, n)]
			if c == '"' {
				if word(lower(body)) {
					return true
				}
			} else if scanPin(body, true) {
				return true
			}
			i = j + 1
		case c == '$' && i+1 < n && !(sql[i+1] >= '0' && sql[i+1] <= '9'):
			j := i + 1
			for j < n && isWordByte(sql[j]) {
				j++
			}
			if j >= n || sql[j] != '$' {
				i = j
				continue
			}
			tag := sql[i : j+1]
			end := strings.Index(sql[j+1:], tag)
			if end < 0 {
				return scanPin(sql[j+1:], true)
			}
			if scanPin(sql[j+1:j+1+end], true) {
				return true
			}
			i = j + 1 + end + len(tag)
		case isWordByte(c):
			j := i
			for j < n && isWordByte(sql[j]) {
				j++
			}
			if word(lower(sql[i:j])) {
				return true
			}
			i = j
		default:
			i++
		}
	}
	return setPending
}

func isWordByte(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c >= 0x80
}

func lower(s string) string { return strings.ToLower(s) }
