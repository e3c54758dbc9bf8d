package pgbackend

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DSN is the connection string of role to database over the private socket
// in socketDir. Connect with PinnedConfig or PinnedPool, never with the
// string alone.
func DSN(socketDir string, port int, role, database string) string {
	return fmt.Sprintf("host=%s port=%d user=%s dbname=%s application_name=pgshield sslmode=disable",
		socketDir, port, pgconnQuote(role), pgconnQuote(database))
}

// pgconnQuote quotes a keyword/value connection string value.
func pgconnQuote(v string) string {
	return "'" + strings.ReplaceAll(strings.ReplaceAll(v, `\`, `\\`), "'", `\'`) + "'"
}

// PinnedConfig parses dsn for a connection as one of pgshield's own roles:
// search_path is pinned in the startup packet (PinnedSearchPath), so no
// setting of the role or database, and no object a tenant creates in public
// or in a schema named after the role, is ever resolved by pgshield's SQL.
func PinnedConfig(dsn string) (*pgx.ConnConfig, error) {
	cc, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	pinSearchPath(cc)
	return cc, nil
}

// PinnedPool opens a pool of at most maxConns connections to dsn with the
// search path pinned, as PinnedConfig does.
func PinnedPool(ctx context.Context, dsn string, maxConns int32) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	pinSearchPath(pc.ConnConfig)
	pc.MaxConns = maxConns
	pc.MinConns = 0
	pc.MaxConnIdleTime = time.Minute
	return pgxpool.NewWithConfig(ctx, pc)
}

func pinSearchPath(cc *pgx.ConnConfig) {
	if cc.RuntimeParams == nil {
		cc.RuntimeParams = map[string]string{}
	}
	cc.RuntimeParams["search_path"] = PinnedSearchPath
	// A tenant may hold locks that pgshield's statements would wait on
	// (a table it can lock, a role row in a long transaction): none may
	// wait forever and take logins or the management API down with it.
	cc.RuntimeParams["lock_timeout"] = PinnedLockTimeout
	cc.RuntimeParams["statement_timeout"] = PinnedStatementTimeout
}

// Bounds of every privileged statement, sent in the startup packet.
const (
	PinnedLockTimeout      = "10s"
	PinnedStatementTimeout = "60s"
)
