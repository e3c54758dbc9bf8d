package apitype

// RestartResult is the answer of POST /v1/restart (pgshield restart).
type RestartResult struct {
	Result string `json:"result"` // "restarted"
	// PostgresPID is the new postmaster's.
	PostgresPID int `json:"postgres_pid"`
	// SessionsTerminated were still open at the end of
	// pgshield.shutdown_grace and were ended with 57P01.
	SessionsTerminated int     `json:"sessions_terminated"`
	Seconds            float64 `json:"seconds"`
}
