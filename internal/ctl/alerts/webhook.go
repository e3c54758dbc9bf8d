package alerts

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Payload is what the webhook receives for each new alert: the alert
// without its evidence (statements may quote data), and nothing secret.
type Payload struct {
	Source      string            `json:"source"` // "pgshield"
	ID          string            `json:"id"`
	Type        string            `json:"type"`
	Severity    string            `json:"severity"`
	Title       string            `json:"title"`
	Time        time.Time         `json:"time"`
	Client      string            `json:"client,omitempty"`
	User        string            `json:"user,omitempty"`
	Database    string            `json:"database,omitempty"`
	Application string            `json:"application,omitempty"`
	Details     map[string]string `json:"details,omitempty"`
}

// webhookSettings are what pgshield.alert_webhook_url and
// pgshield.alert_webhook_ca_file say.
type webhookSettings struct{ url, caFile string }

// webhook delivers payloads to one HTTPS endpoint in order, on its own
// goroutine: Enqueue never waits (a full queue drops and counts), so an
// endpoint that is down or slow never delays the event that raised the
// alert, a login least of all.
type webhook struct {
	log      *slog.Logger
	q        chan Payload
	retryMin time.Duration
	retryMax time.Duration
	attempts int // per payload, then it is given up and counted
	results  *prometheus.CounterVec

	mu     sync.Mutex
	set    webhookSettings
	client *http.Client
	err    error // why set cannot be used
}

func newWebhook(log *slog.Logger, queue int, retryMin, retryMax time.Duration, attempts int, results *prometheus.CounterVec) *webhook {
	return &webhook{log: log, q: make(chan Payload, queue), retryMin: retryMin, retryMax: retryMax,
		attempts: attempts, results: results}
}

// configure takes new settings; a payload being retried goes to the new
// endpoint at its next attempt.
func (w *webhook) configure(s webhookSettings) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if s == w.set && (w.client != nil || w.err != nil) {
		return
	}
	w.set, w.client, w.err = s, nil, nil
	if s.url == "" {
		return
	}
	w.client, w.err = webhookClient(s.caFile)
}

// webhookClient verifies the server's certificate (system roots plus
// caFile), speaks TLS 1.2 or later and follows no redirect: an endpoint
// cannot send the alerts somewhere else.
func webhookClient(caFile string) (*http.Client, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		b, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("reading pgshield.alert_webhook_ca_file: %w", err)
		}
		if !pool.AppendCertsFromPEM(b) {
			return nil, errors.New("pgshield.alert_webhook_ca_file holds no PEM certificate")
		}
		tc.RootCAs = pool
	}
	return &http.Client{
		Timeout:       10 * time.Second,
		Transport:     &http.Transport{TLSClientConfig: tc, Proxy: nil, MaxIdleConns: 2, IdleConnTimeout: 30 * time.Second},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}, nil
}

// enabled reports whether a URL is set.
func (w *webhook) enabled() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.set.url != ""
}

// Enqueue hands p to the delivery goroutine without waiting.
func (w *webhook) Enqueue(p Payload) {
	if !w.enabled() {
		return
	}
	select {
	case w.q <- p:
	default:
		w.results.WithLabelValues("dropped").Inc()
	}
}

// run delivers until ctx ends; what is still queued then is dropped (the
// alerts themselves are in the store).
func (w *webhook) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case p := <-w.q:
			w.deliver(ctx, p)
		}
	}
}

// deliver posts p, retrying with capped exponential backoff, at most
// w.attempts times.
func (w *webhook) deliver(ctx context.Context, p Payload) {
	body, err := json.Marshal(p)
	if err != nil {
		w.results.WithLabelValues("failed").Inc()
		return
	}
	wait := w.retryMin
	for i := 1; i <= w.attempts; i++ {
		err := w.post(ctx, body)
		if err == nil {
			w.results.WithLabelValues("delivered").Inc()
			return
		}
		if i == w.attempts {
			break
		}
		w.results.WithLabelValues("retried").Inc()
		if i == 1 || i%10 == 0 {
			w.log.Warn("Alert webhook delivery failed; retrying.", "alert", p.ID, "attempt", i, "error", err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(2*wait, w.retryMax)
	}
	w.results.WithLabelValues("failed").Inc()
	w.log.Error("Alert webhook delivery given up.", "alert", p.ID, "attempts", w.attempts)
}

func (w *webhook) post(ctx context.Context, body []byte) error {
	w.mu.Lock()
	u, client, cerr := w.set.url, w.client, w.err
	w.mu.Unlock()
	if u == "" {
		return errors.New("no webhook URL")
	}
	if cerr != nil {
		return cerr
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return errors.New("invalid webhook URL")
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "pgshield-alerts")
	resp, err := client.Do(req)
	if err != nil {
		// The URL may carry a token: errors name the host only.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("posting to %s: %v", req.URL.Host, err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s answered %d", req.URL.Host, resp.StatusCode)
	}
	return nil
}
