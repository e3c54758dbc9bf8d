package apitype

// PoolInfo is what pool show prints: the pooling parameters in force and,
// per role and database, the gateway's clients and backends.
type PoolInfo struct {
	// Mode is pgshield.pool_mode: session, transaction or off.
	Mode string `json:"mode"`
	// ModeOverrides is pgshield.pool_mode_overrides (canonical), the
	// per-database and per-role modes over Mode.
	ModeOverrides string `json:"mode_overrides"`
	Size          int    `json:"pool_size"`
	// MaxTotal is the cap on backends in force; MaxTotalAuto says it
	// follows PostgreSQL's max_connections (pgshield.pool_max_total = auto).
	MaxTotal     int         `json:"pool_max_total"`
	MaxTotalAuto bool        `json:"pool_max_total_auto"`
	Pools        []PoolEntry `json:"pools"`
}

// PoolEntry is one role and database (startup parameter variants summed).
type PoolEntry struct {
	Role     string `json:"role"`
	Database string `json:"database"`
	// Mode is the pool mode in force for this role and database.
	Mode string `json:"mode"`
	// Clients are client sessions served from this pool now.
	Clients int `json:"clients"`
	// Active backends serve a client; Idle ones wait, reset, for the next.
	Active int `json:"active_backends"`
	Idle   int `json:"idle_backends"`
	// Waiting clients wait for a backend now; Waits counts every wait.
	Waiting int    `json:"waiting_clients"`
	Waits   uint64 `json:"waits"`
}
