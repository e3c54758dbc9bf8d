package gateway

// An in-process gateway in front of a real PostgreSQL 15
// (internal/testutil/pgtest), shared by the package's tests and gated by
// PGSHIELD_E2E=1 like e2e/: pgshield's catalog answers the role lookups,
// the backend is the real private socket, the client is pgx over TLS.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/testutil/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// startRealGateway serves a gateway on loopback, wired as the daemon wires
// it, until the test ends; set overrides parameters.
func startRealGateway(t *testing.T, srv *pgtest.Server, set ...map[string]string) *gatewayEnv {
	t.Helper()
	var m map[string]string
	if len(set) > 0 {
		m = set[0]
	}
	return startRealGatewayWith(t, srv, m, nil)
}

// startRealGatewayWith is startRealGateway with mod applied to the Config.
func startRealGatewayWith(t *testing.T, srv *pgtest.Server, m map[string]string, mod func(*Config)) *gatewayEnv {
	t.Helper()
	p := newTestPKI(t)
	caFile := filepath.Join(t.TempDir(), "root.crt")
	if err := os.WriteFile(caFile, pemCerts(t, p.cert.TLS.Certificate[1]), 0o600); err != nil {
		t.Fatal(err)
	}
	params, err := config.ResolveParams(m)
	if err != nil {
		t.Fatal(err)
	}
	env := &gatewayEnv{caFile: caFile}
	cfg := Config{Cert: p.cert, Roles: srv.Catalog(t).Logins(), Backend: srv.Dialer(),
		IsReserved: srv.Cluster.Cfg.IsReserved, MockSecret: []byte("0123456789abcdef"), Params: params,
		AuthTimeout: 10 * time.Second, Audit: env.record}
	if mod != nil {
		mod(&cfg)
	}
	gw, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve() = %v; want nil after the context ends", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Serve() did not return after the context ended")
		}
	})
	env.addr, env.srv = ln.Addr().String(), gw
	return env
}

// connectPgx logs in through the gateway with pgx over verified TLS.
func (e *gatewayEnv) connectPgx(t *testing.T, user, password, extra string) (*pgx.Conn, error) {
	t.Helper()
	host, port, _ := net.SplitHostPort(e.addr)
	q := func(s string) string { return `'` + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + `'` }
	cc, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=postgres sslmode=verify-full sslrootcert=%s connect_timeout=10 %s",
		host, port, q(user), q(password), e.caFile, extra))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err == nil {
		t.Cleanup(func() { conn.Close(context.Background()) })
	}
	return conn, err
}

func TestRealLogin(t *testing.T) {
	srv := pgtest.Shared(t)
	checkGoroutines(t)
	srv.CreateRole(t, "gw_alice", goodPassword, "LOGIN")
	env := startRealGateway(t, srv)
	admin := srv.Cluster.Cfg.AdminUser
	for _, tt := range []struct {
		desc, user, password, extra, method string
	}{
		{"SCRAM-SHA-256-PLUS", "gw_alice", goodPassword, "channel_binding=require", "SCRAM-SHA-256-PLUS"},
		{"SCRAM-SHA-256", "gw_alice", goodPassword, "channel_binding=disable", "SCRAM-SHA-256"},
		// Bootstrap's verifier, as init makes it.
		{"administrator", admin, srv.AdminPassword, "channel_binding=require", "SCRAM-SHA-256-PLUS"},
	} {
		t.Run(tt.desc, func(t *testing.T) {
			conn, err := env.connectPgx(t, tt.user, tt.password, tt.extra+" application_name=gwtest")
			if err != nil {
				t.Fatalf("Connect(%s) error = %v; want a session", tt.user, err)
			}
			if _, ok := conn.PgConn().Conn().(*tls.Conn); !ok {
				t.Errorf("client connection is %T; want TLS", conn.PgConn().Conn())
			}
			if v := conn.PgConn().ParameterStatus("server_version"); !strings.HasPrefix(v, "15.") {
				t.Errorf("server_version = %q; want PostgreSQL's 15.x", v)
			}
			var user, app, echo string
			var pid uint32
			err = conn.QueryRow(context.Background(), `SELECT current_user, pg_catalog.pg_backend_pid(),
			    pg_catalog.current_setting('application_name'), $1::pg_catalog.text`, "relayed").Scan(&user, &pid, &app, &echo)
			if err != nil || user != tt.user || app != "gwtest" || echo != "relayed" {
				t.Errorf("query = %q %q %q, %v; want %q gwtest relayed", user, app, echo, err, tt.user)
			}
			if got := conn.PgConn().PID(); got != pid {
				t.Errorf("client's PID = %d; want the backend's %d", got, pid)
			}
			starts := env.awaitAudited(t, "session.start")
			if len(starts) == 0 || starts[len(starts)-1].User != tt.user || starts[len(starts)-1].Fields["method"] != tt.method {
				t.Errorf("session.start records = %+v; want the last for %s by %s", starts, tt.user, tt.method)
			}
		})
	}
}

// TestRealLoginRefused checks each refusal against the real catalog: the
// client sees one 28P01, the audit record says why.
func TestRealLoginRefused(t *testing.T) {
	srv := pgtest.Shared(t)
	checkGoroutines(t)
	long := "gw_" + strings.Repeat("l", 60) // 63 bytes, PostgreSQL's longest name
	srv.CreateRole(t, "gw_bob", goodPassword, "LOGIN")
	srv.CreateRole(t, "gw_nologin", goodPassword, "NOLOGIN")
	srv.CreateRole(t, "gw_expired", goodPassword, "LOGIN VALID UNTIL '2001-01-01'")
	srv.CreateRole(t, "gw_never", goodPassword, "LOGIN VALID UNTIL '-infinity'")
	srv.CreateRole(t, "gw_super", goodPassword, "LOGIN SUPERUSER")
	srv.CreateRole(t, long, goodPassword, "LOGIN")
	env := startRealGateway(t, srv)
	for _, tt := range []struct {
		desc, user, password, why string
	}{
		{"wrong password", "gw_bob", "wrong", "wrong password"},
		{"unknown role", "gw_ghost", goodPassword, "role does not exist"},
		{"bootstrap superuser", config.SuperuserRole, goodPassword, "reserved role"},
		{"service role", srv.Cluster.Cfg.ServiceRole, goodPassword, "reserved role"},
		{"lookup role", config.LookupRole, goodPassword, "reserved role"},
		{"NOLOGIN", "gw_nologin", goodPassword, "role is not permitted to log in"},
		{"expired", "gw_expired", goodPassword, "password has expired"},
		{"VALID UNTIL -infinity", "gw_never", goodPassword, "password has expired"},
		{"superuser", "gw_super", goodPassword, "superuser roles may not log in through the gateway"},
		// PostgreSQL would cut the name to 63 bytes and log in as long.
		{"64-byte name", long + "x", goodPassword, "role does not exist"},
	} {
		t.Run(tt.desc, func(t *testing.T) {
			conn, err := env.connectPgx(t, tt.user, tt.password, "")
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "28P01" {
				if conn != nil {
					t.Errorf("logged in as %s", tt.user)
				}
				t.Fatalf("Connect(%s) error = %v; want 28P01", tt.user, err)
			}
			fails := env.audited("auth.failure")
			if len(fails) == 0 || fails[len(fails)-1].User != tt.user || fails[len(fails)-1].Reason != tt.why {
				t.Errorf("auth.failure records = %+v; want the last for %s because %q", fails, tt.user, tt.why)
			}
		})
	}
	t.Run("missing database", func(t *testing.T) {
		_, err := env.connectPgx(t, "gw_bob", goodPassword, "dbname=gw_nodb")
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "3D000" || !strings.Contains(pe.Message, "gw_nodb") {
			t.Errorf("Connect(dbname=gw_nodb) error = %v; want PostgreSQL's 3D000 relayed", err)
		}
	})
}

// TestRealCancel runs pg_sleep in two sessions and cancels one through the
// gateway: that one ends with 57014, the other keeps running.
func TestRealCancel(t *testing.T) {
	srv := pgtest.Shared(t)
	checkGoroutines(t)
	srv.CreateRole(t, "gw_carol", goodPassword, "LOGIN")
	env := startRealGateway(t, srv)
	super := srv.Conn(t)
	var conns [2]*pgx.Conn
	var ended [2]chan error
	for i := range conns {
		c, err := env.connectPgx(t, "gw_carol", goodPassword, "")
		if err != nil {
			t.Fatal(err)
		}
		conns[i], ended[i] = c, make(chan error, 1)
		go func() {
			_, err := c.Exec(context.Background(), `SELECT pg_catalog.pg_sleep(60)`)
			ended[i] <- err
		}()
	}
	t.Cleanup(func() {
		// Whatever failed below, end the sleeps before the connections close.
		for i, c := range conns {
			_ = c.PgConn().CancelRequest(context.Background())
			select {
			case <-ended[i]:
			case <-time.After(10 * time.Second):
				t.Errorf("session %d's pg_sleep did not end", i)
			}
		}
	})
	sleeping := func(c *pgx.Conn) bool {
		var n int
		err := super.QueryRow(context.Background(), `SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity s
		  WHERE s.pid OPERATOR(pg_catalog.=) $1 AND s.state OPERATOR(pg_catalog.=) 'active'`, int32(c.PgConn().PID())).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		return n == 1
	}
	deadline := time.Now().Add(10 * time.Second)
	for !sleeping(conns[0]) || !sleeping(conns[1]) {
		if time.Now().After(deadline) {
			t.Fatal("pg_sleep did not start in both sessions")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := conns[1].PgConn().CancelRequest(context.Background()); err != nil {
		t.Fatalf("CancelRequest() error = %v", err)
	}
	select {
	case err := <-ended[1]:
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "57014" {
			t.Errorf("cancelled session's query error = %v; want 57014", err)
		}
		ended[1] <- err // for the cleanup
	case <-time.After(10 * time.Second):
		t.Fatal("the cancelled session's pg_sleep did not end")
	}
	if !sleeping(conns[0]) {
		t.Error("the other session's pg_sleep ended too; want it running")
	}
}

// TestRealBackendTerminated ends a session's backend from another session:
// the client sees PostgreSQL's error and the gateway ends the session.
func TestRealBackendTerminated(t *testing.T) {
	srv := pgtest.Shared(t)
	checkGoroutines(t)
	srv.CreateRole(t, "gw_dave", goodPassword, "LOGIN")
	env := startRealGateway(t, srv)
	conn, err := env.connectPgx(t, "gw_dave", goodPassword, "")
	if err != nil {
		t.Fatal(err)
	}
	var ok bool
	// The timeout waits for the backend to have exited.
	err = srv.Conn(t).QueryRow(context.Background(), `SELECT pg_catalog.pg_terminate_backend($1, 10000)`,
		int32(conn.PgConn().PID())).Scan(&ok)
	if err != nil || !ok {
		t.Fatalf("pg_terminate_backend() = %v, %v; want true", ok, err)
	}
	_, err = conn.Exec(context.Background(), `SELECT 1`)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "57P01" {
		t.Errorf("query after pg_terminate_backend error = %v; want PostgreSQL's 57P01", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(env.audited("session.end")) == 0 || env.srv.Stats().Active != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("gateway still has %d connections, session.end records %v; want the session ended",
				env.srv.Stats().Active, env.audited("session.end"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
