package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// healthOf returns status's health: its state and its conditions by name.
func healthOf(t *testing.T, s *server) (string, map[string]map[string]any) {
	t.Helper()
	h, ok := s.status(t)["health"].(map[string]any)
	if !ok {
		t.Fatalf("status has no health")
	}
	conds := map[string]map[string]any{}
	list, _ := h["conditions"].([]any)
	for _, c := range list {
		m := c.(map[string]any)
		conds[m["name"].(string)] = m
	}
	return h["state"].(string), conds
}

// wantCondition fails t unless status reports the condition name with
// severity, and returns it.
func wantCondition(t *testing.T, s *server, name, severity string) map[string]any {
	t.Helper()
	state, conds := healthOf(t, s)
	c, ok := conds[name]
	if !ok || c["severity"] != severity {
		t.Fatalf("health = %s %v; want %s (%s)", state, conds, name, severity)
	}
	wantState := map[string]string{"warning": "degraded", "critical": "unavailable"}[severity]
	if severity == "warning" && state == "unavailable" {
		wantState = state // another condition may be worse
	}
	if state != wantState {
		t.Fatalf("health state = %s with %v; want %s", state, conds, wantState)
	}
	return c
}

func postgresConditions(conds map[string]map[string]any) []string {
	var names []string
	for n := range conds {
		if strings.HasPrefix(n, "postgres_") {
			names = append(names, n)
		}
	}
	return names
}

// TestHealthPostgresRestarting kills the shared server's postmaster:
// status and /healthz report PostgreSQL restarting (unavailable, 503) while
// the supervisor brings it back, then the server's health as it was.
func TestHealthPostgresRestarting(t *testing.T) {
	s := shared
	baseline, conds := healthOf(t, s)
	if p := postgresConditions(conds); len(p) != 0 || baseline == "unavailable" {
		t.Fatalf("before the kill: health %s %v", baseline, conds)
	}
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	mustCLI(t, s, "parameter", "set", "pgshield.metrics_listen", addr)
	defer s.cli("parameter", "set", "pgshield.metrics_listen", "")
	get := func() (int, string) {
		c := http.Client{Timeout: 2 * time.Second}
		resp, err := c.Get("http://" + addr + "/healthz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(); code != http.StatusOK || !strings.Contains(body, `"state":"`+baseline+`"`) {
		t.Fatalf("GET /healthz before the kill = %d %s", code, body)
	}

	// /healthz is polled fast in the background to catch the restart.
	var mu sync.Mutex
	var seen503 string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if code, body := get(); code == http.StatusServiceUnavailable && strings.Contains(body, `"name":"postgres_`) {
				mu.Lock()
				if seen503 == "" {
					seen503 = body
				}
				mu.Unlock()
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	pid := pidOf(s.status(t)["postgres"].(map[string]any)["pid"])
	if pid <= 1 {
		t.Fatal("no postmaster pid in status")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var during map[string]any
	deadline := time.Now().Add(30 * time.Second)
	for during == nil && time.Now().Before(deadline) {
		state, conds := healthOf(t, s)
		if c, ok := conds["postgres_restarting"]; ok && state == "unavailable" {
			during = c
		}
		time.Sleep(20 * time.Millisecond)
	}
	if during == nil {
		t.Fatalf("status never reported postgres_restarting after the postmaster was killed")
	}
	if during["severity"] != "critical" || !strings.Contains(during["message"].(string), "killed") || during["since"] == nil {
		t.Errorf("postgres_restarting = %v; want critical, the exit and since", during)
	}
	// Back to how it was.
	deadline = time.Now().Add(90 * time.Second)
	for {
		state, conds := healthOf(t, s)
		if len(postgresConditions(conds)) == 0 && state == baseline {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("health after the restart = %s %v; want %s again", state, conds, baseline)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if code, _ := get(); code != http.StatusOK {
		t.Errorf("GET /healthz after the restart = %d; want 200", code)
	}
	mu.Lock()
	defer mu.Unlock()
	if seen503 == "" {
		t.Errorf("/healthz never answered 503 with a postgres_ condition during the restart")
	} else if strings.Contains(seen503, "message") || strings.Contains(seen503, "killed") {
		t.Errorf("/healthz body carries messages: %s", seen503)
	}
	var body struct {
		State string `json:"state"`
	}
	if err := json.Unmarshal([]byte(seen503), &body); err != nil || body.State != "unavailable" {
		t.Errorf("/healthz during the restart = %s; want state unavailable", seen503)
	}
}
