// Package cluster is the home of pgshield's high availability (issue #18).
//
// What exists (a single node is unchanged; `pgshield init --ha` makes a
// cluster node, whose daemon runs internal/cluster/node):
//   - internal/cluster/etcd: a 3-member etcd configuration with TLS on the
//     client and peer ports and certificates required on both, a client
//     CA and a peer CA of the cluster's own (peers pinned by CN and by
//     address, so the client certificate Patroni holds cannot join as a
//     member); a supervisor that runs a member as a child process; real
//     tests in network namespaces.
//   - internal/cluster/fence: the gateway's leadership fence (linearizable
//     reads of the leader key and its lease; a callback when read-write
//     sessions must end), the gateway's Leadership on a cluster node.
//   - internal/cluster/promote: Patroni's pre_promote hook (`pgshield
//     cluster pre-promote`, written into Patroni's YAML when the patroni
//     package is given PrePromote) and the daemon-side check it asks for:
//     volume unlocked, key Available, the data key unwraps; the daemon
//     serves it on a cluster node.
//   - internal/cluster/patroni: Patroni's YAML generated from pgshield's
//     settings, the pgpass file holding the two roles' passwords, Patroni's
//     environment, and the bin_dir whose postgres starts the postmaster in
//     an empty network namespace (netns.go says how and why).
//   - internal/cluster/link: the node-to-node channel (mutual TLS 1.3, peer
//     pinned by node name) that carries replication, pg_basebackup,
//     pg_rewind and Patroni's REST calls; its real test runs two nodes
//     under Patroni with 3 etcd members and kills the primary node.
//   - internal/cluster/node: what the daemon runs on a cluster node:
//     Patroni's files and command (the postgres supervisor runs it in
//     place of the postmaster), the link, the promotion socket and the
//     fence; cluster show, switchover and failover. Its real test
//     (link/daemon_real_test.go) runs two whole pgshield servers.
//
// NOT YET BUILT: the rest of this comment is the plan, except where it
// says what the link and the patroni package already do.
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
// PostgreSQL setting goes through PATCH /config (built: node/params.go,
// ctl/params/cluster.go); ALTER SYSTEM stays refused.
//
// Replication without a TCP port (built: link, patroni/netns.go).
// PostgreSQL listens on no TCP port on any node, and its namespace has no
// TCP listener at all. Patroni runs in the node's namespace (it needs etcd
// and serves REST over TCP only); the postmaster it starts is in a network
// namespace of its own. Each node advertises connect_address ":<link port>"
// with no host, so Patroni leaves host out of primary_conninfo,
// pg_basebackup's and pg_rewind's connection strings, and libpq takes
// PGHOST: a directory where the node's link serves one Unix socket per
// peer and relays it over mutual TLS 1.3 (node certificates from the
// cluster CA) to that peer, which admits only the replication and rewind
// roles (startup packet checked) and relays to its own socket, where
// pg_hba asks them for SCRAM. Patroni's REST API listens on the node's
// loopback at a cluster-unique port; every other node's link listens on
// its loopback at that port and relays.
//
// Fencing, in layers (the gateway's layer built: fence). Patroni demotes a primary that cannot renew its
// leader key within ttl. The gateway does not wait for that: it confirms
// the leader key with a linearizable etcd read and ends read-write
// sessions (57P01) once leadership has gone unconfirmed for
// ttl - loop_wait - margin, before any replica can be promoted. It must be
// linearizable: a partitioned etcd member still answers serializable reads
// with stale data (the etcd package's real tests show both). The fence
// also bounds the deadline by the lease's time left, which covers a
// Patroni that is frozen rather than cut off (fence's doc). Only the
// synchronous standby can be promoted, and a pre_promote hook refuses
// promotion unless the local volume is unlocked and its key unwraps.
package cluster
