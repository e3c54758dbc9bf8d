// Package wire reads and checks the untrusted first bytes of a PostgreSQL
// connection (the startup packet family and the authentication exchange) and
// writes the gateway's own protocol messages. Everything it reads is bounded
// before anything is allocated.
package wire
