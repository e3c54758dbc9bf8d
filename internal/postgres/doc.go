// Package postgres manages the PostgreSQL 15 instance behind the gateway:
// creating the cluster, running and supervising the postmaster as the
// postgres OS user, bootstrapping and mending pgshield's catalog, and the
// management statements (principals, parameters) run as the service role.
// The gateway's own way in (dialing, startup, cancel, login lookups) is
// internal/pgbackend, which this package configures.
package postgres
