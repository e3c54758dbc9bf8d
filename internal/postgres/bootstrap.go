package postgres

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgshield/pgshield/internal/config"
)

var roleNameRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// CheckAdminName refuses names that are not plain identifiers or that clash
// with reserved roles.
func CheckAdminName(cfg *config.Config, name string) error {
	switch {
	case !roleNameRE.MatchString(name):
		return fmt.Errorf("invalid administrator name %q: use lower-case letters, digits and _ (at most 63), starting with a letter or _", name)
	case strings.HasPrefix(name, "pg_"):
		return fmt.Errorf("invalid administrator name %q: the pg_ prefix is reserved", name)
	case cfg.IsReserved(name), name == "azure_superuser", name == "public":
		return fmt.Errorf("invalid administrator name %q: reserved", name)
	}
	return nil
}

// Bootstrap starts the new cluster once to create the service role and the
// administrator (from its SCRAM verifier, so no plaintext password reaches
// PostgreSQL), then stops it.
// extra are run after, as the superuser (a cluster node's roles); no
// statement is ever echoed in an error, as they may carry verifiers.
func Bootstrap(ctx context.Context, c *Cluster, adminVerifier string, extra ...string) error {
	sup := &Supervisor{Cluster: c}
	if err := sup.Start(ctx); err != nil {
		return err
	}
	defer sup.Stop(30 * time.Second)
	conn, err := c.ConnectPrivileged(ctx, config.SuperuserRole)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if strings.ContainsAny(adminVerifier, "'\\") {
		return fmt.Errorf("bad verifier")
	}
	svc := pgx.Identifier{c.Cfg.ServiceRole}.Sanitize()
	admin := pgx.Identifier{c.Cfg.AdminUser}.Sanitize()
	stmts := []string{
		// The service role reaches PostgreSQL only over the private socket;
		// the gateway never lets it log in from outside.
		sqlCreateRole(svc, "LOGIN SUPERUSER"),
		sqlCreateRole(admin, "LOGIN CREATEROLE CREATEDB PASSWORD "+QuoteLiteral(adminVerifier)),
	}
	stmts = append(stmts, adminGrants(admin)...)
	stmts = append(stmts, extra...)
	stmts = append(stmts,
		sqlCommentRole(svc, QuoteLiteral("pgshield service role (reserved)")),
		sqlCommentRole(admin, QuoteLiteral("pgshield server administrator")))
	if c.HasPgaudit() {
		// Event triggers that let pgaudit name the objects DDL touches.
		stmts = append(stmts, sqlCreatePgaudit,
			// pgshield's own catalog lookups are not the customer's
			// statements; the gateway records its own actions.
			sqlAuditOff(svc))
	}
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			// Never echo the statement: one of them carries the verifier.
			return fmt.Errorf("creating roles: %w", err)
		}
	}
	if err := EnsureCatalog(ctx, conn, c.Cfg.ServiceRole, c.HasPgaudit()); err != nil {
		return fmt.Errorf("creating pgshield's catalog: %w", err)
	}
	return nil
}
