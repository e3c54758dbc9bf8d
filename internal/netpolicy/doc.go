// Package netpolicy holds the network access rules the gateway enforces,
// modelled on Azure Database for PostgreSQL flexible server networking.
//
// In public access mode ([ModePublic]) the endpoint refuses every source
// until a firewall rule, an inclusive range of IPv4 or IPv6 addresses,
// allows it. In private access mode ([ModePrivate]) the gateway listens only
// on private addresses and inbound network security rules decide: the rule
// with the lowest priority number whose source prefix and destination ports
// match allows or denies, and no match denies. Outbound network rules decide,
// in either mode, which destinations the database server may reach.
//
// A [Policy] is plain data: it decodes strictly from JSON ([DecodePolicy]),
// normalises itself in [Policy.Validate] and encodes back ([Policy.Encode]).
// An [Engine] holds the policy in force: it answers [Engine.Check] without
// locks, applies changes copy-on-write through [Engine.Update] (validated
// and persisted before they take effect), removes rules when they expire and
// tells registered live sessions when their source stops being allowed.
// [RateLimiter] is a bounded per-source token bucket for new connections.
package netpolicy
