package metrics

import (
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
)

// What pgshield.metrics_listen may not show.
//
// That listener may face the network, where the hostile administrator can
// scrape it too: a counter that moves when a decoy fires would tell them
// the table they just read (or the role they tried) was a decoy. So the
// network handler leaves out every series labelled with a decoy's alert or
// audit type, pgaudit's records (postgres.audit: a decoy read adds an
// OBJECT record to what the statement logs otherwise), and the alert
// webhook's counter (it moves with every alert, decoys' included). The
// management socket (root only) keeps them all.

// NetworkHandler serves the registry without what would reveal a decoy.
func (m *Metrics) NetworkHandler() http.Handler {
	g := prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		fams, err := m.Registry.Gather()
		out := fams[:0]
		for _, f := range fams {
			if f.GetName() == "pgshield_alert_webhook_total" {
				continue
			}
			ms := f.Metric[:0]
			for _, s := range f.Metric {
				if !revealsDecoy(s) {
					ms = append(ms, s)
				}
			}
			if f.Metric = ms; len(ms) > 0 {
				out = append(out, f)
			}
		}
		return out, err
	})
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{})
}

// revealsDecoy: a series with a label naming a decoy type
// (alert.decoy_role_login, alert.decoy_table_read, alert.decoy_tampered,
// decoy.create, decoy.delete) or pgaudit's records.
func revealsDecoy(s *dto.Metric) bool {
	for _, l := range s.GetLabel() {
		if v := l.GetValue(); strings.HasPrefix(v, "alert.decoy") || strings.HasPrefix(v, "decoy.") || v == "postgres.audit" {
			return true
		}
	}
	return false
}
