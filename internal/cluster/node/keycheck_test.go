package node

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgshield/pgshield/internal/config"
)

// fakeEtcd is etcd's JSON gateway for one key space: put, delete and
// range of a single key, with revisions, and a value (as large as an
// attacker likes) that a keys_only range leaves out, as etcd does.
type fakeEtcd struct {
	mu    sync.Mutex
	rev   int64
	kv    map[string]int64 // key -> mod_revision
	value []byte
	down  atomic.Bool
}

func (f *fakeEtcd) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if f.down.Load() {
		http.Error(w, "unavailable", http.StatusServiceUnavailable)
		return
	}
	var req struct {
		Key, Value []byte
		KeysOnly   bool `json:"keys_only"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch r.URL.Path {
	case "/v3/kv/put":
		f.rev++
		f.kv[string(req.Key)] = f.rev
		_ = json.NewEncoder(w).Encode(map[string]any{"header": map[string]string{"revision": strconv.FormatInt(f.rev, 10)}})
	case "/v3/kv/range":
		out := map[string]any{"header": map[string]string{"revision": strconv.FormatInt(f.rev, 10)}}
		if m, ok := f.kv[string(req.Key)]; ok {
			kv := map[string]any{"key": "eA==", "mod_revision": strconv.FormatInt(m, 10)}
			if !req.KeysOnly {
				kv["value"] = f.value
			}
			out["kvs"] = []map[string]any{kv}
		}
		_ = json.NewEncoder(w).Encode(out)
	default:
		http.Error(w, "no", 404)
	}
}

func (f *fakeEtcd) put(key string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rev++
	f.kv[key] = f.rev
}

// TestKeyChecks: any change to the bump key (another node's bump, this
// node's own, anyone's with an etcd client certificate, a deletion) makes
// this node check its key, once per gap however many changes; a bump in
// another scope does nothing; an etcd that fails is retried, not fatal.
func TestKeyChecks(t *testing.T) {
	f := &fakeEtcd{kv: map[string]int64{}}
	srv := httptest.NewTLSServer(f)
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "https://")
	mk := func(name string) *Node {
		return &Node{c: Config{Log: slog.New(slog.DiscardHandler)}, cl: &config.Cluster{Scope: "prod", Node: name, Etcd: []string{addr}},
			etcd: srv.Client()}
	}
	n1, n2 := mk("n1"), mk("n2")
	var checks atomic.Int32
	k1 := n1.KeyChecks(func(context.Context) { checks.Add(1) })
	k1.poll, k1.gap = 10*time.Millisecond, 300*time.Millisecond
	k2 := n2.KeyChecks(func(context.Context) { t.Error("n2 checked") })
	key := "/pgshield-keys/prod/check"
	f.put(key) // before n1 runs: history, not a bump
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); k1.Run(ctx) }()
	waitCount := func(want int32, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for checks.Load() < want && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(50 * time.Millisecond) // and no more than want
		if got := checks.Load(); got != want {
			t.Fatalf("checks = %d; want %d", got, want)
		}
	}
	waitCount(0, 100*time.Millisecond)

	k2.Changed("Inaccessible")
	waitCount(1, 2*time.Second)

	// Three bumps inside the gap: one check, when the gap ends.
	for range 3 {
		f.put(key)
		time.Sleep(20 * time.Millisecond)
	}
	waitCount(2, 2*time.Second)

	// Another scope's bump: nothing. Its own bump: a check (it could hide
	// another node's made just before).
	f.put("/pgshield-keys/other/check")
	time.Sleep(400 * time.Millisecond)
	waitCount(2, 0)
	k1.Changed("Available")
	waitCount(3, 2*time.Second)

	// A bump deleted at once (by an etcd client hiding it): a check.
	time.Sleep(300 * time.Millisecond)
	f.mu.Lock()
	f.rev++
	f.kv[key] = f.rev
	f.rev++
	delete(f.kv, key)
	f.mu.Unlock()
	waitCount(4, 2*time.Second)

	// A bump carrying a value too big to read (etcd takes ~1.5 MiB): the
	// value is never asked for, so a check.
	time.Sleep(300 * time.Millisecond)
	f.mu.Lock()
	f.value = make([]byte, 1200<<10)
	f.mu.Unlock()
	f.put(key)
	waitCount(5, 2*time.Second)

	// etcd down, then back with a bump made meanwhile.
	time.Sleep(300 * time.Millisecond)
	f.down.Store(true)
	time.Sleep(50 * time.Millisecond)
	f.mu.Lock()
	f.rev++
	f.kv[key] = f.rev
	f.mu.Unlock()
	f.down.Store(false)
	waitCount(6, 2*time.Second)
	cancel()
	<-done
}
