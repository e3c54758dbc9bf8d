package daemon

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/mgmt"
)

// The audit stream: gateway and daemon events and PostgreSQL's log, in one
// hash-chained log on the encrypted volume (audit.Stream). It is attached
// while the volume is unlocked and detached before the key is removed;
// meanwhile events wait in memory.

// openAudit makes the stream and attaches it if the volume is readable.
func (d *Daemon) openAudit(params config.Params, volumeOpen bool) error {
	s, err := audit.NewStream(audit.StreamConfig{
		Dir: d.Layout.AuditDir(), SpillDir: d.Layout.LegacyAuditDir(),
		Options: []audit.Option{audit.WithMaxSize(auditMaxFileSize)},
		Logger:  d.Log.With("component", "audit"),
	})
	if err != nil {
		return fmt.Errorf("opening the audit log: %w", err)
	}
	d.auditStream = s
	if err := s.SetRetention(params.AuditRetention); err != nil {
		d.Log.Error("Applying the audit retention failed.", "error", err)
	}
	d.setAuditSyslog(params.AuditSyslog)
	if volumeOpen {
		if err := s.Attach(); err != nil {
			// Not fatal: events wait in memory, the stream retries, and
			// pgshield.audit_fail_closed decides whether sessions may start.
			d.Log.Error("The audit log cannot be opened; retrying.", "error", err)
		}
	}
	return nil
}

// auditMaxFileSize is the size at which audit.jsonl is rotated.
const auditMaxFileSize = 100 << 20

func (d *Daemon) closeAudit() {
	if d.auditStream == nil {
		return
	}
	if err := d.auditStream.Close(); err != nil {
		d.Log.Error("Closing the audit log failed.", "error", err)
	}
	if f := d.auditFwd.Swap(nil); f != nil {
		f.Close()
	}
}

// setAuditSyslog starts, changes or stops forwarding to syslog. The value
// was validated by the parameter's check.
func (d *Daemon) setAuditSyslog(url string) {
	var f *audit.Forwarder
	if url != "" {
		var err error
		if f, err = audit.NewForwarder(url, d.Log.With("component", "audit-syslog")); err != nil {
			d.Log.Error("Audit forwarding to syslog not started.", "error", err)
			f = nil
		}
	}
	d.auditStream.SetForwarder(f)
	if old := d.auditFwd.Swap(f); old != nil {
		old.Close()
	}
}

// applyAuditParams applies a changed pgshield.audit_* parameter.
func (d *Daemon) applyAuditParams(name string, p config.Params) {
	switch name {
	case "pgshield.audit_retention_days":
		if err := d.auditStream.SetRetention(p.AuditRetention); err != nil {
			d.Log.Error("Applying the audit retention failed.", "error", err)
		}
	case "pgshield.audit_syslog":
		d.setAuditSyslog(p.AuditSyslog)
	}
}

// auditRefusal is the fail-closed check: nil unless
// pgshield.audit_fail_closed is on and the audit log cannot be written.
func (d *Daemon) auditRefusal() error {
	// Health first: it is cheap, and resolving the parameters is not.
	if d.auditStream == nil || d.auditStream.Healthy() == nil || !d.currentParams().AuditFailClosed {
		return nil
	}
	return errors.New("server is refusing new sessions: the audit log cannot be written (pgshield.audit_fail_closed = on)")
}

// serverLogSink hands PostgreSQL's log to the stream.
func (d *Daemon) serverLogSink(es []audit.Event) {
	if err := d.auditStream.WriteBatch(es); err != nil && d.auditDropWarn() {
		d.Log.Error("PostgreSQL's log could not be recorded.", "error", err)
	}
}

// auditDropWarn rate-limits the daemon's complaint about dropped events.
func (d *Daemon) auditDropWarn() bool {
	now := time.Now().UnixNano()
	last := d.lastAuditWarn.Load()
	return now-last >= int64(10*time.Second) && d.lastAuditWarn.CompareAndSwap(last, now)
}

// auditAPICall records a management API call that changes something
// (mgmt.Options.OnWrite): who made it (the peer's uid and pid from
// SO_PEERCRED), what (method and path) and the outcome. Reads are not
// audited: the CLI polls status.
func (d *Daemon) auditAPICall(r *http.Request, err error) {
	e := audit.Event{Type: "api.call", Outcome: audit.OutcomeSuccess,
		Fields: map[string]any{"method": r.Method, "path": r.URL.Path}}
	if p, ok := mgmt.PeerFrom(r.Context()); ok {
		e.Fields["peer_uid"], e.Fields["peer_pid"] = p.UID, p.PID
		e.Client = fmt.Sprintf("uid=%d pid=%d", p.UID, p.PID)
	}
	if err != nil {
		e.Outcome, e.Reason = audit.OutcomeFailure, audit.Redact(err.Error())
	}
	d.audit(e)
}
