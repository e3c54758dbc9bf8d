package metrics

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// The attack: the administrator reads a table, scrapes the network
// listener and sees pgshield_alerts_total{type="alert.decoy_table_read"}
// (or the audit event counter, or the webhook's) move. The network handler
// shows none of them; the management socket's handler still does.
func TestNetworkHandlerHidesDecoys(t *testing.T) {
	m := New(nil)
	alerts := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgshield_alerts_total", Help: "h"}, []string{"type", "severity"})
	hook := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgshield_alert_webhook_total", Help: "h"}, []string{"result"})
	m.Registry.MustRegister(alerts, hook)
	alerts.WithLabelValues("alert.decoy_table_read", "High").Inc()
	alerts.WithLabelValues("alert.decoy_role_login", "High").Inc()
	alerts.WithLabelValues("alert.bruteforce_valid_user", "High").Inc()
	hook.WithLabelValues("delivered").Inc()
	m.Event("alert.decoy_table_read", "")
	m.Event("decoy.create", "success")
	m.Event("postgres.audit", "")
	m.Event("auth.failure", "failure")

	scrape := func(h http.Handler) string {
		srv := httptest.NewServer(h)
		defer srv.Close()
		resp, err := srv.Client().Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("scrape: %d %v", resp.StatusCode, err)
		}
		return string(b)
	}
	net := scrape(m.NetworkHandler())
	for _, s := range []string{"decoy", "pgshield_alert_webhook_total", "postgres.audit"} {
		if strings.Contains(net, s) {
			t.Errorf("the network listener shows %q:\n%s", s, net)
		}
	}
	for _, s := range []string{`pgshield_alerts_total{severity="High",type="alert.bruteforce_valid_user"} 1`,
		`pgshield_audit_events_total{outcome="failure",type="auth.failure"} 1`, "go_goroutines"} {
		if !strings.Contains(net, s) {
			t.Errorf("the network listener lacks %q", s)
		}
	}
	local := scrape(m.Handler())
	for _, s := range []string{`type="alert.decoy_table_read"`, `type="decoy.create"`, `type="postgres.audit"`, "pgshield_alert_webhook_total"} {
		if !strings.Contains(local, s) {
			t.Errorf("the management socket's metrics lack %q", s)
		}
	}
}
