package postgres

import (
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgshield/pgshield/internal/testutil/sqlqual"
)

// privilegedStatements lists every statement privsql.go holds, the
// builders filled with identifiers a tenant could choose.
func privilegedStatements() map[string]string {
	id := pgx.Identifier{`Evil "Role"`}.Sanitize()
	m := map[string]string{
		"sqlCreateSchema": sqlCreateSchema, "sqlSchemaTrust": sqlSchemaTrust, "sqlTableTrust": sqlTableTrust,
		"sqlRevokeSchema": sqlRevokeSchema, "sqlCreatePrincipals": sqlCreatePrincipals,
		"sqlRevokePrincipals": sqlRevokePrincipals, "sqlPrincipalsRLS": sqlPrincipalsRLS,
		"sqlPrincipalsForceRLS": sqlPrincipalsForceRLS, "sqlPrincipalsNoStats": sqlPrincipalsNoStats,
		"sqlPrincipalsDropStats": sqlPrincipalsDropStats, "sqlReservedMembers": sqlReservedMembers, "sqlLoginRoleFunc": sqlLoginRoleFunc,
		"sqlLoginRoleRevoke": sqlLoginRoleRevoke, "sqlLookupRoleExists": sqlLookupRoleExists,
		"sqlLookupRoleMemberships": sqlLookupRoleMemberships, "sqlInsertPrincipal": sqlInsertPrincipal,
		"sqlListPrincipals": sqlListPrincipals, "sqlDeletePrincipal": sqlDeletePrincipal,
		"sqlPing": sqlPing, "sqlCreatePgaudit": sqlCreatePgaudit,
		"sqlClientSessionsFunc": sqlClientSessionsFunc, "sqlClientSessionsRevoke": sqlClientSessionsRevoke,
		"sqlClientSessionsGrant": sqlClientSessionsGrant, "sqlSessionsView": sqlSessionsView,
		"sqlSessionsRevoke": sqlSessionsRevoke, "sqlSessionsGrant": sqlSessionsGrant,
		"sqlSchemaUsagePublic": sqlSchemaUsagePublic,
		"sqlCreateLookupRole":  sqlCreateLookupRole(id), "sqlNormalizeLookupRole": sqlNormalizeLookupRole(id),
		"sqlResetRoleSettings": sqlResetRoleSettings(id), "sqlRevokeMembership": sqlRevokeMembership(id, id),
		"sqlGrantLookupUsage": sqlGrantLookupUsage(id), "sqlGrantLookupExecute": sqlGrantLookupExecute(id),
		"sqlSchemaOwner": sqlSchemaOwner(id), "sqlFuncOwner": sqlFuncOwner(id),
		"sqlRenameUntrustedSchema": sqlRenameUntrustedSchema(id), "sqlAuditOff": sqlAuditOff(id),
		"sqlCreateRole": sqlCreateRole(id, "LOGIN"), "sqlCommentRole": sqlCommentRole(id, QuoteLiteral("it's")),
		"sqlDropRole": sqlDropRole(id),
	}
	for i, s := range adminGrants(id) {
		m["adminGrants"+string(rune('0'+i))] = s
	}
	for i, s := range adminRevokes(id) {
		m["adminRevokes"+string(rune('0'+i))] = s
	}
	return m
}

func TestPrivilegedStatementsQualified(t *testing.T) {
	sqlqual.CheckStatements(t, privilegedStatements())
}

// TestNoInlineSQL keeps every statement of the package in privsql.go,
// where TestPrivilegedStatementsQualified sees it.
func TestNoInlineSQL(t *testing.T) { sqlqual.CheckNoInlineSQL(t) }
