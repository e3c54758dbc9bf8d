package pgbackend

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgshield/pgshield/internal/testutil/sqlqual"
)

func TestPrivilegedStatementsQualified(t *testing.T) {
	sqlqual.CheckStatements(t, map[string]string{"sqlLookupRole": sqlLookupRole})
}

// TestNoInlineSQL keeps every statement of the package in privsql.go,
// where TestPrivilegedStatementsQualified sees it.
func TestNoInlineSQL(t *testing.T) { sqlqual.CheckNoInlineSQL(t) }

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
