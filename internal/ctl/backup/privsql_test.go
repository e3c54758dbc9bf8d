package backup

import (
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgshield/pgshield/internal/testutil/sqlqual"
)

func TestPrivilegedStatementsQualified(t *testing.T) {
	id := pgx.Identifier{`restore_command`}.Sanitize()
	sqlqual.CheckStatements(t, map[string]string{
		"sqlReloadConf": sqlReloadConf, "sqlInRecovery": sqlInRecovery,
		"sqlSwitchWAL": sqlSwitchWAL, "sqlArchiverState": sqlArchiverState,
		"sqlAlterSystemReset": sqlAlterSystemReset(id),
	})
}

// TestNoInlineSQL keeps every statement of the package in privsql.go.
func TestNoInlineSQL(t *testing.T) { sqlqual.CheckNoInlineSQL(t) }
