package apitype

import "time"

// Overall health states, GET /v1/health and `status`.
const (
	// HealthOK: nothing needs attention.
	HealthOK = "ok"
	// HealthDegraded: the server serves, but a condition needs attention
	// before it stops doing so (a KMS outage in its grace period, a disk
	// nearly full, a certificate nearly expired).
	HealthDegraded = "degraded"
	// HealthUnavailable: new sessions are refused (PostgreSQL restarting,
	// the key locked or inaccessible, the audit log failing closed).
	HealthUnavailable = "unavailable"
)

// Condition severities: a warning degrades, a critical condition makes the
// server unavailable.
const (
	SeverityWarning  = "warning"
	SeverityCritical = "critical"
)

// HealthCondition is one thing that is wrong, named for scripts
// (postgres_restarting, key_grace, audit_failing, volume_nearly_full,
// host_nearly_full, certificate_expiring, ...).
type HealthCondition struct {
	Name     string `json:"name"`
	Severity string `json:"severity"`
	Message  string `json:"message"`
	// Since is when the condition began, or when the daemon first saw it.
	Since time.Time `json:"since,omitzero"`
}

// Health is the answer of GET /v1/health.
type Health struct {
	State      string            `json:"state"`
	Conditions []HealthCondition `json:"conditions"`
	CheckedAt  time.Time         `json:"checked_at"`
}
