package metrics

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestKeyStateAndTransitions(t *testing.T) {
	m := New(map[string]func() float64{"pgshield_gateway_connections_active": func() float64 { return 3 }})
	t0 := time.Unix(1_700_000_000, 0)
	m.KeyState("", "Available", t0)
	m.KeyState("Available", "Inaccessible", t0.Add(time.Minute))
	m.KeyState("Inaccessible", "Inaccessible", t0.Add(2*time.Minute)) // not a transition
	m.KeyState("Inaccessible", "Available", t0.Add(3*time.Minute))
	if v := testutil.ToFloat64(m.keyState.WithLabelValues("Available")); v != 1 {
		t.Errorf("key_state{Available} = %v; want 1", v)
	}
	if v := testutil.ToFloat64(m.keyState.WithLabelValues("Inaccessible")); v != 0 {
		t.Errorf("key_state{Inaccessible} = %v; want 0", v)
	}
	if v := testutil.ToFloat64(m.keyTransitions.WithLabelValues("Available", "Inaccessible")); v != 1 {
		t.Errorf("transitions Available->Inaccessible = %v; want 1", v)
	}
	if n := testutil.CollectAndCount(m.keyTransitions); n != 2 {
		t.Errorf("transition series = %d; want 2 (a same-state store is none)", n)
	}
	if v := testutil.ToFloat64(m.keySince); v != float64(t0.Add(3*time.Minute).Unix()) {
		t.Errorf("key_state_since = %v; want the last change", v)
	}
	m.Revalidation("ok")
	m.Event("auth.failure", "failure")
	m.Event("session.end", "")
	if v := testutil.ToFloat64(m.events.WithLabelValues("session.end", "none")); v != 1 {
		t.Errorf("events{session.end,none} = %v; want 1", v)
	}
	var nilM *Metrics
	nilM.Event("x", "y") // a daemon without metrics must not panic
	nilM.KeyState("", "Available", t0)
}

func TestListener(t *testing.T) {
	m := New(map[string]func() float64{"pgshield_gateway_connections_active": func() float64 { return 7 }})
	m.KeyState("", "Locked", time.Now())
	l := &Listener{Handler: m.Handler()}
	defer l.Close()
	get := func(addr string) (string, error) {
		c := http.Client{Timeout: 5 * time.Second}
		resp, err := c.Get("http://" + addr + "/metrics")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	addr := freeAddr(t)
	if err := l.Set(addr); err != nil {
		t.Fatal(err)
	}
	body, err := get(addr)
	if err != nil || !strings.Contains(body, `pgshield_key_state{state="Locked"} 1`) ||
		!strings.Contains(body, "pgshield_gateway_connections_active 7") || !strings.Contains(body, "go_goroutines") {
		t.Fatalf("GET /metrics = %v\n%s", err, body)
	}
	// Moving the endpoint closes the old one.
	next := freeAddr(t)
	if err := l.Set(next); err != nil {
		t.Fatal(err)
	}
	if _, err := get(addr); err == nil {
		t.Errorf("old metrics address still answers after the move")
	}
	if _, err := get(next); err != nil {
		t.Errorf("new metrics address: %v", err)
	}
	// A busy address is refused and the current endpoint stays.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	if err := l.Set(busy.Addr().String()); err == nil {
		t.Errorf("Set(busy address) error = nil")
	}
	if _, err := get(next); err != nil {
		t.Errorf("endpoint lost after a refused move: %v", err)
	}
	if err := l.Set(""); err != nil {
		t.Fatal(err)
	}
	if _, err := get(next); err == nil {
		t.Errorf("metrics still served after Set(\"\")")
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
