package alerts

import (
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgshield/pgshield/internal/testutil/sqlqual"
)

func TestPrivilegedStatementsQualified(t *testing.T) {
	r := pgx.Identifier{"backup_admin"}.Sanitize()
	s := pgx.Identifier{"finance"}.Sanitize()
	tb := pgx.Identifier{"finance", "payroll"}.Sanitize()
	sqlqual.CheckStatements(t, map[string]string{
		"sqlRoleAttrs": sqlRoleAttrs, "sqlPowerfulMembers": sqlPowerfulMembers, "sqlPublicCreate": sqlPublicCreate,
		"sqlRoleExists": sqlRoleExists, "sqlDecoyRoles": sqlDecoyRoles, "sqlDecoyTables": sqlDecoyTables,
		"sqlTableOID": sqlTableOID, "sqlSchemaTrust": sqlSchemaTrust, "sqlAuditRoleSetting": sqlAuditRoleSetting,
		"sqlReloadConf": sqlReloadConf, "sqlDatabases": sqlDatabases, "sqlDatabaseAllowsConn": sqlDatabaseAllowsConn,
		"sqlSessionIsOwn": sqlSessionIsOwn, "sqlCreateAuditRole": sqlCreateAuditRole(r),
		"sqlSetAuditRole":    sqlSetAuditRole("'pgshield_decoy_audit'"),
		"sqlCreateDecoyRole": sqlCreateDecoyRole(r, "'SCRAM-SHA-256$4096:c2FsdA==$YQ==:Yg=='"),
		"sqlDropRole":        sqlDropRole(r), "sqlCreateSchema": sqlCreateSchema(s), "sqlGrantSchemaUsage": sqlGrantSchemaUsage(s),
		"sqlCreateDecoyTable": sqlCreateDecoyTable(tb), "sqlFillDecoyTable": sqlFillDecoyTable(tb),
		"sqlDecoyNoStats": sqlDecoyNoStats(tb), "sqlDecoyStats": sqlDecoyStats, "sqlPurgeDecoyStats": sqlPurgeDecoyStats,
		"sqlDecoyTargets":   sqlDecoyTargets,
		"sqlGrantDecoyRead": sqlGrantDecoyRead(tb, "PUBLIC"), "sqlDropTable": sqlDropTable(tb), "sqlDropSchema": sqlDropSchema(s),
	})
}

// TestNoInlineSQL keeps every statement of the package in privsql.go.
func TestNoInlineSQL(t *testing.T) { sqlqual.CheckNoInlineSQL(t) }
