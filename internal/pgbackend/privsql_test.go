package pgbackend

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgshield/pgshield/internal/testutil/sqlqual"
)

func TestPrivilegedStatementsQualified(t *testing.T) {
	for name, stmt := range map[string]string{"sqlLookupRole": sqlLookupRole} {
		if probs := sqlqual.Check(stmt); len(probs) > 0 {
			t.Errorf("%s resolves names outside pg_catalog:\n  %s\n%s", name, strings.Join(probs, "\n  "), stmt)
		}
	}
}

// TestNoInlineSQL keeps every statement of the package in privsql.go,
// where TestPrivilegedStatementsQualified sees it.
func TestNoInlineSQL(t *testing.T) {
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
			if sqlqual.InlineSQL.MatchString(line) {
				t.Errorf("%s:%d runs an inline statement; put it in privsql.go: %s", f, i+1, strings.TrimSpace(line))
			}
		}
	}
}

func TestPinnedConfig(t *testing.T) {
	cc, err := PinnedConfig("host=/tmp port=5432 user='a b' dbname=postgres options='-c search_path=public'")
	if err != nil {
		t.Fatal(err)
	}
	if got := cc.RuntimeParams["search_path"]; got != PinnedSearchPath {
		t.Errorf("search_path = %q; want %q", got, PinnedSearchPath)
	}
	if cc.User != "a b" {
		t.Errorf("user = %q", cc.User)
	}
}

func TestDSNQuotesRole(t *testing.T) {
	for _, role := range []string{"pgshield_auth", `we'ird\ role`, "x dbname=evil"} {
		if got := pgconnQuote(role); !strings.HasPrefix(got, "'") {
			t.Fatalf("pgconnQuote(%q) = %q", role, got)
		}
		cc, err := pgx.ParseConfig(DSN("/tmp", 5432, role, "postgres"))
		if err != nil {
			t.Fatalf("ParseConfig with role %q: %v", role, err)
		}
		if cc.User != role || cc.Database != "postgres" {
			t.Errorf("role %q parsed as user %q database %q", role, cc.User, cc.Database)
		}
	}
}
