package params

import (
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgshield/pgshield/internal/testutil/sqlqual"
)

func TestPrivilegedStatementsQualified(t *testing.T) {
	id := pgx.Identifier{`work_mem`}.Sanitize()
	sqlqual.CheckStatements(t, map[string]string{
		"sqlAvailableExtensions": sqlAvailableExtensions, "sqlReloadConf": sqlReloadConf,
		"sqlSettingsOrdered": sqlSettingsOrdered, "sqlSettingByName": sqlSettingByName,
		"sqlCurrentSetting": sqlCurrentSetting, "sqlSettingContext": sqlSettingContext, "sqlTrySetting": sqlTrySetting,
		"sqlClock": sqlClock, "sqlStaleStatements": sqlStaleStatements, "sqlTerminate": sqlTerminate,
		"sqlAlterSystemSet": sqlAlterSystemSet(id, quoteLiteral("64MB")),
	})
}

// TestNoInlineSQL keeps every statement of the package in privsql.go.
func TestNoInlineSQL(t *testing.T) { sqlqual.CheckNoInlineSQL(t) }
