package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshield/pgshield/internal/testutil/pgtest"
)

// TestRealClientIdentity logs in through the gateway and asks PostgreSQL
// who the client is: its address and port, its TLS session and its login
// method, in the places DBAs look; SET, RESET ALL and DISCARD ALL change
// none of it, and a client's own carrier is refused.
func TestRealClientIdentity(t *testing.T) {
	srv := pgtest.Shared(t)
	checkGoroutines(t)
	srv.CreateRole(t, "gw_dave", goodPassword, "LOGIN")
	env := startRealGateway(t, srv)
	for _, tt := range []struct{ binding, method string }{
		{"require", "scram-sha-256-plus"}, {"disable", "scram-sha-256"},
	} {
		t.Run(tt.method, func(t *testing.T) {
			conn, err := env.connectPgx(t, "gw_dave", goodPassword, "channel_binding="+tt.binding)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			_, lport, _ := net.SplitHostPort(conn.PgConn().Conn().LocalAddr().String())
			cs := conn.PgConn().Conn().(*tls.Conn).ConnectionState()
			check := func(when string) {
				t.Helper()
				var addr, inetAddr, version, cipher, method, identity, showSSL string
				var port, inetPort, bits int
				var ssl bool
				err := conn.QueryRow(ctx, `SELECT pg_catalog.host(a.client_addr), a.client_port,
				    pg_catalog.host(pg_catalog.inet_client_addr()), pg_catalog.inet_client_port(),
				    s.ssl, s.version, s.cipher, s.bits, c.method, c.identity, pg_catalog.current_setting('ssl')
				  FROM pg_catalog.pg_stat_activity a JOIN pg_catalog.pg_stat_ssl s USING (pid)
				  JOIN pgshield.sessions c USING (pid) WHERE a.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()`,
					pgx.QueryExecModeSimpleProtocol).
					Scan(&addr, &port, &inetAddr, &inetPort, &ssl, &version, &cipher, &bits, &method, &identity, &showSSL)
				if err != nil {
					t.Fatalf("%s: %v", when, err)
				}
				if addr != "127.0.0.1" || inetAddr != "127.0.0.1" || strconv.Itoa(port) != lport || strconv.Itoa(inetPort) != lport {
					t.Errorf("%s: client %s:%d, inet_client %s:%d; want 127.0.0.1:%s", when, addr, port, inetAddr, inetPort, lport)
				}
				// OpenSSL's names, as PostgreSQL's own TLS would report them.
				wantVersion := strings.Replace(tls.VersionName(cs.Version), "TLS 1.", "TLSv1.", 1)
				if !ssl || version != wantVersion || cipher != tls.CipherSuiteName(cs.CipherSuite) || bits == 0 {
					t.Errorf("%s: pg_stat_ssl = %v %s %s %d; want the client's %s %s", when, ssl, version, cipher, bits,
						wantVersion, tls.CipherSuiteName(cs.CipherSuite))
				}
				if method != tt.method || identity != "gw_dave" || showSSL != "off" {
					t.Errorf("%s: method %s identity %s, show ssl %s; want %s gw_dave, off (the server's own setting)",
						when, method, identity, showSSL, tt.method)
				}
			}
			check("after login")
			for _, stmt := range []string{"RESET ALL", "DISCARD ALL"} {
				if _, err := conn.Exec(ctx, stmt); err != nil {
					t.Fatalf("%s: %v", stmt, err)
				}
			}
			for _, stmt := range []string{"SET pgshield_guard.client = 'v=1&addr=6.6.6.6&port=6&method=token'",
				"SELECT pg_catalog.set_config('pgshield_guard.bind_client', 'v=1&seq=9&pid=1&addr=6.6.6.6&port=6&method=token&mac=00', false)"} {
				var pe *pgconn.PgError
				if _, err := conn.Exec(ctx, stmt); !errors.As(err, &pe) {
					t.Errorf("%s = %v; want an error", stmt, err)
				}
			}
			check("after RESET ALL, DISCARD ALL, SET")
		})
	}
	// The carrier from a client: refused by the gateway, 42501.
	_, err := env.connectPgx(t, "gw_dave", goodPassword, "options='-c pgshield_guard.client=v=1'")
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "42501" {
		t.Errorf("login with the carrier in options = %v; want 42501", err)
	}
}
