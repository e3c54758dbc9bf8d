package auditlog

import (
	"context"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/config"
)

// TestRecordDetachAttach: events recorded while the log is detached (the
// volume locked) are counted at once and written when it is attached again,
// in order.
func TestRecordDetachAttach(t *testing.T) {
	l := config.Layout{Root: t.TempDir()}
	if err := os.MkdirAll(l.AuditDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	counts := map[string]int{}
	a := New(Config{Layout: l, Count: func(typ, outcome string) { mu.Lock(); counts[typ+"/"+outcome]++; mu.Unlock() }})
	a.Record(audit.Event{Type: "before.open"}) // counted, nowhere to write yet
	if err := a.Open(config.Params{}, true); err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	a.Record(audit.Event{Type: "first", Outcome: audit.OutcomeSuccess})
	if err := a.Detach(); err != nil {
		t.Fatal(err)
	}
	a.Record(audit.Event{Type: "while.locked", Outcome: audit.OutcomeSuccess})
	a.APICall(httptest.NewRequestWithContext(context.Background(), "POST", "/v1/key/lock", nil), nil)
	if err := a.Attach(); err != nil {
		t.Fatal(err)
	}
	a.Close()
	b, err := os.ReadFile(l.AuditDir() + "/audit.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	log := string(b)
	i, j, k := strings.Index(log, `"first"`), strings.Index(log, `"while.locked"`), strings.Index(log, `"api.call"`)
	if i < 0 || j < i || k < j {
		t.Errorf("audit log = %s; want first, while.locked, api.call in that order", log)
	}
	if counts["first/success"] != 1 || counts["while.locked/success"] != 1 || counts["api.call/success"] != 1 || counts["before.open/"] != 1 {
		t.Errorf("counts = %v; want each event counted once", counts)
	}
}

// TestRefusal: sessions are refused only when the log is unhealthy and
// pgshield.audit_fail_closed is on.
func TestRefusal(t *testing.T) {
	failClosed := true
	a := New(Config{Layout: config.Layout{Root: t.TempDir()}, FailClosed: func() bool { return failClosed }})
	if err := a.Refusal(); err != nil {
		t.Errorf("Refusal() before Open = %v; want nil", err)
	}
	// The audit directory is a file: the stream cannot attach.
	l := a.cfg.Layout
	if err := os.MkdirAll(l.AuditDir()[:strings.LastIndex(l.AuditDir(), "/")], 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(l.AuditDir(), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := a.Open(config.Params{}, true); err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := a.Refusal(); err == nil || !strings.Contains(err.Error(), "audit_fail_closed") {
		t.Errorf("Refusal() with a broken log and fail-closed on = %v; want a refusal", err)
	}
	failClosed = false
	if err := a.Refusal(); err != nil {
		t.Errorf("Refusal() with fail-closed off = %v; want nil", err)
	}
}
