package apitype

import "time"

// Status is the answer of GET /v1/status.
type Status struct {
	// State is Available, Unavailable (PostgreSQL is not running), or the
	// data key's state when that is not Available (Locked, Inaccessible).
	// The CLI reports a daemon that does not answer as Stopped.
	State         string          `json:"state"`
	Listen        string          `json:"listen"`
	StartedAt     time.Time       `json:"started_at"`
	UptimeSeconds int64           `json:"uptime_seconds"`
	PID           int             `json:"pid"`
	Postgres      PostgresStatus  `json:"postgres"`
	TLS           TLSStatus       `json:"tls"`
	Connections   ConnectionStats `json:"connections"`
	AdminUser     string          `json:"admin_user"`
	DataDir       string          `json:"data_dir"`
	Key           KeyInfo         `json:"key"`
	// FIPS140 is true when Go's cryptography runs in its FIPS 140-3 module
	// (GODEBUG=fips140=on, or a binary built with GOFIPS140).
	FIPS140 bool `json:"fips140"`
	// Health is the overall health and its conditions (GET /v1/health).
	Health *Health `json:"health,omitempty"`
	// PendingRestart names the PostgreSQL parameters changed but not in
	// effect until `pgshield restart`.
	PendingRestart []string `json:"pending_restart,omitempty"`
}

// PostgresStatus describes the managed instance and its supervisor.
type PostgresStatus struct {
	Version string `json:"version"`
	// State is the supervisor's: Starting, Running, Restarting, Stopping
	// or Stopped.
	State       string    `json:"state"`
	PID         int       `json:"pid,omitempty"`
	Since       time.Time `json:"since"`
	Restarts    int       `json:"restarts"`
	LastExit    string    `json:"last_exit,omitempty"`
	LastCrashAt time.Time `json:"last_crash_at,omitzero"`
}

// TLSStatus echoes the transport parameters in force.
type TLSStatus struct {
	RequireSecureTransport string `json:"require_secure_transport"`
	MinProtocolVersion     string `json:"ssl_min_protocol_version"`
	MaxProtocolVersion     string `json:"ssl_max_protocol_version"`
}

// ConnectionStats counts the gateway's client connections.
type ConnectionStats struct {
	Active int64 `json:"active_connections"`
	Total  int64 `json:"total_connections"`
}

// ParameterValue is one parameter as the API reports it: GET
// /v1/parameters (a list), GET and PUT /v1/parameters/{name}.
type ParameterValue struct {
	Name  string `json:"name"`
	Value string `json:"value"`
	// Source is "pgshield" for the gateway's own parameters, "postgresql" otherwise.
	Source string `json:"source"`
	// Context is "dynamic" or "static" (needs a restart), as managed
	// services say; "read-only" or "managed" (pgshield's own) for
	// PostgreSQL parameters that cannot be set.
	Context        string `json:"context"`
	PendingRestart bool   `json:"pending_restart"`
	Unit           string `json:"unit,omitempty"`
	Description    string `json:"description,omitempty"`
	Default        string `json:"default,omitempty"`
}

// SetParameterRequest is the body of PUT /v1/parameters/{name}.
type SetParameterRequest struct {
	Value string `json:"value"`
}
