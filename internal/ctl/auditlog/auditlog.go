// Package auditlog is the controller of the audit stream: gateway and
// daemon events and PostgreSQL's log, in one hash-chained log on the
// encrypted volume (audit.Stream), its forwarding to syslog, and the
// auditing of management API calls. The stream is attached while the
// volume is unlocked and detached before the key is removed; meanwhile
// events wait in memory.
package auditlog

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/mgmt"
)

// maxFileSize is the size at which audit.jsonl is rotated.
const maxFileSize = 100 << 20

// Config is what the audit log needs.
type Config struct {
	Layout config.Layout
	// Log is the daemon's logger; the stream logs as component "audit".
	Log *slog.Logger
	// Count, if set, counts every event recorded (the metrics).
	Count func(typ, outcome string)
	// FailClosed reports pgshield.audit_fail_closed as in force now.
	FailClosed func() bool
}

// Log is the audit log of one server. Its methods are safe for concurrent
// use; it takes no lock of another controller.
type Log struct {
	cfg      Config
	stream   atomic.Pointer[audit.Stream] // nil until Open
	fwd      atomic.Pointer[audit.Forwarder]
	lastWarn atomic.Int64
}

// New makes the audit log; Open starts the stream.
func New(c Config) *Log {
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return &Log{cfg: c}
}

// Open makes the stream with the parameters in force and attaches it if
// the volume is readable.
func (l *Log) Open(params config.Params, volumeOpen bool) error {
	s, err := audit.NewStream(audit.StreamConfig{
		Dir: l.cfg.Layout.AuditDir(), SpillDir: l.cfg.Layout.LegacyAuditDir(),
		Options: []audit.Option{audit.WithMaxSize(maxFileSize)},
		Logger:  l.cfg.Log.With("component", "audit"),
	})
	if err != nil {
		return fmt.Errorf("opening the audit log: %w", err)
	}
	l.stream.Store(s)
	if err := s.SetRetention(params.AuditRetention); err != nil {
		l.cfg.Log.Error("Applying the audit retention failed.", "error", err)
	}
	l.setSyslog(params.AuditSyslog)
	if volumeOpen {
		if err := s.Attach(); err != nil {
			// Not fatal: events wait in memory, the stream retries, and
			// pgshield.audit_fail_closed decides whether sessions may start.
			l.cfg.Log.Error("The audit log cannot be opened; retrying.", "error", err)
		}
	}
	return nil
}

// Close closes the stream and the forwarder.
func (l *Log) Close() {
	s := l.stream.Load()
	if s == nil {
		return
	}
	if err := s.Close(); err != nil {
		l.cfg.Log.Error("Closing the audit log failed.", "error", err)
	}
	if f := l.fwd.Swap(nil); f != nil {
		f.Close()
	}
}

// Record records a security event. While the log cannot be written the
// stream keeps events in memory; an error means one was dropped (logged,
// rate-limited) and a gap record will say so.
func (l *Log) Record(e audit.Event) {
	if l.cfg.Count != nil {
		l.cfg.Count(e.Type, e.Outcome)
	}
	s := l.stream.Load()
	if s == nil {
		return
	}
	if err := s.Write(e); err != nil && l.dropWarn() {
		l.cfg.Log.Error("Writing the audit log failed.", "error", err, "event", e.Type)
	}
}

// Head is the chain's head (seq and hash of the last record written), zero
// while the log is not open: what a cluster node anchors in etcd.
func (l *Log) Head() (uint64, string) {
	s := l.stream.Load()
	if s == nil {
		return 0, ""
	}
	return s.Head()
}

// Attach reopens the log on the volume after an unlock or a remount; what
// happened meanwhile is written now, in order.
func (l *Log) Attach() error {
	if s := l.stream.Load(); s != nil {
		return s.Attach()
	}
	return nil
}

// Detach closes the file on the volume before it is locked or unmounted;
// later events wait in memory.
func (l *Log) Detach() error {
	if s := l.stream.Load(); s != nil {
		return s.Detach()
	}
	return nil
}

// setSyslog starts, changes or stops forwarding to syslog. The value was
// validated by the parameter's check.
func (l *Log) setSyslog(url string) {
	var f *audit.Forwarder
	if url != "" {
		var err error
		if f, err = audit.NewForwarder(url, l.cfg.Log.With("component", "audit-syslog")); err != nil {
			l.cfg.Log.Error("Audit forwarding to syslog not started.", "error", err)
			f = nil
		}
	}
	if s := l.stream.Load(); s != nil {
		s.SetForwarder(f)
	}
	if old := l.fwd.Swap(f); old != nil {
		old.Close()
	}
}

// ApplyParam applies a changed pgshield.audit_* parameter.
func (l *Log) ApplyParam(name string, p config.Params) {
	switch name {
	case "pgshield.audit_retention_days":
		if s := l.stream.Load(); s != nil {
			if err := s.SetRetention(p.AuditRetention); err != nil {
				l.cfg.Log.Error("Applying the audit retention failed.", "error", err)
			}
		}
	case "pgshield.audit_syslog":
		l.setSyslog(p.AuditSyslog)
	}
}

// Refusal is the fail-closed check: nil unless pgshield.audit_fail_closed
// is on and the audit log cannot be written.
func (l *Log) Refusal() error {
	// Health first: it is cheap, and resolving the parameters is not.
	s := l.stream.Load()
	if s == nil || s.Healthy() == nil || l.cfg.FailClosed == nil || !l.cfg.FailClosed() {
		return nil
	}
	return errors.New("server is refusing new sessions: the audit log cannot be written (pgshield.audit_fail_closed = on)")
}

// ServerLog hands PostgreSQL's log to the stream.
func (l *Log) ServerLog(es []audit.Event) {
	s := l.stream.Load()
	if s == nil {
		return
	}
	if err := s.WriteBatch(es); err != nil && l.dropWarn() {
		l.cfg.Log.Error("PostgreSQL's log could not be recorded.", "error", err)
	}
}

// dropWarn rate-limits the complaint about dropped events.
func (l *Log) dropWarn() bool {
	now := time.Now().UnixNano()
	last := l.lastWarn.Load()
	return now-last >= int64(10*time.Second) && l.lastWarn.CompareAndSwap(last, now)
}

// APICall records a management API call that changes something
// (mgmt.Options.OnWrite): who made it (the peer's uid and pid from
// SO_PEERCRED), what (method and path) and the outcome. Reads are not
// audited: the CLI polls status.
func (l *Log) APICall(r *http.Request, err error) {
	e := audit.Event{Type: "api.call", Outcome: audit.OutcomeSuccess,
		Fields: map[string]any{"method": r.Method, "path": r.URL.Path}}
	if p, ok := mgmt.PeerFrom(r.Context()); ok {
		e.Fields["peer_uid"], e.Fields["peer_pid"] = p.UID, p.PID
		e.Client = fmt.Sprintf("uid=%d pid=%d", p.UID, p.PID)
	}
	if err != nil {
		e.Outcome, e.Reason = audit.OutcomeFailure, audit.Redact(err.Error())
	}
	l.Record(e)
}
