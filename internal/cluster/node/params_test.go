package node

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/cluster/patroni"
	"github.com/pgshield/pgshield/internal/config"
)

const testRESTPassword = "rest-Pa55word-never-shown"

// fakePatroni records the requests it gets and answers with the statuses
// given, one per request (the last one repeats).
type fakePatroni struct {
	mu       sync.Mutex
	statuses []int
	reqs     []patroniReq
}

type patroniReq struct {
	method, path, body, contentType string
	user, password                  string
	authOK                          bool
}

func (f *fakePatroni) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	u, p, ok := r.BasicAuth()
	f.mu.Lock()
	f.reqs = append(f.reqs, patroniReq{r.Method, r.URL.Path, string(b), r.Header.Get("Content-Type"), u, p, ok})
	st := f.statuses[min(len(f.reqs), len(f.statuses))-1]
	f.mu.Unlock()
	w.WriteHeader(st)
	_, _ = w.Write([]byte("answer\nof Patroni"))
}

func (f *fakePatroni) requests() []patroniReq {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]patroniReq(nil), f.reqs...)
}

// paramNode is a Node talking to the Patroni at addr, with pgshield's
// managed settings pinning wal_init_zero (as the real ones do).
func paramNode(t *testing.T, addr string) *Node {
	t.Helper()
	_, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	return &Node{c: Config{Log: slog.New(slog.DiscardHandler)}, cl: &config.Cluster{Scope: "prod", Node: "n1", RESTPort: p},
		settings: patroni.Settings{Port: 5432, SocketDir: "/run/pg", RESTPassword: testRESTPassword},
		managed:  map[string]string{"wal_init_zero": "off", "log_destination": "jsonlog"}}
}

func checkNoPassword(t *testing.T, err error) {
	t.Helper()
	if err != nil && strings.Contains(err.Error(), testRESTPassword) {
		t.Errorf("the REST password is in an error: %v", err)
	}
}

// TestSetParameterRequest: the exact PATCH /config Patroni gets, with
// pgshield's credentials, and a 409 (the key changed under Patroni)
// retried.
func TestSetParameterRequest(t *testing.T) {
	f := &fakePatroni{statuses: []int{409, 200}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	n := paramNode(t, srv.Listener.Addr().String())
	if err := n.SetParameter(context.Background(), "Work_Mem", "12288"); err != nil {
		t.Fatal(err)
	}
	reqs := f.requests()
	if len(reqs) != 2 {
		t.Fatalf("%d requests, want 2 (a 409 retried): %+v", len(reqs), reqs)
	}
	for _, r := range reqs {
		if r.method != "PATCH" || r.path != "/config" || r.contentType != "application/json" {
			t.Errorf("request %s %s (%s)", r.method, r.path, r.contentType)
		}
		if r.body != `{"postgresql":{"parameters":{"work_mem":"12288"}}}` {
			t.Errorf("body %s", r.body)
		}
		if !r.authOK || r.user != patroni.RESTUser || r.password != testRESTPassword {
			t.Errorf("credentials %q %q %v", r.user, r.password, r.authOK)
		}
	}
	// A value with quotes and backslashes is JSON, nothing more.
	f2 := &fakePatroni{statuses: []int{200}}
	srv2 := httptest.NewServer(f2)
	defer srv2.Close()
	if err := paramNode(t, srv2.Listener.Addr().String()).SetParameter(context.Background(), "search_path", `a"b\c`); err != nil {
		t.Fatal(err)
	}
	if got := f2.requests()[0].body; got != `{"postgresql":{"parameters":{"search_path":"a\"b\\c"}}}` {
		t.Errorf("body %s", got)
	}
}

// TestSetParameterAnswers: each failure of Patroni's is a clear client
// error with the right code, never the password.
func TestSetParameterAnswers(t *testing.T) {
	for _, c := range []struct {
		status   int
		code     string
		want     string
		requests int
	}{
		{401, apitype.CodeUnavailable, "refused pgshield's credentials", 1},
		{403, apitype.CodeUnavailable, "refused pgshield's credentials", 1},
		{400, apitype.CodeInvalid, "Patroni refused the change: 400 Bad Request: answer of Patroni", 1},
		{409, apitype.CodeUnavailable, "kept changing", patchAttempts},
		{503, apitype.CodeUnavailable, "cannot read the cluster's configuration from etcd", 1},
		{502, apitype.CodeUnavailable, "could not store the change: 502", 1},
	} {
		f := &fakePatroni{statuses: []int{c.status}}
		srv := httptest.NewServer(f)
		err := paramNode(t, srv.Listener.Addr().String()).SetParameter(context.Background(), "work_mem", "12288")
		srv.Close()
		ce, ok := clienterr.As(err)
		if !ok || ce.Code != c.code || !strings.Contains(ce.Message, c.want) {
			t.Errorf("%d: %v; want %s %q", c.status, err, c.code, c.want)
		}
		if n := len(f.requests()); n != c.requests {
			t.Errorf("%d: %d requests, want %d", c.status, n, c.requests)
		}
		checkNoPassword(t, err)
	}

	// Patroni down: nothing listens on its port.
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := dead.Addr().String()
	dead.Close()
	err := paramNode(t, addr).SetParameter(context.Background(), "work_mem", "12288")
	if ce, ok := clienterr.As(err); !ok || ce.Code != apitype.CodeUnavailable || !strings.Contains(ce.Message, "did not answer") {
		t.Errorf("Patroni down: %v", err)
	}
	checkNoPassword(t, err)
}

// TestSetParameterRefused: what Patroni sets itself, what pgshield pins
// in the local YAML (which wins over etcd), and what Patroni would drop,
// are refused before any request.
func TestSetParameterRefused(t *testing.T) {
	f := &fakePatroni{statuses: []int{200}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	n := paramNode(t, srv.Listener.Addr().String())
	for _, c := range []struct{ name, value, want string }{
		{"listen_addresses", "*", "set by Patroni"},
		{"PORT", "5433", "set by Patroni"},
		{"primary_conninfo", "host=evil", "set by Patroni"},
		{"restore_command", "sh -c x", "set by Patroni"},
		{"archive_cleanup_command", "rm -rf /", "set by Patroni"},
		{"synchronous_standby_names", "", "set by Patroni"},
		{"hot_standby", "off", "set by Patroni"},
		{"wal_init_zero", "on", "set by pgshield"},             // managed
		{"log_destination", "stderr", "set by pgshield"},       // managed
		{"ssl", "on", "set by pgshield"},                       // fixed for a cluster node
		{"max_slot_wal_keep_size", "-1", "set by pgshield"},    // the slot bound
		{"unix_socket_permissions", "0777", "set by pgshield"}, // fixed
		{"max_connections", "20", "does not accept"},
		{"max_connections", "1e3", "does not accept"},
		{"wal_level", "minimal", "does not accept"},
		{"wal_keep_size", "8", "does not accept"},
		{"max_wal_senders", "2", "does not accept"},
	} {
		err := n.SetParameter(context.Background(), c.name, c.value)
		if ce, ok := clienterr.As(err); !ok || ce.Code != apitype.CodeInvalid || !strings.Contains(ce.Message, c.want) {
			t.Errorf("%s = %q: %v; want %q", c.name, c.value, err, c.want)
		}
	}
	if reqs := f.requests(); len(reqs) != 0 {
		t.Errorf("refused changes reached Patroni: %+v", reqs)
	}
	for _, c := range []struct{ name, value string }{{"max_connections", "200"}, {"wal_level", "logical"}, {"wal_keep_size", "128"}} {
		if err := n.SetParameter(context.Background(), c.name, c.value); err != nil {
			t.Errorf("%s = %s: %v", c.name, c.value, err)
		}
	}
}

// TestSetParameterOwnerChecked: with a Patroni pid that does not hold the
// REST port, the password is not sent.
func TestSetParameterOwnerChecked(t *testing.T) {
	f := &fakePatroni{statuses: []int{200}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	n := paramNode(t, srv.Listener.Addr().String())
	n.c.PatroniPID = func() int { return 0 }
	err := n.SetParameter(context.Background(), "work_mem", "12288")
	if ce, ok := clienterr.As(err); !ok || ce.Code != apitype.CodeUnavailable {
		t.Errorf("no Patroni: %v", err)
	}
	if reqs := f.requests(); len(reqs) != 0 {
		t.Errorf("the request went to a port Patroni does not hold: %+v", reqs)
	}
}
