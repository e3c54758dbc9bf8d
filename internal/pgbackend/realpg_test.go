package pgbackend_test

// Tests against a real PostgreSQL 15 (internal/testutil/pgtest), shared by
// the package's tests and gated by PGSHIELD_E2E=1 like e2e/. In package
// pgbackend_test: pgtest reaches this package through internal/postgres.

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/pgbackend"
	"github.com/pgshield/pgshield/internal/testutil/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// newCatalog is the gateway's lookup as the daemon configures it: the
// lookup role over the private socket, EnsureCatalog as the service role.
// ensures counts the Ensure calls.
func newCatalog(t *testing.T, srv *pgtest.Server) (cat *pgbackend.Catalog, ensures *atomic.Int32) {
	t.Helper()
	ensures = new(atomic.Int32)
	cat, err := pgbackend.NewCatalog(context.Background(), pgbackend.CatalogConfig{
		SocketDir: srv.SocketDir(), Port: srv.Port(), Role: config.LookupRole,
		Ensure: func(ctx context.Context) error { ensures.Add(1); return srv.EnsureCatalog(ctx) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cat.Close)
	return cat, ensures
}

// describe sums up what the gateway decides on.
func describe(r pgbackend.Role) string {
	if !r.Exists {
		return "none"
	}
	var f []string
	if r.CanLogin {
		f = append(f, "login")
	}
	if r.Superuser {
		f = append(f, "super")
	}
	if strings.HasPrefix(r.Password, "SCRAM-SHA-256$") {
		f = append(f, "scram")
	}
	if r.ValidUntil != nil {
		f = append(f, "until="+r.ValidUntil.UTC().Format(time.RFC3339))
	}
	if p := r.Principal; p != nil {
		f = append(f, "principal="+p.Kind+":"+p.ObjectID)
	}
	return strings.Join(f, " ")
}

func TestRealLookupRole(t *testing.T) {
	srv := pgtest.Shared(t)
	pgbackend.CheckGoroutines(t)
	// 63 bytes, PostgreSQL's longest name: a longer name sent as a name
	// would be cut to it and match this role.
	long := "lookup_" + strings.Repeat("x", 56)
	srv.CreateRole(t, "lookup_alice", "pw", "LOGIN")
	srv.CreateRole(t, "lookup_nologin", "pw", "NOLOGIN")
	srv.CreateRole(t, "lookup_forever", "pw", "LOGIN VALID UNTIL 'infinity'")
	srv.CreateRole(t, "lookup_never", "pw", "LOGIN VALID UNTIL '-infinity'")
	srv.CreateRole(t, "lookup_dated", "pw", "LOGIN VALID UNTIL '2031-02-03 04:05:06+00'")
	srv.CreateRole(t, `Lookup "Quoted" Role`, "pw", "LOGIN")
	srv.CreateRole(t, long, "pw", "LOGIN")
	srv.CreatePrincipal(t, pgbackend.TokenPrincipal{Name: "lookup@contoso.com", ObjectID: "oid-lookup",
		Kind: pgbackend.PrincipalGroup})
	cat, _ := newCatalog(t, srv)
	for name, want := range map[string]string{
		"lookup_alice":                  "login scram",
		"lookup_nologin":                "scram",
		"lookup_forever":                "login scram",
		"lookup_never":                  "login scram until=1970-01-01T00:00:00Z",
		"lookup_dated":                  "login scram until=2031-02-03T04:05:06Z",
		`Lookup "Quoted" Role`:          "login scram",
		"lookup_ghost":                  "none",
		"LOOKUP_ALICE":                  "none",
		config.SuperuserRole:            "login super",
		config.LookupRole:               "login",
		long:                            "login scram",
		long + "y":                      "none",
		long + strings.Repeat("y", 100): "none",
		"lookup@contoso.com":            "login principal=group:oid-lookup",
	} {
		r, err := cat.LookupRole(context.Background(), name)
		if err != nil {
			t.Errorf("LookupRole(%q) error = %v", name, err)
			continue
		}
		if got := describe(r); got != want || r.Name != name {
			t.Errorf("LookupRole(%q) = %q (name %q); want %q", name, got, r.Name, want)
		}
	}
}

// TestRealLookupCache checks that answers are cached and that Forget makes
// the next lookup read the catalog again.
func TestRealLookupCache(t *testing.T) {
	srv := pgtest.Shared(t)
	pgbackend.CheckGoroutines(t)
	srv.CreateRole(t, "lookup_cached", "pw", "LOGIN")
	cat, _ := newCatalog(t, srv)
	lookup := func() string {
		r, err := cat.LookupRole(context.Background(), "lookup_cached")
		if err != nil {
			t.Fatalf("LookupRole() error = %v", err)
		}
		return describe(r)
	}
	if got := lookup(); got != "login scram" {
		t.Fatalf("LookupRole() = %q; want login scram", got)
	}
	if _, err := srv.Conn(t).Exec(context.Background(), `ALTER ROLE lookup_cached NOLOGIN`); err != nil {
		t.Fatal(err)
	}
	if got := lookup(); got != "login scram" {
		t.Errorf("LookupRole() within the TTL = %q; want the cached login scram", got)
	}
	cat.Forget("lookup_cached")
	if got := lookup(); got != "scram" {
		t.Errorf("LookupRole() after Forget = %q; want scram (NOLOGIN)", got)
	}
}

// TestRealLookupEnsuresAgain breaks what EnsureCatalog makes, as a restore
// from before it existed would: the next lookup makes it again, once.
func TestRealLookupEnsuresAgain(t *testing.T) {
	srv := pgtest.Shared(t)
	pgbackend.CheckGoroutines(t)
	srv.CreateRole(t, "lookup_again", "pw", "LOGIN")
	for _, tt := range []struct{ desc, stmt string }{
		{"function dropped (42883)", `DROP FUNCTION pgshield.login_role(pg_catalog.text)`},
		{"execute revoked (42501)", `REVOKE EXECUTE ON FUNCTION pgshield.login_role(pg_catalog.text) FROM pgshield_auth`},
		{"schema dropped (3F000)", `DROP SCHEMA pgshield CASCADE`},
	} {
		t.Run(tt.desc, func(t *testing.T) {
			cat, ensures := newCatalog(t, srv)
			if _, err := cat.LookupRole(context.Background(), "lookup_ghost"); err != nil {
				t.Fatalf("LookupRole() error = %v", err)
			}
			if _, err := srv.Conn(t).Exec(context.Background(), tt.stmt); err != nil {
				t.Fatal(err)
			}
			r, err := cat.LookupRole(context.Background(), "lookup_again")
			if err != nil || describe(r) != "login scram" {
				t.Errorf("LookupRole() after %s = %q, %v; want login scram", tt.desc, describe(r), err)
			}
			if n := ensures.Load(); n != 2 {
				t.Errorf("Ensure ran %d times; want 2 (first lookup, then once after %s)", n, tt.desc)
			}
		})
	}
}

// TestRealLookupRoleReadsNothingElse checks that the lookup role can only
// call pgshield.login_role.
func TestRealLookupRoleReadsNothingElse(t *testing.T) {
	srv := pgtest.Shared(t)
	pgbackend.CheckGoroutines(t)
	// Whatever the tests before did to the catalog.
	if err := srv.EnsureCatalog(context.Background()); err != nil {
		t.Fatal(err)
	}
	cc, err := pgbackend.PinnedConfig(pgbackend.DSN(srv.SocketDir(), srv.Port(), config.LookupRole, "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.ConnectConfig(context.Background(), cc)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for _, q := range []string{
		`SELECT a.rolpassword FROM pg_catalog.pg_authid a`,
		`SELECT p.object_id FROM pgshield.principals p`,
		`CREATE TABLE public.lookup_owned (x pg_catalog.int4)`,
	} {
		_, err := conn.Exec(context.Background(), q)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "42501" {
			t.Errorf("as %s, %q error = %v; want 42501", config.LookupRole, q, err)
		}
	}
}

// query runs q over a backend session with the simple protocol and
// returns the first column of each row, or the ErrorResponse.
func query(t *testing.T, b *pgbackend.Backend, q string) ([]string, *pgproto3.ErrorResponse) {
	t.Helper()
	_ = b.Conn.SetDeadline(time.Now().Add(20 * time.Second))
	defer b.Conn.SetDeadline(time.Time{})
	fe := pgproto3.NewFrontend(b.Conn, b.Conn)
	fe.Send(&pgproto3.Query{String: q})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var rows []string
	var er *pgproto3.ErrorResponse
	for {
		m, err := fe.Receive()
		if err != nil {
			t.Fatalf("reading the reply to %q: %v", q, err)
		}
		switch m := m.(type) {
		case *pgproto3.DataRow:
			rows = append(rows, string(m.Values[0]))
		case *pgproto3.ErrorResponse:
			c := *m
			er = &c
		case *pgproto3.ReadyForQuery:
			return rows, er
		}
	}
}

func connect(t *testing.T, srv *pgtest.Server, params map[string]string) *pgbackend.Backend {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b, err := srv.Dialer().Connect(ctx, params)
	if err != nil {
		t.Fatalf("Connect(%v) error = %v", params, err)
	}
	t.Cleanup(func() { b.Conn.Close() })
	return b
}

func TestRealConnect(t *testing.T) {
	srv := pgtest.Shared(t)
	pgbackend.CheckGoroutines(t)
	srv.CreateRole(t, "backend_alice", "", "LOGIN")
	b := connect(t, srv, map[string]string{"user": "backend_alice", "database": "postgres", "application_name": "pgtest"})
	params := map[string]string{}
	for _, p := range b.Params {
		params[p.Name] = p.Value
	}
	if !strings.HasPrefix(params["server_version"], "15.") || params["application_name"] != "pgtest" ||
		params["session_authorization"] != "backend_alice" {
		t.Errorf("Params = %v; want server_version 15.x, application_name pgtest, session_authorization backend_alice", params)
	}
	if b.PID == 0 || len(b.Key) != 4 || b.TxStatus != 'I' {
		t.Errorf("Backend = pid %d key %x status %q; want a pid, a 4-byte key, 'I'", b.PID, b.Key, b.TxStatus)
	}
	rows, er := query(t, b, `SELECT pg_catalog.concat_ws(' ', current_user, pg_catalog.pg_backend_pid())`)
	if want := "backend_alice " + strconv.FormatUint(uint64(b.PID), 10); er != nil || len(rows) != 1 || rows[0] != want {
		t.Errorf("query = %q, %v; want %q", rows, er, want)
	}
	fe := pgproto3.NewFrontend(b.Conn, b.Conn)
	fe.Send(&pgproto3.Terminate{})
	if err := fe.Flush(); err != nil {
		t.Errorf("sending Terminate: %v", err)
	}
}

// TestRealConnectRefused checks that PostgreSQL's own refusals come back
// as BackendError, which the gateway relays to the client.
func TestRealConnectRefused(t *testing.T) {
	srv := pgtest.Shared(t)
	pgbackend.CheckGoroutines(t)
	srv.CreateRole(t, "backend_bob", "", "LOGIN")
	for _, tt := range []struct {
		desc     string
		params   map[string]string
		wantCode string
	}{
		{"missing database", map[string]string{"user": "backend_bob", "database": "backend_nodb"}, "3D000"},
		{"unknown role", map[string]string{"user": "backend_ghost", "database": "postgres"}, "28000"},
		{"bad option", map[string]string{"user": "backend_bob", "database": "postgres", "options": "-c no_such_setting=1"}, "42704"},
	} {
		t.Run(tt.desc, func(t *testing.T) {
			b, err := srv.Dialer().Connect(context.Background(), tt.params)
			if err == nil {
				b.Conn.Close()
				t.Fatalf("Connect(%v) error = nil; want %s", tt.params, tt.wantCode)
			}
			var be *pgbackend.BackendError
			if !errors.As(err, &be) || be.Msg.Code != tt.wantCode || be.Msg.Severity != "FATAL" {
				t.Errorf("Connect(%v) error = %#v; want a BackendError FATAL %s", tt.params, err, tt.wantCode)
			}
		})
	}
}

// TestRealCancel cancels a pg_sleep with the backend's key; a wrong key
// cancels nothing.
func TestRealCancel(t *testing.T) {
	srv := pgtest.Shared(t)
	pgbackend.CheckGoroutines(t)
	srv.CreateRole(t, "backend_carol", "", "LOGIN")
	b := connect(t, srv, map[string]string{"user": "backend_carol", "database": "postgres"})
	super := srv.Conn(t)
	type result struct {
		rows []string
		er   *pgproto3.ErrorResponse
	}
	done := make(chan result, 1)
	go func() {
		// Not query: t.Fatal belongs to the test goroutine.
		_ = b.Conn.SetDeadline(time.Now().Add(30 * time.Second))
		fe := pgproto3.NewFrontend(b.Conn, b.Conn)
		fe.Send(&pgproto3.Query{String: `SELECT pg_catalog.pg_sleep(60)`})
		var r result
		if err := fe.Flush(); err != nil {
			r.er = &pgproto3.ErrorResponse{Message: err.Error()}
			done <- r
			return
		}
		for {
			m, err := fe.Receive()
			if err != nil {
				r.er = &pgproto3.ErrorResponse{Message: err.Error()}
				break
			}
			if e, ok := m.(*pgproto3.ErrorResponse); ok {
				c := *e
				r.er = &c
			}
			if _, ok := m.(*pgproto3.ReadyForQuery); ok {
				break
			}
		}
		done <- r
	}()
	active := func() bool {
		var n int
		err := super.QueryRow(context.Background(), `SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity s
		  WHERE s.pid OPERATOR(pg_catalog.=) $1 AND s.state OPERATOR(pg_catalog.=) 'active'`, int32(b.PID)).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		return n == 1
	}
	// A cancel that arrives before the query starts cancels nothing.
	deadline := time.Now().Add(10 * time.Second)
	for !active() {
		if time.Now().After(deadline) {
			t.Fatal("pg_sleep did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	d := srv.Dialer()
	wrong := append([]byte(nil), b.Key...)
	wrong[0] ^= 1
	if err := d.Cancel(context.Background(), b.PID, wrong); err != nil {
		t.Fatalf("Cancel(wrong key) error = %v", err)
	}
	time.Sleep(100 * time.Millisecond)
	if !active() {
		t.Fatal("a cancel with a wrong key ended the query")
	}
	start := time.Now()
	if err := d.Cancel(context.Background(), b.PID, b.Key); err != nil {
		t.Fatalf("Cancel() error = %v", err)
	}
	r := <-done
	if r.er == nil || r.er.Code != "57014" {
		t.Errorf("pg_sleep after Cancel ended with %+v; want ErrorResponse 57014", r.er)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("pg_sleep ended %s after Cancel; want at once", el)
	}
}
