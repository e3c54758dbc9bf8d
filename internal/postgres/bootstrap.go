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

// AdminGrants are the predefined roles the administrator is a member of.
var AdminGrants = []string{"pg_monitor", "pg_signal_backend", "pg_read_all_settings", "pg_read_all_stats"}

// adminGrants give a role (a quoted identifier) what the administrator has
// beyond its CREATEROLE and CREATEDB attributes.
func adminGrants(role string) []string {
	return []string{
		fmt.Sprintf(`GRANT %s TO %s`, strings.Join(AdminGrants, ", "), role),
		// As on a managed server, the administrator works in the default
		// database: create schemas and objects there, and grant that on.
		fmt.Sprintf(`GRANT ALL ON DATABASE postgres TO %s WITH GRANT OPTION`, role),
		fmt.Sprintf(`GRANT ALL ON SCHEMA public TO %s WITH GRANT OPTION`, role),
	}
}

// Bootstrap starts the new cluster once to create the service role and the
// administrator (from its SCRAM verifier, so no plaintext password reaches
// PostgreSQL), then stops it.
func Bootstrap(ctx context.Context, c *Cluster, adminVerifier string) error {
	sup := &Supervisor{Cluster: c}
	if err := sup.Start(ctx); err != nil {
		return err
	}
	defer sup.Stop(30 * time.Second)
	dsn := strings.Replace(c.ServiceDSN("postgres"), "user="+c.Cfg.ServiceRole, "user="+config.SuperuserRole, 1)
	conn, err := pgx.Connect(ctx, dsn)
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
		fmt.Sprintf(`CREATE ROLE %s LOGIN SUPERUSER`, svc),
		fmt.Sprintf(`CREATE ROLE %s LOGIN CREATEROLE CREATEDB PASSWORD '%s'`, admin, adminVerifier),
	}
	stmts = append(stmts, adminGrants(admin)...)
	stmts = append(stmts,
		fmt.Sprintf(`COMMENT ON ROLE %s IS 'pgshield service role (reserved)'`, svc),
		fmt.Sprintf(`COMMENT ON ROLE %s IS 'pgshield server administrator'`, admin))
	stmts = append(stmts, principalSchema(svc)...)
	if c.HasPgaudit() {
		// Event triggers that let pgaudit name the objects DDL touches.
		stmts = append(stmts, `CREATE EXTENSION IF NOT EXISTS pgaudit`,
			// pgshield's own catalog lookups are not the customer's
			// statements; the gateway records its own actions.
			fmt.Sprintf(`ALTER ROLE %s SET pgaudit.log = 'none'`, svc))
	}
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			// Never echo the statement: one of them carries the verifier.
			return fmt.Errorf("creating roles: %w", err)
		}
	}
	return nil
}
