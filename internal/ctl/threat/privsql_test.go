package threat

import (
	"testing"

	"github.com/pgshield/pgshield/internal/testutil/sqlqual"
)

func TestPrivilegedStatementsQualified(t *testing.T) {
	sqlqual.CheckStatements(t, map[string]string{"sqlConnectionLimits": sqlConnectionLimits})
}

// TestNoInlineSQL keeps every statement of the package in privsql.go.
func TestNoInlineSQL(t *testing.T) { sqlqual.CheckNoInlineSQL(t) }
