package pgbackend_test

import (
	"context"
	"crypto/tls"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgshield/pgshield/internal/pgbackend"
	"github.com/pgshield/pgshield/internal/testutil/pgtest"
)

// clientView is what PostgreSQL shows about the session itself.
const clientView = `SELECT pg_catalog.concat_ws(' ', a.client_addr, a.client_port, pg_catalog.inet_client_addr(),
       pg_catalog.inet_client_port(), s.ssl, s.version, s.cipher, s.bits, c.method, c.identity, c.principal_object_id, c.issuer)
  FROM pg_catalog.pg_stat_activity a JOIN pg_catalog.pg_stat_ssl s ON s.pid OPERATOR(pg_catalog.=) a.pid
  LEFT JOIN pgshield.sessions c ON c.pid OPERATOR(pg_catalog.=) a.pid
 WHERE a.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()`

// TestRealClientIdentity opens a backend as the gateway does (root, over
// the private socket, with SetClient), rebinds it with BindClient, and
// replays the rebind a tenant could read in pg_stat_activity: refused.
func TestRealClientIdentity(t *testing.T) {
	srv := pgtest.Shared(t)
	pgbackend.CheckGoroutines(t)
	srv.CreateRole(t, "backend_carol", "", "LOGIN")
	id := pgbackend.ClientIdentity{Addr: netip.MustParseAddrPort("10.77.9.2:41000"), Method: pgbackend.ClientMethodSCRAMPlus}
	id.SetTLS(&tls.ConnectionState{Version: tls.VersionTLS13, CipherSuite: tls.TLS_AES_256_GCM_SHA384})
	params := map[string]string{"user": "backend_carol", "database": "postgres"}
	if err := pgbackend.SetClient(params, id); err != nil {
		t.Fatal(err)
	}
	b := connect(t, srv, params)
	rows, er := query(t, b, clientView)
	if want := "10.77.9.2 41000 10.77.9.2 41000 t TLSv1.3 TLS_AES_256_GCM_SHA384 256 scram-sha-256-plus backend_carol"; er != nil || len(rows) != 1 || rows[0] != want {
		t.Fatalf("client view = %q, %v; want %q", rows, er, want)
	}

	next := pgbackend.ClientIdentity{Addr: netip.MustParseAddrPort("[fd77::5]:41001"), Method: pgbackend.ClientMethodToken,
		PrincipalObjectID: "oid-5", Issuer: "https://issuer.example/", TokenExpiry: time.Now().Add(time.Hour)}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := b.BindClient(ctx, next); err != nil {
		t.Fatalf("BindClient() = %v", err)
	}
	rows, er = query(t, b, clientView)
	if want := "fd77::5 41001 fd77::5 41001 f token oid-5 oid-5 https://issuer.example/"; er != nil || len(rows) != 1 || rows[0] != want {
		t.Fatalf("client view after BindClient = %q, %v; want %q", rows, er, want)
	}
	// A second rebind: the sequence number grows.
	if err := b.BindClient(ctx, id); err != nil {
		t.Fatalf("second BindClient() = %v", err)
	}
	// What another session of the role sees: the rebind statement, MAC and all.
	other := connect(t, srv, map[string]string{"user": "backend_carol", "database": "postgres"})
	seen, er := query(t, other, `SELECT a.query FROM pg_catalog.pg_stat_activity a WHERE a.pid OPERATOR(pg_catalog.=) `+
		pgtestPID(b))
	if er != nil || len(seen) != 1 || !strings.HasPrefix(seen[0], "SET pgshield_guard.bind_client") {
		t.Fatalf("pg_stat_activity.query = %q, %v; want the rebind", seen, er)
	}
	// Replayed in the same backend (by the tenant, later): refused.
	if _, er := query(t, b, seen[0]); er == nil || er.Code != "28000" || !strings.Contains(er.Message, "replayed") {
		t.Errorf("replayed rebind = %v; want 28000 replayed", er)
	}
	// In another backend (not the gateway's, no key): refused.
	if _, er := query(t, other, seen[0]); er == nil || er.Code != "42501" {
		t.Errorf("rebind in a session without a key = %v; want 42501", er)
	}
	rows, er = query(t, b, clientView)
	if want := "10.77.9.2 41000 10.77.9.2 41000 t TLSv1.3 TLS_AES_256_GCM_SHA384 256 scram-sha-256-plus backend_carol"; er != nil || len(rows) != 1 || rows[0] != want {
		t.Errorf("client view after the replays = %q, %v; want %q", rows, er, want)
	}
	// A backend opened without SetClient cannot be rebound.
	if err := other.BindClient(ctx, id); err != pgbackend.ErrNotBindable {
		t.Errorf("BindClient on a plain backend = %v; want ErrNotBindable", err)
	}
}

func pgtestPID(b *pgbackend.Backend) string { return strconv.FormatUint(uint64(b.PID), 10) }
