package apiclient_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"sync"
	"testing"

	"github.com/pgshield/pgshield/internal/apiclient"
	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/mgmt"
)

// serve runs h on a Unix socket, as the daemon does, and returns a client
// of it.
func serve(t *testing.T, h http.Handler) *apiclient.Client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return apiclient.New(sock)
}

// wire is one request as it was on the socket.
type wire struct {
	method, path, contentType, body string
}

// recorder keeps the requests h serves, bodies as sent.
type recorder struct {
	mu   sync.Mutex
	reqs []wire
}

func (rec *recorder) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(b))
		rec.mu.Lock()
		rec.reqs = append(rec.reqs, wire{r.Method, r.URL.EscapedPath(), r.Header.Get("Content-Type"), string(b)})
		rec.mu.Unlock()
		h.ServeHTTP(w, r)
	})
}

func (rec *recorder) last() wire {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return rec.reqs[len(rec.reqs)-1]
}

// fakeBackend serves a few routes; the others are not called here.
type fakeBackend struct {
	mgmt.Backend
	mu     sync.Mutex
	params map[string]string
	typ    string // of the last CreateBackup
	keyURI string // of the last ChangeKey
	rotate bool
}

func (f *fakeBackend) Status(context.Context) apitype.Status {
	return apitype.Status{State: "Available", PID: 42, Postgres: apitype.PostgresStatus{Version: "15.18", State: "Running"},
		Key: apitype.KeyInfo{KeyState: apitype.KeyState{State: apitype.KeyAvailable}}}
}

func (f *fakeBackend) MetricsHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "pgshield_postgres_up 1\n") })
}

func (f *fakeBackend) Parameter(_ context.Context, name string) (apitype.ParameterValue, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.params[name]
	if !ok {
		return apitype.ParameterValue{}, clienterr.New(apitype.CodeNotFound, "unrecognized configuration parameter %q", name)
	}
	return apitype.ParameterValue{Name: name, Value: v, Source: "postgresql", Context: "dynamic"}, nil
}

func (f *fakeBackend) SetParameter(ctx context.Context, name, value string) (apitype.ParameterValue, error) {
	f.mu.Lock()
	if _, ok := f.params[name]; !ok {
		f.mu.Unlock()
		return apitype.ParameterValue{}, clienterr.New(apitype.CodeNotFound, "unrecognized configuration parameter %q", name)
	}
	f.params[name] = value
	f.mu.Unlock()
	return f.Parameter(ctx, name)
}

func (f *fakeBackend) ChangeKey(_ context.Context, keyURI string, rotate bool) (apitype.KeyInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.keyURI, f.rotate = keyURI, rotate
	return apitype.KeyInfo{KeySource: "customer-managed", KeyURI: keyURI}, nil
}

func (f *fakeBackend) LockKey() (apitype.KeyInfo, error) {
	return apitype.KeyInfo{KeyState: apitype.KeyState{State: apitype.KeyLocked}}, nil
}

func (f *fakeBackend) CreateBackup(typ string) (*apitype.BackupJob, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.typ = typ
	return &apitype.BackupJob{ID: "abc", Type: typ, State: apitype.JobRunning}, nil
}

func (f *fakeBackend) FirewallRules() []apitype.FirewallRule { return []apitype.FirewallRule{} }

func (f *fakeBackend) DeleteFirewallRule(name string) error {
	if name != "AllowOffice" {
		return clienterr.New(apitype.CodeNotFound, "firewall rule %q does not exist", name)
	}
	return nil
}

// setup serves a fake daemon behind the real route table.
func setup(t *testing.T) (*fakeBackend, *recorder, *apiclient.Client) {
	f := &fakeBackend{params: map[string]string{"work_mem": "4MB", "a/b": "1"}}
	rec := &recorder{}
	return f, rec, serve(t, rec.wrap(mgmt.NewHandler(mgmt.Routes(f), mgmt.Options{})))
}

func TestStatus(t *testing.T) {
	_, rec, c := setup(t)
	st, err := c.Status(context.Background())
	if err != nil {
		t.Fatalf("Status() error = %v", err)
	}
	if st.State != "Available" || st.PID != 42 || st.Postgres.Version != "15.18" || st.Key.State != apitype.KeyAvailable {
		t.Errorf("Status() = %+v; want the fake's", st)
	}
	if got, want := rec.last(), (wire{"GET", "/v1/status", "", ""}); got != want {
		t.Errorf("Status() sent %+v; want %+v", got, want)
	}
}

func TestSetParameter(t *testing.T) {
	_, rec, c := setup(t)
	p, err := c.SetParameter(context.Background(), "work_mem", "64MB")
	if err != nil || p.Name != "work_mem" || p.Value != "64MB" {
		t.Fatalf("SetParameter(work_mem, 64MB) = %+v, %v; want work_mem = 64MB", p, err)
	}
	if got, want := rec.last(), (wire{"PUT", "/v1/parameters/work_mem", "application/json", `{"value":"64MB"}`}); got != want {
		t.Errorf("SetParameter sent %+v; want %+v", got, want)
	}
	// A name is one path segment, whatever it holds.
	if p, err := c.Parameter(context.Background(), "a/b"); err != nil || p.Value != "1" {
		t.Errorf("Parameter(a/b) = %+v, %v; want 1", p, err)
	}
	if got := rec.last().path; got != "/v1/parameters/a%2Fb" {
		t.Errorf("Parameter(a/b) asked for %s; want /v1/parameters/a%%2Fb", got)
	}
}

func TestErrorAnswer(t *testing.T) {
	_, _, c := setup(t)
	_, err := c.SetParameter(context.Background(), "no_such", "1")
	var ae *apitype.Error
	if !errors.As(err, &ae) || ae.Code != apitype.CodeNotFound || ae.Message != `unrecognized configuration parameter "no_such"` {
		t.Fatalf("SetParameter(no_such) error = %#v; want not_found", err)
	}
	if err.Error() != `unrecognized configuration parameter "no_such"` {
		t.Errorf("Error() = %q; want the message alone", err.Error())
	}
	if err := c.DeleteFirewallRule(context.Background(), "Nope"); !errors.As(err, &ae) || ae.Code != apitype.CodeNotFound {
		t.Errorf("DeleteFirewallRule(Nope) error = %v; want not_found", err)
	}
}

// TestRequestBodies: the bodies on the wire are what the CLI always sent,
// and the daemon reads the routes' meaning from them.
func TestRequestBodies(t *testing.T) {
	f, rec, c := setup(t)
	ctx := context.Background()
	if _, err := c.LockKey(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := rec.last(), (wire{"POST", "/v1/key/lock", "", ""}); got != want {
		t.Errorf("LockKey sent %+v; want %+v", got, want)
	}
	if _, err := c.RotateKey(ctx, ""); err != nil || !f.rotate || f.keyURI != "" {
		t.Errorf("RotateKey(\"\") = %v; backend got %q, rotate %v", err, f.keyURI, f.rotate)
	}
	if got, want := rec.last(), (wire{"POST", "/v1/key/rotate", "application/json", `{}`}); got != want {
		t.Errorf("RotateKey sent %+v; want %+v", got, want)
	}
	if ki, err := c.SetKey(ctx, "awskms://k"); err != nil || f.rotate || f.keyURI != "awskms://k" || ki.KeyURI != "awskms://k" {
		t.Errorf("SetKey(awskms://k) = %+v, %v; backend got %q, rotate %v", ki, err, f.keyURI, f.rotate)
	}
	job, err := c.CreateBackup(ctx, "incr")
	if err != nil || job.ID != "abc" || job.State != apitype.JobRunning || f.typ != "incr" {
		t.Errorf("CreateBackup(incr) = %+v, %v; backend got %q", job, err, f.typ)
	}
	if got, want := rec.last(), (wire{"POST", "/v1/backups", "application/json", `{"type":"incr"}`}); got != want {
		t.Errorf("CreateBackup sent %+v; want %+v", got, want)
	}
	if err := c.DeleteFirewallRule(ctx, "AllowOffice"); err != nil {
		t.Errorf("DeleteFirewallRule(AllowOffice) error = %v", err)
	}
	if rs, err := c.FirewallRules(ctx); err != nil || rs == nil || len(rs) != 0 {
		t.Errorf("FirewallRules() = %#v, %v; want an empty list", rs, err)
	}
	b, err := c.Metrics(ctx)
	if err != nil || string(b) != "pgshield_postgres_up 1\n" {
		t.Errorf("Metrics() = %q, %v", b, err)
	}
}

func TestNotRunning(t *testing.T) {
	c := apiclient.New(filepath.Join(t.TempDir(), "api.sock"))
	if _, err := c.Status(context.Background()); !errors.Is(err, apiclient.ErrNotRunning) {
		t.Errorf("Status() with no daemon: error = %v; want ErrNotRunning", err)
	}
}

// TestEveryRoute calls every method of the client and checks that
// together they reach every route of the table, and nothing else.
func TestEveryRoute(t *testing.T) {
	routes := mgmt.Routes(&fakeBackend{})
	var mu sync.Mutex
	hit := map[string]int{}
	for i := range routes {
		key := routes[i].Method + " " + routes[i].Pattern
		routes[i].Raw = nil
		routes[i].Handler = func(*http.Request) (any, error) {
			mu.Lock()
			hit[key]++
			mu.Unlock()
			return nil, nil // null decodes into every answer type
		}
	}
	c := serve(t, mgmt.NewHandler(routes, mgmt.Options{}))
	v := reflect.ValueOf(c)
	for i := 0; i < v.NumMethod(); i++ {
		m, name := v.Method(i), v.Type().Method(i).Name
		args := []reflect.Value{}
		for j := 0; j < m.Type().NumIn(); j++ {
			args = append(args, argFor(m.Type().In(j)))
		}
		out := m.Call(args)
		if err, _ := out[len(out)-1].Interface().(error); err != nil {
			t.Errorf("%s() error = %v", name, err)
		}
	}
	for _, rt := range routes {
		if key := rt.Method + " " + rt.Pattern; hit[key] != 1 {
			t.Errorf("route %s reached by %d client methods; want 1", key, hit[key])
		}
	}
	if v.NumMethod() != len(routes) {
		t.Errorf("the client has %d methods for %d routes", v.NumMethod(), len(routes))
	}
}

var ctxType = reflect.TypeFor[context.Context]()

// argFor makes an argument for a client method: a context, or a value
// with its strings (and a request's Name) set so that paths are complete.
func argFor(t reflect.Type) reflect.Value {
	if t == ctxType {
		return reflect.ValueOf(context.Background())
	}
	v := reflect.New(t).Elem()
	switch t.Kind() {
	case reflect.String:
		v.SetString("x")
	case reflect.Struct:
		if f := v.FieldByName("Name"); f.IsValid() && f.Kind() == reflect.String {
			f.SetString("x")
		}
	}
	return v
}
