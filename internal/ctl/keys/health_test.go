package keys

import (
	"strings"
	"testing"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
)

func TestKeyHealth(t *testing.T) {
	since := time.Date(2026, 12, 6, 20, 0, 0, 0, time.UTC)
	if h := keyHealth(apitype.KeyState{State: apitype.KeyAvailable}, time.Time{}, 0, ""); len(h) != 0 {
		t.Errorf("Available = %+v; want nothing", h)
	}
	h := keyHealth(apitype.KeyState{State: apitype.KeyAvailable}, since, time.Hour, "dial tcp: connection refused")
	if len(h) != 1 || h[0].Name != "key_grace" || h[0].Severity != apitype.SeverityWarning || !h[0].Since.Equal(since) ||
		!strings.Contains(h[0].Message, "ends at 2026-12-06T21:00:00Z") || !strings.Contains(h[0].Message, "connection refused") {
		t.Errorf("grace running = %+v; want key_grace ending at since+grace", h)
	}
	h = keyHealth(apitype.KeyState{State: apitype.KeyLocked, Since: since}, time.Time{}, 0, "")
	if len(h) != 1 || h[0].Name != "key_locked" || h[0].Severity != apitype.SeverityCritical || !h[0].Since.Equal(since) {
		t.Errorf("Locked = %+v", h)
	}
	h = keyHealth(apitype.KeyState{State: apitype.KeyInaccessible, Since: since, Reason: "key disabled"}, time.Time{}, 0, "")
	if len(h) != 1 || h[0].Name != "key_inaccessible" || !strings.Contains(h[0].Message, "key disabled") {
		t.Errorf("Inaccessible = %+v", h)
	}
}
