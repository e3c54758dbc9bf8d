package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgshield/pgshield/internal/config"
)

// ErrPrincipalSchema means the pgshield schema or its table principals is
// not a superuser's plain table: someone else made or was given it, and it
// cannot be trusted.
var ErrPrincipalSchema = errors.New("schema pgshield or its table principals in database postgres is not owned by a superuser; token principals are disabled until that is mended")

// EnsureCatalog makes pgshield's catalog in database postgres what it must
// be, on a connection of a superuser (bootstrap, and every start, so that
// servers made by earlier versions are brought up to date and anything a
// tenant changed is put back):
//   - schema pgshield, a superuser's, no right for PUBLIC; a schema of that
//     name someone else owns (possible only on servers made before pgshield
//     created it at init) is renamed out of the way, never used;
//   - the principals table with row-level security forced and no policy;
//   - the lookup role (config.LookupRole): LOGIN and nothing else, member
//     of no role; and pgshield.login_role, the one function it may run;
//   - pgshield.cluster_config, what a cluster's nodes share (the network
//     policy), revoked from PUBLIC, row-level security forced;
//   - pgshield.sessions (over the C function pgshield.client_sessions):
//     how each gateway session logged in, for everyone under
//     pg_stat_activity's rules, the one thing PUBLIC's USAGE reaches.
//
// It returns ErrPrincipalSchema if the principals table is not a
// superuser's plain table (it is left alone: only a superuser could have
// done that, and the lookups ignore it while it stays so).
func EnsureCatalog(ctx context.Context, conn querier, serviceRole string, pgaudit bool) error {
	svc := pgx.Identifier{serviceRole}.Sanitize()
	lookup := pgx.Identifier{config.LookupRole}.Sanitize()
	var superOwned bool
	switch err := conn.QueryRow(ctx, sqlSchemaTrust).Scan(&superOwned); {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return fmt.Errorf("checking schema pgshield: %w", err)
	case !superOwned:
		aside := pgx.Identifier{fmt.Sprintf("pgshield_untrusted_%d", time.Now().Unix())}.Sanitize()
		if _, err := conn.Exec(ctx, sqlRenameUntrustedSchema(aside)); err != nil {
			return fmt.Errorf("moving an untrusted schema pgshield aside: %w", err)
		}
	}
	var exists bool
	if err := conn.QueryRow(ctx, sqlLookupRoleExists, config.LookupRole).Scan(&exists); err != nil {
		return fmt.Errorf("checking the lookup role: %w", err)
	}
	stmts := []string{}
	if !exists {
		stmts = append(stmts, sqlCreateLookupRole(lookup))
	}
	stmts = append(stmts, sqlNormalizeLookupRole(lookup), sqlResetRoleSettings(lookup))
	if pgaudit {
		// Login lookups are not the customer's statements.
		stmts = append(stmts, sqlAuditOff(lookup))
	}
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("preparing the lookup role: %w", err)
		}
	}
	if err := revokeLookupMemberships(ctx, conn); err != nil {
		return err
	}
	if err := revokeReservedMemberships(ctx, conn); err != nil {
		return err
	}
	for _, s := range []string{sqlCreateSchema, sqlSchemaOwner(svc), sqlRevokeSchema} {
		if _, err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("creating schema pgshield: %w", err)
		}
	}
	var tableOK *bool
	switch err := conn.QueryRow(ctx, sqlTableTrust).Scan(&tableOK); {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return fmt.Errorf("checking table pgshield.principals: %w", err)
	}
	if tableOK == nil || *tableOK {
		for _, s := range []string{sqlCreatePrincipals, sqlRevokePrincipals, sqlPrincipalsRLS, sqlPrincipalsForceRLS,
			sqlPrincipalsNoStats, sqlPrincipalsDropStats} {
			if _, err := conn.Exec(ctx, s); err != nil {
				return fmt.Errorf("creating the principal table: %w", err)
			}
		}
	}
	for _, s := range []string{sqlLoginRoleFunc, sqlFuncOwner(svc), sqlLoginRoleRevoke,
		sqlGrantLookupUsage(lookup), sqlGrantLookupExecute(lookup)} {
		if _, err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("creating the login lookup function: %w", err)
		}
	}
	for _, s := range clusterConfigStmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("creating the cluster configuration table: %w", err)
		}
	}
	// After the table is revoked and locked: USAGE lets PUBLIC reach the
	// sessions view, and nothing else in the schema.
	for _, s := range []string{sqlClientSessionsFunc, sqlClientSessionsRevoke, sqlClientSessionsGrant,
		sqlSessionsView, sqlSessionsRevoke, sqlSessionsGrant, sqlSchemaUsagePublic} {
		if _, err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("creating the sessions view: %w", err)
		}
	}
	if tableOK != nil && !*tableOK {
		return ErrPrincipalSchema
	}
	return nil
}

// revokeLookupMemberships takes away every membership of the lookup role,
// in either direction.
func revokeLookupMemberships(ctx context.Context, conn querier) error {
	rows, err := conn.Query(ctx, sqlLookupRoleMemberships, config.LookupRole)
	if err != nil {
		return fmt.Errorf("reading the lookup role's memberships: %w", err)
	}
	pairs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) ([2]string, error) {
		var p [2]string
		err := r.Scan(&p[0], &p[1])
		return p, err
	})
	if err != nil {
		return fmt.Errorf("reading the lookup role's memberships: %w", err)
	}
	for _, p := range pairs {
		if _, err := conn.Exec(ctx, sqlRevokeMembership(pgx.Identifier{p[0]}.Sanitize(), pgx.Identifier{p[1]}.Sanitize())); err != nil {
			return fmt.Errorf("revoking a membership of the lookup role: %w", err)
		}
	}
	return nil
}

// checkPrincipalTable refuses to use the principals table unless schema
// and table are a superuser's and the table is a plain table.
func checkPrincipalTable(ctx context.Context, q querier) error {
	var schemaOK, tableOK bool
	if err := q.QueryRow(ctx, sqlSchemaTrust).Scan(&schemaOK); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrPrincipalSchema
		}
		return err
	}
	if err := q.QueryRow(ctx, sqlTableTrust).Scan(&tableOK); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrPrincipalSchema
		}
		return err
	}
	if !schemaOK || !tableOK {
		return ErrPrincipalSchema
	}
	return nil
}

// revokeReservedMemberships takes pg_write_all_data back from every role
// that is not a superuser: pgshield_guard keeps it from being granted now,
// but a server made before may hold such grants, and the role writes the
// system catalogs (see ReservedMemberships).
func revokeReservedMemberships(ctx context.Context, conn querier) error {
	rows, err := conn.Query(ctx, sqlReservedMembers, "pg_write_all_data")
	if err != nil {
		return fmt.Errorf("reading who holds pg_write_all_data: %w", err)
	}
	pairs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) ([2]string, error) {
		var p [2]string
		err := r.Scan(&p[0], &p[1])
		return p, err
	})
	if err != nil {
		return fmt.Errorf("reading who holds pg_write_all_data: %w", err)
	}
	for _, p := range pairs {
		if _, err := conn.Exec(ctx, sqlRevokeMembership(pgx.Identifier{p[0]}.Sanitize(), pgx.Identifier{p[1]}.Sanitize())); err != nil {
			return fmt.Errorf("revoking pg_write_all_data from %q: %w", p[1], err)
		}
	}
	return nil
}
