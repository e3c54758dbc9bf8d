package daemon

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/pgshield/pgshield/internal/apitype"
)

// TestHealthz: probes get 503 only when the server is unavailable, and the
// body (the metrics listener may face the network) names conditions
// without their messages.
func TestHealthz(t *testing.T) {
	secretish := "KMS https://kms.internal/keys/abc unreachable: dial tcp 10.0.0.5:443"
	for _, tc := range []struct {
		h    apitype.Health
		code int
		body string
	}{
		{apitype.Health{State: apitype.HealthOK, Conditions: []apitype.HealthCondition{}}, http.StatusOK, `{"state":"ok","conditions":[]}`},
		{apitype.Health{State: apitype.HealthDegraded, Conditions: []apitype.HealthCondition{{Name: "key_grace", Severity: apitype.SeverityWarning, Message: secretish}}},
			http.StatusOK, `{"state":"degraded","conditions":[{"name":"key_grace","severity":"warning"}]}`},
		{apitype.Health{State: apitype.HealthUnavailable, Conditions: []apitype.HealthCondition{{Name: "postgres_restarting", Severity: apitype.SeverityCritical, Message: secretish}}},
			http.StatusServiceUnavailable, `{"state":"unavailable","conditions":[{"name":"postgres_restarting","severity":"critical"}]}`},
	} {
		rec := httptest.NewRecorder()
		writeHealthz(rec, tc.h)
		if rec.Code != tc.code || strings.TrimSpace(rec.Body.String()) != tc.body {
			t.Errorf("healthz(%s) = %d %s; want %d %s", tc.h.State, rec.Code, rec.Body, tc.code, tc.body)
		}
		if strings.Contains(rec.Body.String(), "kms.internal") {
			t.Errorf("healthz leaks a condition's message: %s", rec.Body)
		}
	}
}
