// Package cluster is the home of pgshield's high availability (issue #18).
//
// What exists (no command or daemon code uses it yet; single-node pgshield
// is unchanged):
//   - internal/cluster/etcd: a 3-member etcd configuration with TLS on the
//     client and peer ports and certificates required on both, from a CA
//     of the cluster's own; a supervisor that runs a member as a child
//     process; a real test in network namespaces.
//   - internal/cluster/patroni: Patroni's YAML generated from pgshield's
//     settings, and the pgpass file holding the two roles' passwords.
//
// NOT YET BUILT: the rest of this comment is the plan.
//
// Division of work. On every node pgshield stays the door: it creates
// PostgreSQL's network namespace (loopback only), unlocks the volume, and
// runs and supervises Patroni as postgres in place of the postmaster;
// Patroni starts, stops, promotes, demotes and rewinds PostgreSQL; etcd
// (three members, Debian's 3.4) decides who leads. pgshield writes
// Patroni's configuration: an empty listen_addresses, the private socket,
// pgshield's protected settings as local postgresql.parameters (which
// Patroni's PATCH /config, stored in etcd, cannot override), SCRAM-only
// socket lines for the replication and rewind roles, synchronous_mode with
// synchronous_mode_strict, failsafe_mode off. `parameter set` of a
// PostgreSQL setting will go through PATCH /config; ALTER SYSTEM stays
// refused.
//
// Replication without a TCP port. PostgreSQL listens on no TCP port on any
// node. Streaming replication, pg_basebackup, pg_rewind and Patroni's REST
// calls between nodes go from a relay in one node's PostgreSQL namespace
// to the other node's pgshield over mutual TLS 1.3 with node certificates
// from the cluster CA; the receiving pgshield admits only the replication
// and rewind roles on that channel (startup packet checked) and relays to
// its own socket, where pg_hba asks them for SCRAM.
//
// Fencing, in layers. Patroni demotes a primary that cannot renew its
// leader key within ttl. The gateway does not wait for that: it confirms
// the leader key with a linearizable etcd read and ends read-write
// sessions (57P01) once leadership has gone unconfirmed for
// ttl - loop_wait - margin, before any replica can be promoted. It must be
// linearizable: a partitioned etcd member still answers serializable reads
// with stale data (the etcd package's real test shows both). Only the
// synchronous standby can be promoted, and a pre_promote hook refuses
// promotion unless the local volume is unlocked and its key unwraps.
package cluster
