package auditlog

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/config"
)

// TestHealth: a log that cannot be written is audit_fail_closed (critical)
// with pgshield.audit_fail_closed on and audit_failing (a warning) with it
// off; a healthy log reports nothing.
func TestHealth(t *testing.T) {
	failClosed := true
	healthy := New(Config{Layout: config.Layout{Root: t.TempDir()}, FailClosed: func() bool { return true }})
	if err := healthy.Open(config.Params{}, true); err != nil {
		t.Fatal(err)
	}
	defer healthy.Close()
	if h := healthy.Health(); len(h) != 0 {
		t.Errorf("Health() of a working log = %+v; want nothing", h)
	}

	a := New(Config{Layout: config.Layout{Root: t.TempDir()}, FailClosed: func() bool { return failClosed }})
	if h := a.Health(); len(h) != 0 {
		t.Errorf("Health() before Open = %+v; want nothing", h)
	}
	// The audit directory is a file: the stream cannot attach.
	l := a.cfg.Layout
	if err := os.MkdirAll(filepath.Dir(l.AuditDir()), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(l.AuditDir(), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := a.Open(config.Params{}, true); err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	h := a.Health()
	if len(h) != 1 || h[0].Name != "audit_fail_closed" || h[0].Severity != apitype.SeverityCritical || !strings.Contains(h[0].Message, "new sessions are refused") {
		t.Errorf("Health() failing, fail-closed on = %+v; want audit_fail_closed", h)
	}
	failClosed = false
	h = a.Health()
	if len(h) != 1 || h[0].Name != "audit_failing" || h[0].Severity != apitype.SeverityWarning {
		t.Errorf("Health() failing, fail-closed off = %+v; want audit_failing", h)
	}
}
