package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// pgshield.cluster_config holds what a cluster's nodes share (the network
// policy): written on the primary by pgshield's service role, replicated
// by PostgreSQL itself like the data, read by every node's daemon. Each
// row is versioned and MAC'd by the node (internal/cluster/node), so a
// row changed by anyone but a pgshield daemon, or an old row put back, is
// refused: the table only carries it.
const (
	sqlCreateClusterConfig = `CREATE TABLE IF NOT EXISTS pgshield.cluster_config (
	name pg_catalog.text PRIMARY KEY,
	version pg_catalog.int8 NOT NULL,
	body pg_catalog.bytea NOT NULL,
	mac pg_catalog.bytea NOT NULL)`
	sqlRevokeClusterConfig = `REVOKE ALL ON pgshield.cluster_config FROM PUBLIC`
	// As the principals table: pg_read_all_data (which the administrator
	// may grant) sees no row.
	sqlClusterConfigRLS      = `ALTER TABLE pgshield.cluster_config ENABLE ROW LEVEL SECURITY`
	sqlClusterConfigForceRLS = `ALTER TABLE pgshield.cluster_config FORCE ROW LEVEL SECURITY`

	// A body over 1 MiB (a network policy is a few KiB) reads as no row:
	// a huge one cannot load every node every second.
	sqlSharedRead = `SELECT version, body, mac FROM pgshield.cluster_config WHERE name OPERATOR(pg_catalog.=) $1
	AND pg_catalog.octet_length(body) OPERATOR(pg_catalog.<=) 1048576`
	sqlSharedLock   = `SELECT version FROM pgshield.cluster_config WHERE name OPERATOR(pg_catalog.=) $1 FOR UPDATE`
	sqlSharedUpsert = `INSERT INTO pgshield.cluster_config (name, version, body, mac) VALUES ($1, $2, $3, $4)
	ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version, body = EXCLUDED.body, mac = EXCLUDED.mac`
)

// clusterConfigStmts make the table (EnsureCatalog).
var clusterConfigStmts = []string{sqlCreateClusterConfig, sqlRevokeClusterConfig, sqlClusterConfigRLS, sqlClusterConfigForceRLS}

// Shared is one row of pgshield.cluster_config.
type Shared struct {
	Version   int64
	Body, MAC []byte
}

// ReadShared reads the row called name; ok is false if there is none.
func ReadShared(ctx context.Context, pool *pgxpool.Pool, name string) (s Shared, ok bool, err error) {
	err = pool.QueryRow(ctx, sqlSharedRead, name).Scan(&s.Version, &s.Body, &s.MAC)
	if errors.Is(err, pgx.ErrNoRows) {
		return s, false, nil
	}
	return s, err == nil, err
}

// WriteShared writes body as the next version of the row called name
// (above both the row's and floor, the last version this node applied:
// a row deleted or rolled back never makes the version go back), in one
// transaction that locks the row, with the MAC mac computes for that
// version; it returns the version written. On a standby it fails (a
// read-only transaction).
func WriteShared(ctx context.Context, pool *pgxpool.Pool, name string, body []byte, floor int64, mac func(version int64) []byte) (int64, error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(context.Background())
	var cur int64
	switch err := tx.QueryRow(ctx, sqlSharedLock, name).Scan(&cur); {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return 0, fmt.Errorf("reading pgshield.cluster_config: %w", err)
	}
	if cur >= 1<<62 {
		cur = 0 // forged (node.maxVersion): never wrapped around
	}
	next := max(cur, floor) + 1
	if _, err := tx.Exec(ctx, sqlSharedUpsert, name, next, body, mac(next)); err != nil {
		return 0, fmt.Errorf("writing pgshield.cluster_config: %w", err)
	}
	return next, tx.Commit(ctx)
}
