// Package metrics holds pgshield's Prometheus metrics: the data key's state
// and its transitions, revalidation results, and a counter of every audit
// event by type and outcome (connections denied, logins failed, sessions
// ended by policy, ...), so what the audit log records can be alerted on.
package metrics

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// KeyStates are the data key's states, as status and key show name them.
var KeyStates = []string{"Available", "Inaccessible", "Locked"}

// Metrics is one daemon's set.
type Metrics struct {
	Registry *prometheus.Registry

	keyState       *prometheus.GaugeVec
	keyTransitions *prometheus.CounterVec
	keySince       prometheus.Gauge
	revalidations  *prometheus.CounterVec
	events         *prometheus.CounterVec
	poolWait       prometheus.Histogram
}

// New registers pgshield's metrics and the Go runtime's in a new registry.
// gauges are read at scrape time (e.g. the gateway's open connections).
func New(gauges map[string]func() float64) *Metrics {
	m := &Metrics{Registry: prometheus.NewRegistry()}
	m.keyState = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pgshield_key_state",
		Help: "1 for the data key's current state (Available, Inaccessible, Locked), 0 for the others."}, []string{"state"})
	m.keyTransitions = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgshield_key_state_transitions_total",
		Help: "Changes of the data key's state."}, []string{"from", "to"})
	m.keySince = prometheus.NewGauge(prometheus.GaugeOpts{Name: "pgshield_key_state_since_timestamp_seconds",
		Help: "When the data key entered its current state (Unix time)."})
	m.revalidations = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgshield_key_revalidations_total",
		Help: "Proofs that the key-encryption key still unwraps the data key, by result (ok, denied, unreachable, corrupt)."}, []string{"result"})
	m.events = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pgshield_audit_events_total",
		Help: "Audit events by type and outcome."}, []string{"type", "outcome"})
	m.poolWait = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "pgshield_pool_wait_seconds",
		Help:    "How long clients that found the backend pool full waited for a backend (a timeout counts too).",
		Buckets: []float64{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60}})
	m.Registry.MustRegister(m.keyState, m.keyTransitions, m.keySince, m.revalidations, m.events, m.poolWait,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for name, f := range gauges {
		m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: gaugeHelp[name]}, f))
	}
	for _, s := range KeyStates {
		m.keyState.WithLabelValues(s)
	}
	return m
}

// gaugeHelp describes the scrape-time gauges the daemon provides.
var gaugeHelp = map[string]string{
	"pgshield_gateway_connections_active":   "Client connections open at the gateway.",
	"pgshield_gateway_connections_total":    "Client connections accepted by the gateway since start (a counter).",
	"pgshield_postgres_restarts_total":      "Times the supervisor restarted a postmaster that died (a counter).",
	"pgshield_postgres_up":                  "1 while PostgreSQL runs and accepts connections.",
	"pgshield_key_grace_remaining_seconds":  "While the KMS cannot be reached: seconds of grace left before Inaccessible; 0 otherwise.",
	"pgshield_pool_backends_active":         "Pooled backends serving a client now.",
	"pgshield_pool_backends_idle":           "Pooled backends reset and waiting for the next client of their role and database.",
	"pgshield_pool_clients":                 "Client sessions served through the backend pool.",
	"pgshield_pool_clients_waiting":         "Clients waiting for a backend from a full pool.",
	"pgshield_pool_handovers_light_total":   "Transaction-mode hand-overs of a backend to another client without DISCARD ALL (pgshield_guard found nothing to clear; a counter).",
	"pgshield_pool_handovers_full_total":    "Transaction-mode hand-overs of a backend to another client with DISCARD ALL (a counter).",
	"pgshield_pool_handovers_refused_total": "Transaction-mode hand-overs pgshield_guard refused (the role may no longer connect, its settings changed, or the session held state): the backend closed, the transaction sent to another (a counter).",
}

// KeyState records the data key's state; from is "" at start.
func (m *Metrics) KeyState(from, to string, since time.Time) {
	if m == nil {
		return
	}
	for _, s := range KeyStates {
		v := 0.0
		if s == to {
			v = 1
		}
		m.keyState.WithLabelValues(s).Set(v)
	}
	m.keySince.Set(float64(since.Unix()))
	if from != "" && from != to {
		m.keyTransitions.WithLabelValues(from, to).Inc()
	}
}

// Revalidation counts one revalidation by result.
func (m *Metrics) Revalidation(result string) {
	if m != nil {
		m.revalidations.WithLabelValues(result).Inc()
	}
}

// PoolWait observes one client's wait for a pooled backend.
func (m *Metrics) PoolWait(d time.Duration) {
	if m != nil {
		m.poolWait.Observe(d.Seconds())
	}
}

// Event counts one audit event.
func (m *Metrics) Event(typ, outcome string) {
	if m != nil {
		if outcome == "" {
			outcome = "none"
		}
		m.events.WithLabelValues(typ, outcome).Inc()
	}
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{})
}

// Listener serves the metrics on a TCP address that can change while the
// daemon runs (pgshield.metrics_listen); "" serves nothing.
type Listener struct {
	Handler http.Handler
	// Healthz, when set, is served at /healthz too (for probes).
	Healthz http.Handler

	mu   sync.Mutex
	addr string
	srv  *http.Server
}

// Set moves the endpoint to addr. On failure the old endpoint stays.
func (l *Listener) Set(addr string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if addr == l.addr {
		return nil
	}
	var next *http.Server
	if addr != "" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("metrics endpoint cannot listen on %s: %w", addr, err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", l.Handler)
		if l.Healthz != nil {
			mux.Handle("GET /healthz", l.Healthz)
		}
		next = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second}
		go func() { _ = next.Serve(ln) }() // returns when Shutdown closes it
	}
	l.closeLocked()
	l.addr, l.srv = addr, next
	return nil
}

// Close stops the endpoint.
func (l *Listener) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closeLocked()
	l.addr = ""
}

func (l *Listener) closeLocked() {
	if l.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = l.srv.Shutdown(ctx)
		cancel()
		l.srv = nil
	}
}
