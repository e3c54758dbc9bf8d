package mgmt

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/clienterr"
)

// TestRouteTable checks the one table: no route twice, every route with a
// handler, and write permission exactly on the routes that change state,
// which are the ones that are not GET.
func TestRouteTable(t *testing.T) {
	routes := Routes(nopBackend{})
	seen := map[string]bool{}
	for _, rt := range routes {
		key := rt.Method + " " + rt.Pattern
		if seen[key] {
			t.Errorf("route %s is listed twice", key)
		}
		seen[key] = true
		if (rt.Handler == nil) == (rt.Raw == nil) {
			t.Errorf("route %s: want exactly one of Handler and Raw", key)
		}
		want := PermitWrite
		if rt.Method == "GET" {
			want = PermitRead
		}
		if rt.Permission != want {
			t.Errorf("route %s: permission %v; want %v", key, rt.Permission, want)
		}
	}
	// Every route of the API before the table existed, with the ones that
	// were marked Write.
	writes := []string{
		"PUT /v1/parameters/{name}", "POST /v1/cluster/join-window", "POST /v1/shutdown", "POST /v1/restart",
		"POST /v1/key/lock", "POST /v1/key/unlock", "POST /v1/key/revalidate", "POST /v1/key/set", "POST /v1/key/rotate",
		"POST /v1/backups", "POST /v1/backups/archive-wal",
		"POST /v1/network", "POST /v1/firewall-rules", "PATCH /v1/firewall-rules/{name}", "DELETE /v1/firewall-rules/{name}",
		"POST /v1/network-rules", "DELETE /v1/network-rules/{name}",
		"POST /v1/principals", "DELETE /v1/principals/{name}",
		"POST /v1/storage/resize",
		"DELETE /v1/bans/{source...}",
		"POST /v1/alerts/{id}/dismiss", "POST /v1/decoys", "DELETE /v1/decoys/{name}",
		"POST /v1/certificate/rotate", "POST /v1/certificate/rollover/finish",
	}
	reads := []string{
		"GET /v1/status", "GET /v1/metrics", "GET /v1/parameters", "GET /v1/parameters/{name}", "GET /v1/key",
		"GET /v1/backups", "GET /v1/backups/job", "GET /v1/network", "GET /v1/firewall-rules", "GET /v1/firewall-rules/{name}",
		"GET /v1/network-rules", "GET /v1/network-rules/{name}", "GET /v1/principals", "GET /v1/storage",
		"GET /v1/bans", "GET /debug/pprof/{name}", "GET /v1/pool", "GET /v1/cluster", "GET /v1/cluster/audit-anchors", "POST /v1/cluster/switchover", "POST /v1/cluster/failover",
		"GET /v1/alerts", "GET /v1/alerts/{id}", "GET /v1/decoys",
		"GET /v1/certificate",
		"GET /v1/health",
	}
	for _, key := range append(writes, reads...) {
		if !seen[key] {
			t.Errorf("route %s is missing", key)
		}
	}
	if len(routes) != len(writes)+len(reads) {
		t.Errorf("the table has %d routes; want %d", len(routes), len(writes)+len(reads))
	}
}

func TestErrorBody(t *testing.T) {
	for _, tc := range []struct {
		name       string
		err        error
		wantStatus int
		wantBody   string
	}{
		{"invalid", clienterr.New(apitype.CodeInvalid, "bad value %q", "x"), 400, `{"error":"bad value \"x\"","code":"invalid"}` + "\n"},
		{"not found, wrapped", errorsJoin(clienterr.New(apitype.CodeNotFound, "no such rule")), 404, `{"error":"no such rule","code":"not_found"}` + "\n"},
		{"unavailable", clienterr.New(apitype.CodeUnavailable, "PostgreSQL is not available"), 503, `{"error":"PostgreSQL is not available","code":"unavailable"}` + "\n"},
		{"plain", errors.New("disk on fire"), 500, `{"error":"disk on fire","code":"internal"}` + "\n"},
		// A SQLSTATE-coded error is no API answer: internal, with its text.
		{"sqlstate", &clienterr.Error{Code: "28P01", Message: "password authentication failed", Reason: "wrong proof"}, 500,
			`{"error":"password authentication failed: wrong proof","code":"internal"}` + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := NewHandler([]Route{{Method: "GET", Pattern: "/x", Permission: PermitRead,
				Handler: func(*http.Request) (any, error) { return nil, tc.err }}}, Options{})
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", "/x", nil))
			if rec.Code != tc.wantStatus || rec.Body.String() != tc.wantBody {
				t.Errorf("GET /x = %d %s; want %d %s", rec.Code, rec.Body, tc.wantStatus, tc.wantBody)
			}
		})
	}
}

func errorsJoin(err error) error { return errors.Join(err, errors.New("cleanup")) }

func TestRefusesBrowsers(t *testing.T) {
	called := false
	h := NewHandler([]Route{{Method: "POST", Pattern: "/x", Permission: PermitWrite,
		Handler: func(*http.Request) (any, error) { called = true; return "ok", nil }}}, Options{})
	for _, hdr := range []string{"Origin", "Referer"} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("POST", "/x", nil)
		req.Header.Set(hdr, "http://evil.example")
		h.ServeHTTP(rec, req)
		if rec.Code != 400 || !strings.Contains(rec.Body.String(), "browser requests are not accepted") {
			t.Errorf("POST /x with %s = %d %s; want 400, browser requests are not accepted", hdr, rec.Code, rec.Body)
		}
	}
	if called {
		t.Error("the handler ran for a browser request")
	}
}

// TestOnWrite: write routes are reported with their outcome, reads are not.
func TestOnWrite(t *testing.T) {
	var got []string
	fail := clienterr.New(apitype.CodeInvalid, "no")
	h := NewHandler([]Route{
		{Method: "GET", Pattern: "/r", Permission: PermitRead, Handler: func(*http.Request) (any, error) { return "ok", nil }},
		{Method: "POST", Pattern: "/w", Permission: PermitWrite, Handler: func(*http.Request) (any, error) { return "ok", nil }},
		{Method: "DELETE", Pattern: "/w", Permission: PermitWrite, Handler: func(*http.Request) (any, error) { return nil, fail }},
	}, Options{OnWrite: func(r *http.Request, err error) { got = append(got, r.Method+" "+r.URL.Path+" "+errText(err)) }})
	for _, m := range []string{"GET /r", "POST /w", "DELETE /w"} {
		method, path, _ := strings.Cut(m, " ")
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(method, path, nil))
	}
	want := []string{"POST /w ok", "DELETE /w no"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("OnWrite calls = %q; want %q", got, want)
	}
}

func errText(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

func TestDecodeBodyIsStrict(t *testing.T) {
	var req apitype.SetParameterRequest
	r := httptest.NewRequest("PUT", "/v1/parameters/x", strings.NewReader(`{"value":"1","extra":true}`))
	err := DecodeBody(r, &req)
	if e, ok := clienterr.As(err); !ok || e.Code != apitype.CodeInvalid || !strings.Contains(e.Message, `unknown field "extra"`) {
		t.Errorf("DecodeBody(unknown field) error = %v; want invalid, unknown field", err)
	}
	r = httptest.NewRequest("POST", "/v1/backups", http.NoBody)
	var breq apitype.BackupCreateRequest
	if err := decodeOptionalBody(r, &breq); err != nil || breq.Type != "" {
		t.Errorf("decodeOptionalBody(no body) = %+v, %v; want the zero value", breq, err)
	}
	r = httptest.NewRequest("POST", "/v1/backups", io.NopCloser(strings.NewReader(`{"type":"incr"}`)))
	if err := decodeOptionalBody(r, &breq); err != nil || breq.Type != "incr" {
		t.Errorf("decodeOptionalBody(incr) = %+v, %v; want incr", breq, err)
	}
}

// nopBackend answers everything with zero values.
type nopBackend struct{}

var _ Backend = nopBackend{}

func (nopBackend) Status(context.Context) apitype.Status { return apitype.Status{} }
func (nopBackend) Shutdown()                             {}
func (nopBackend) Restart(context.Context) (apitype.RestartResult, error) {
	return apitype.RestartResult{}, nil
}
func (nopBackend) MetricsHandler() http.Handler { return http.NotFoundHandler() }
func (nopBackend) Parameters(context.Context) ([]apitype.ParameterValue, error) {
	return nil, nil
}
func (nopBackend) Parameter(context.Context, string) (apitype.ParameterValue, error) {
	return apitype.ParameterValue{}, nil
}
func (nopBackend) SetParameter(context.Context, string, string) (apitype.ParameterValue, error) {
	return apitype.ParameterValue{}, nil
}
func (nopBackend) Key() apitype.KeyInfo                          { return apitype.KeyInfo{} }
func (nopBackend) LockKey() (apitype.KeyInfo, error)             { return apitype.KeyInfo{}, nil }
func (nopBackend) UnlockKey() (apitype.KeyInfo, error)           { return apitype.KeyInfo{}, nil }
func (nopBackend) RevalidateKey(context.Context) apitype.KeyInfo { return apitype.KeyInfo{} }
func (nopBackend) ChangeKey(context.Context, string, bool) (apitype.KeyInfo, error) {
	return apitype.KeyInfo{}, nil
}
func (nopBackend) Backups(context.Context) (apitype.BackupList, error) {
	return apitype.BackupList{}, nil
}
func (nopBackend) CreateBackup(string) (*apitype.BackupJob, error) { return &apitype.BackupJob{}, nil }
func (nopBackend) BackupJob() (*apitype.BackupJob, error)          { return &apitype.BackupJob{}, nil }
func (nopBackend) ArchiveWAL(context.Context) (apitype.ArchiveResult, error) {
	return apitype.ArchiveResult{}, nil
}
func (nopBackend) Network() apitype.NetworkInfo { return apitype.NetworkInfo{} }
func (nopBackend) SetNetworkMode(string) (apitype.NetworkInfo, error) {
	return apitype.NetworkInfo{}, nil
}
func (nopBackend) FirewallRules() []apitype.FirewallRule { return nil }
func (nopBackend) FirewallRule(string) (apitype.FirewallRule, error) {
	return apitype.FirewallRule{}, nil
}
func (nopBackend) DeleteFirewallRule(string) error                 { return nil }
func (nopBackend) NetworkRules() []apitype.NetworkRule             { return nil }
func (nopBackend) NetworkRule(string) (apitype.NetworkRule, error) { return apitype.NetworkRule{}, nil }
func (nopBackend) DeleteNetworkRule(string) error                  { return nil }
func (nopBackend) Storage(context.Context) apitype.StorageInfo     { return apitype.StorageInfo{} }
func (nopBackend) ResizeStorage(int64) (apitype.StorageResizeResult, error) {
	return apitype.StorageResizeResult{}, nil
}
func (nopBackend) WriteFirewallRule(apitype.RuleRequest, bool) (apitype.FirewallRule, error) {
	return apitype.FirewallRule{}, nil
}
func (nopBackend) CreateNetworkRule(apitype.RuleRequest) (apitype.NetworkRule, error) {
	return apitype.NetworkRule{}, nil
}
func (nopBackend) Principals(context.Context) ([]apitype.Principal, error) { return nil, nil }
func (nopBackend) CreatePrincipal(context.Context, apitype.PrincipalRequest) (apitype.Principal, error) {
	return apitype.Principal{}, nil
}
func (nopBackend) DeletePrincipal(context.Context, string) (apitype.Principal, error) {
	return apitype.Principal{}, nil
}
func (nopBackend) Bans() []apitype.Ban    { return nil }
func (nopBackend) Pool() apitype.PoolInfo { return apitype.PoolInfo{} }
func (nopBackend) Cluster(context.Context) (apitype.ClusterInfo, error) {
	return apitype.ClusterInfo{}, nil
}
func (nopBackend) AuditAnchors(context.Context) ([]apitype.AuditAnchor, error) { return nil, nil }
func (nopBackend) ClusterAllowJoin(apitype.ClusterJoinRequest) (apitype.ClusterJoinWindow, error) {
	return apitype.ClusterJoinWindow{}, nil
}
func (nopBackend) ClusterManual(context.Context, string, string) (apitype.ClusterManualResult, error) {
	return apitype.ClusterManualResult{}, nil
}
func (nopBackend) Unban(string) (apitype.Ban, error) { return apitype.Ban{}, nil }
