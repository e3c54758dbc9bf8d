package auditlog

import (
	"errors"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
)

// Health reports the audit log failing to write: critical when
// pgshield.audit_fail_closed is on (new sessions are refused), a warning
// otherwise (events wait in memory). The failure's start is in the
// message; the aggregate's Since is when the daemon first saw it.
func (l *Log) Health() []apitype.HealthCondition {
	s := l.stream.Load()
	if s == nil {
		return nil
	}
	err := s.Healthy()
	if err == nil || errors.Is(err, audit.ErrClosed) {
		return nil
	}
	if l.cfg.FailClosed != nil && l.cfg.FailClosed() {
		return []apitype.HealthCondition{{Name: "audit_fail_closed", Severity: apitype.SeverityCritical,
			Message: "the audit log cannot be written (" + err.Error() + "); new sessions are refused (pgshield.audit_fail_closed = on)"}}
	}
	return []apitype.HealthCondition{{Name: "audit_failing", Severity: apitype.SeverityWarning,
		Message: "the audit log cannot be written (" + err.Error() + "); events wait in memory (at most 10,000) and writing is retried every second"}}
}
