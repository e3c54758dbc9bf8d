package apitype

import "time"

// ClusterInfo is what cluster show prints: this node's view of its
// high-availability cluster.
type ClusterInfo struct {
	Scope string `json:"scope"`
	Node  string `json:"node"`
	// Leadership is this node's fence: whether its gateway takes
	// read-write sessions now.
	Leadership ClusterLeadership `json:"leadership"`
	// Members are Patroni's (GET /cluster on this node); PatroniError
	// says why they are missing.
	Members      []ClusterMember `json:"members"`
	PatroniError string          `json:"patroni_error,omitempty"`
	// Etcd is each member's health as this node reaches it.
	Etcd []EtcdMember `json:"etcd"`
}

// ClusterLeadership is the fence's state.
type ClusterLeadership struct {
	State         string    `json:"state"`
	MayWrite      bool      `json:"may_write"`
	Deadline      time.Time `json:"deadline,omitzero"`
	LastConfirmed time.Time `json:"last_confirmed,omitzero"`
	LastError     string    `json:"last_error,omitempty"`
}

// ClusterMember is one node as Patroni reports it.
type ClusterMember struct {
	Name string `json:"name"`
	// Role is leader, sync_standby or replica.
	Role     string `json:"role"`
	State    string `json:"state"`
	Timeline int64  `json:"timeline,omitempty"`
	// LagBytes is the replication lag behind the leader, when known.
	LagBytes *int64 `json:"lag_bytes,omitempty"`
}

// EtcdMember is one etcd member's health.
type EtcdMember struct {
	Endpoint string `json:"endpoint"`
	Healthy  bool   `json:"healthy"`
	Error    string `json:"error,omitempty"`
}

// ClusterSwitchoverRequest asks for a switchover (To empty: to the
// synchronous standby) or a failover (To required).
type ClusterSwitchoverRequest struct {
	To string `json:"to,omitempty"`
}

// ClusterJoinRequest opens this node's join window for Node: for Seconds
// (0: 15 minutes), the node may ask this one for the cluster's secrets
// over the link, once.
type ClusterJoinRequest struct {
	Node    string `json:"node"`
	Seconds int    `json:"seconds,omitempty"`
}

// ClusterJoinWindow is an open join window.
type ClusterJoinWindow struct {
	Node  string    `json:"node"`
	Until time.Time `json:"until"`
}

// ClusterManualResult is Patroni's answer to a switchover or failover.
type ClusterManualResult struct {
	Action  string `json:"action"`
	From    string `json:"from,omitempty"`
	To      string `json:"to"`
	Message string `json:"message"`
}

// AuditAnchor is a node's audit chain head as anchored in etcd.
type AuditAnchor struct {
	Node string    `json:"node"`
	Self bool      `json:"self"`
	Seq  uint64    `json:"seq"`
	Hash string    `json:"hash"`
	At   time.Time `json:"at"`
	// Authentic: its MAC under the cluster's config key matches.
	Authentic bool `json:"authentic"`
}
