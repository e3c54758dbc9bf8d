package node

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/cluster/patroni"
)

// patchTimeout bounds one PATCH /config: Patroni answers once etcd has
// taken the new document (a compare-and-swap on the config key).
const patchTimeout = 10 * time.Second

// patchAttempts: Patroni answers 409 when the config key changed between
// its read and its write (another PATCH, or the leader's own update).
const patchAttempts = 3

// patroniOwned are PostgreSQL parameters Patroni 3.0.2 sets on every node
// itself: from its own YAML or the member's state (listen_addresses,
// port, cluster_name, synchronous_standby_names in synchronous mode), as
// fixed values it drops from the dynamic configuration (hot_standby,
// wal_log_hints: CMDLINE_OPTIONS whose check always fails, in
// patroni/postgresql/config.py), or as recovery settings it writes from
// the leader's address and recovery_conf (validator.py's
// recovery_parameters, which Patroni never takes from "parameters"). A
// value stored for one of them would never be in force.
var patroniOwned = map[string]bool{
	"listen_addresses": true, "port": true, "cluster_name": true, "hot_standby": true, "wal_log_hints": true,
	"synchronous_standby_names": true,
	"archive_cleanup_command":   true, "pause_at_recovery_target": true, "primary_conninfo": true,
	"primary_slot_name": true, "promote_trigger_file": true, "recovery_end_command": true,
	"recovery_min_apply_delay": true, "recovery_target": true, "recovery_target_action": true,
	"recovery_target_inclusive": true, "recovery_target_lsn": true, "recovery_target_name": true,
	"recovery_target_time": true, "recovery_target_timeline": true, "recovery_target_xid": true,
	"restore_command": true, "standby_mode": true, "trigger_file": true,
}

// patroniFloor are the CMDLINE_OPTIONS Patroni takes only from the
// dynamic configuration, each with the check Patroni applies to it
// there (patroni/postgresql/config.py). A value that fails it is
// silently left out by Patroni, so it is refused here with the reason.
// The value is PostgreSQL's canonical form (base units), so int() and
// parse_int(v, 'MB') in Patroni read it as PostgreSQL does.
var patroniFloor = map[string]func(string) bool{
	"wal_level":                 func(v string) bool { return v == "replica" || v == "logical" || v == "hot_standby" },
	"max_connections":           atLeast(25),
	"max_wal_senders":           atLeast(3),
	"wal_keep_size":             atLeast(16), // MB
	"max_prepared_transactions": atLeast(0),
	"max_locks_per_transaction": atLeast(32),
	"track_commit_timestamp":    func(v string) bool { return v == "on" || v == "off" },
	"max_replication_slots":     atLeast(4),
	"max_worker_processes":      atLeast(2),
}

func atLeast(min int64) func(string) bool {
	return func(v string) bool {
		n, err := strconv.ParseInt(v, 10, 64)
		return err == nil && n >= min
	}
}

// SetParameter stores PostgreSQL parameter name with value (PostgreSQL's
// canonical form, checked by the caller) in the cluster's dynamic
// configuration through this node's Patroni (PATCH /config), from where
// every node's Patroni writes it into its postgresql.conf and reloads.
// It returns once etcd holds it; applying it is each Patroni's next
// cycle.
//
// Any member may take it, not only the leader: Patroni writes the key in
// etcd wherever it is asked, and an operator who changes a parameter on
// a standby means the cluster's. Parameters Patroni sets itself and
// those pgshield pins in the local YAML (which win over etcd on every
// node) are refused: stored, they would never be in force.
func (n *Node) SetParameter(ctx context.Context, name, value string) error {
	name = strings.ToLower(name)
	if patroniOwned[name] {
		return clienterr.New(apitype.CodeInvalid, "parameter %q is set by Patroni on each node of a cluster and cannot be changed", name)
	}
	if ok, known := patroniFloor[name]; known && !ok(value) {
		return clienterr.New(apitype.CodeInvalid, "parameter %q: Patroni does not accept %q on a cluster (it would leave it out)", name, value)
	}
	s := n.settings
	n.mu.Lock()
	s.Managed = n.managed
	n.mu.Unlock()
	local, err := patroni.LocalParameters(s)
	if err != nil {
		return err
	}
	if _, pinned := local[name]; pinned {
		return clienterr.New(apitype.CodeInvalid, "parameter %q is set by pgshield on each node of a cluster and cannot be changed", name)
	}
	body, err := json.Marshal(map[string]any{"postgresql": map[string]any{"parameters": map[string]string{name: value}}})
	if err != nil {
		return err
	}
	for attempt := 1; ; attempt++ {
		status, msg, err := n.patroniChange(ctx, "PATCH", "/config", body, patchTimeout)
		if err != nil {
			return err
		}
		switch {
		case status == http.StatusOK:
			// The value is not logged: the caller audits it redacted.
			n.c.Log.Info("Stored a PostgreSQL parameter in the cluster's configuration.", "name", name)
			return nil
		case status == http.StatusConflict && attempt < patchAttempts:
			continue
		case status == http.StatusConflict:
			return clienterr.New(apitype.CodeUnavailable, "the cluster's configuration kept changing during the update (%d tries): try again", patchAttempts)
		case status == http.StatusUnauthorized || status == http.StatusForbidden:
			return errPatroniCredentials(status)
		case status == http.StatusServiceUnavailable:
			return clienterr.New(apitype.CodeUnavailable, "Patroni cannot read the cluster's configuration from etcd (503): is etcd reachable and the cluster bootstrapped?")
		case status >= 500:
			return clienterr.New(apitype.CodeUnavailable, "Patroni could not store the change: %d %s", status, http.StatusText(status))
		default:
			return clienterr.New(apitype.CodeInvalid, "Patroni refused the change: %d %s: %.200s", status, http.StatusText(status), msg)
		}
	}
}
