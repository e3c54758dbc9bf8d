// Package gateway is pgshield's only door to PostgreSQL: it accepts TCP
// connections, admits them (TLS negotiation, startup packet), authenticates
// the client itself with SCRAM, opens the backend session over the private
// Unix socket and relays bytes both ways.
package gateway
