// Package pgbackend is the gateway's way into the managed PostgreSQL: it
// dials the private Unix socket, runs the startup handshake for a client
// the gateway has authenticated, delivers cancel requests, and looks up the
// roles that log in, as the least-privileged lookup role. It depends on the
// wire codec and pgx only; the instance's lifecycle (internal/postgres),
// keys, storage, backups and the audit log stay out of the data path, and
// deps_test.go keeps them out.
package pgbackend
