package metrics

import (
	"io"
	"net/http"
	"testing"
	"time"
)

// TestListenerHealthz: /healthz is served beside /metrics when the daemon
// gives a handler, and not otherwise.
func TestListenerHealthz(t *testing.T) {
	get := func(addr string) (int, string) {
		c := http.Client{Timeout: 5 * time.Second}
		resp, err := c.Get("http://" + addr + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	with := &Listener{Handler: http.NotFoundHandler(), Healthz: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, "unavailable")
	})}
	defer with.Close()
	addr := freeAddr(t)
	if err := with.Set(addr); err != nil {
		t.Fatal(err)
	}
	if code, body := get(addr); code != http.StatusServiceUnavailable || body != "unavailable" {
		t.Errorf("GET /healthz = %d %q; want the handler's answer", code, body)
	}
	without := &Listener{Handler: http.NotFoundHandler()}
	defer without.Close()
	addr = freeAddr(t)
	if err := without.Set(addr); err != nil {
		t.Fatal(err)
	}
	if code, _ := get(addr); code != http.StatusNotFound {
		t.Errorf("GET /healthz without a handler = %d; want 404", code)
	}
}
