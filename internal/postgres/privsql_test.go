package postgres

import (
	"os"
	"path/filepath"
	"strings"
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
		"sqlCreateLookupRole": sqlCreateLookupRole(id), "sqlNormalizeLookupRole": sqlNormalizeLookupRole(id),
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
	for name, stmt := range privilegedStatements() {
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
