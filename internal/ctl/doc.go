// Package ctl holds the daemon's controllers, one package each. A
// controller owns one part of a running server's state and the lock that
// guards it, exposes methods (never fields), and reaches the others only
// through the small interfaces or funcs its Config names. internal/daemon
// builds them, wires them together and starts and stops them in one listed
// order.
//
// The cut follows the locks of the old daemon: conf (the configuration,
// one lock serializing every change), keys (the data key's state, one lock
// serializing every transition of the volume: lock, unlock, rewrap, grow,
// remount), volume (the volume and its growth), instance (PostgreSQL's
// supervisor, replaced on unlock), backup (one job at a time), network,
// params, principals and auditlog.
package ctl
