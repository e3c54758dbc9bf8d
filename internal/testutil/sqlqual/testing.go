package sqlqual

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// CheckStatements fails t for every statement (by name) that resolves a
// name outside pg_catalog.
func CheckStatements(t testing.TB, stmts map[string]string) {
	t.Helper()
	for name, stmt := range stmts {
		if probs := Check(stmt); len(probs) > 0 {
			t.Errorf("%s resolves names outside pg_catalog:\n  %s\n%s", name, strings.Join(probs, "\n  "), stmt)
		}
	}
}

// CheckNoInlineSQL fails t for every line of the package in the current
// directory, but privsql.go and tests, that passes a string literal straight
// to Exec, Query or QueryRow: statements belong in privsql.go, where
// CheckStatements sees them.
func CheckNoInlineSQL(t testing.TB) {
	t.Helper()
	files, _ := filepath.Glob("*.go")
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") || f == "privsql.go" {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(b), "\n") {
			if InlineSQL.MatchString(line) {
				t.Errorf("%s:%d runs an inline statement; put it in privsql.go: %s", f, i+1, strings.TrimSpace(line))
			}
		}
	}
}
