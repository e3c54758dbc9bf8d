package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgshield/pgshield/internal/testutil/sqlqual"
)

func TestPrivilegedStatementsQualified(t *testing.T) {
	id := pgx.Identifier{`work_mem`}.Sanitize()
	for name, stmt := range map[string]string{
		"sqlAvailableExtensions": sqlAvailableExtensions, "sqlReloadConf": sqlReloadConf,
		"sqlSettingsOrdered": sqlSettingsOrdered, "sqlSettingByName": sqlSettingByName,
		"sqlInRecovery": sqlInRecovery, "sqlCurrentSetting": sqlCurrentSetting,
		"sqlClock": sqlClock, "sqlStaleStatements": sqlStaleStatements, "sqlTerminate": sqlTerminate, "sqlSwitchWAL": sqlSwitchWAL, "sqlArchiverState": sqlArchiverState,
		"sqlAlterSystemSet": sqlAlterSystemSet(id, quoteLiteral("64MB")), "sqlAlterSystemReset": sqlAlterSystemReset(id),
	} {
		if probs := sqlqual.Check(stmt); len(probs) > 0 {
			t.Errorf("%s resolves names outside pg_catalog:\n  %s\n%s", name, strings.Join(probs, "\n  "), stmt)
		}
	}
}

// TestNoInlineSQL keeps every statement of the package in privsql.go.
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
