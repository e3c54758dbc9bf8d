// Package postgres manages the PostgreSQL 15 instance behind the gateway:
// creating the cluster, running and supervising the postmaster as the
// postgres OS user, reading role secrets over the private Unix socket, and
// opening backend connections on behalf of authenticated clients.
package postgres
