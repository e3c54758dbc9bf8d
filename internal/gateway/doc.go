// Package gateway is pgshield's only door to PostgreSQL: it accepts TCP
// connections, admits them (TLS negotiation, startup packet), authenticates
// the client itself with SCRAM, opens the backend session over the private
// Unix socket and relays bytes both ways.
//
// The files follow a connection: server.go accepts it, session.go runs it
// as a straight line of steps, calling admit.go (TLS, startup packet),
// login.go (SCRAM, or a password or access token inside TLS), cancel.go
// (the cancel keys clients hold) and relay.go; policy.go ends it when the
// network rules stop allowing it, leadership.go when the node stops being
// the confirmed primary of a high-availability cluster.
package gateway
