package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/auth/scram"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/pgbackend"
	"github.com/pgshield/pgshield/internal/wire"
)

func TestBackendParams(t *testing.T) {
	tests := []struct {
		name   string
		params []wire.Param
		want   map[string]string
	}{
		{name: "database defaults to user", params: []wire.Param{{Key: "user", Value: "alice"}},
			want: map[string]string{"user": "alice", "database": "alice"}},
		{name: "explicit database", params: []wire.Param{{Key: "user", Value: "alice"}, {Key: "database", Value: "shop"},
			{Key: "application_name", Value: "psql"}},
			want: map[string]string{"user": "alice", "database": "shop", "application_name": "psql"}},
		{name: "replication=off is not passed on", params: []wire.Param{{Key: "user", Value: "a"},
			{Key: "replication", Value: "off"}}, want: map[string]string{"user": "a", "database": "a"}},
		{name: "options passed on", params: []wire.Param{{Key: "user", Value: "a"},
			{Key: "options", Value: "-c work_mem=64MB"}},
			want: map[string]string{"user": "a", "database": "a", "options": "-c work_mem=64MB"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := backendParams(&wire.Startup{Params: tt.params})
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("backendParams(%v) = %v; want %v", tt.params, got, tt.want)
			}
		})
	}
}

func TestRemoteAddr(t *testing.T) {
	tests := []struct {
		name string
		addr net.Addr
		want string
	}{
		{name: "IPv4", addr: &net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 5432}, want: "10.1.2.3"},
		{name: "IPv6", addr: &net.TCPAddr{IP: net.ParseIP("::1"), Port: 5432}, want: "::1"},
		{name: "mapped IPv4", addr: &net.TCPAddr{IP: net.ParseIP("::ffff:10.1.2.3"), Port: 5432}, want: "10.1.2.3"},
		{name: "not an IP", addr: pipeAddr{}, want: "invalid IP"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := remoteAddr(addrConn{remote: tt.addr}).String(); got != tt.want {
				t.Errorf("remoteAddr(%v) = %q; want %q", tt.addr, got, tt.want)
			}
		})
	}
}

// addrConn is a net.Conn that only reports a remote address.
type addrConn struct {
	net.Conn
	remote net.Addr
}

func (c addrConn) RemoteAddr() net.Addr { return c.remote }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

func TestPutUint32(t *testing.T) {
	var b [4]byte
	putUint32(b[:], 0xdeadbeef)
	if b != [4]byte{0xde, 0xad, 0xbe, 0xef} {
		t.Errorf("putUint32(0xdeadbeef) = %x; want deadbeef", b)
	}
}

func TestCancelRegistry(t *testing.T) {
	var r cancelRegistry
	b1 := &pgbackend.Backend{PID: 10}
	b2 := &pgbackend.Backend{PID: 10} // same PID, another session's key
	k1, _, err := r.register(b1)
	if err != nil {
		t.Fatal(err)
	}
	k2, t2, err := r.register(b2)
	if err != nil {
		t.Fatal(err)
	}
	if k1.pid != 10 || k1 == k2 {
		t.Fatalf("register() keys %+v and %+v; want PID 10 and distinct random secrets", k1, k2)
	}
	if got, ok := r.lookup(k1); !ok || got.b != b1 {
		t.Errorf("lookup(k1) = %p, %v; want b1", got, ok)
	}
	wrong := k1
	wrong.key[0] ^= 1
	if _, ok := r.lookup(wrong); ok {
		t.Errorf("lookup with a wrong secret found a backend")
	}
	r.remove(k1)
	if _, ok := r.lookup(k1); ok {
		t.Errorf("lookup(k1) after remove found a backend")
	}
	if got, ok := r.lookup(k2); !ok || got.b != b2 {
		t.Errorf("lookup(k2) = %p, %v after removing k1; want b2", got, ok)
	}
	// With pooling the key follows the backend serving the client.
	b3 := &pgbackend.Backend{PID: 11}
	t2.set(b3)
	if got, ok := r.lookup(k2); !ok || got.b != b3 {
		t.Errorf("lookup(k2) after set(b3) = %v; want b3", got.b)
	}
	r.remove(k2)
	if t2.b != nil {
		t.Errorf("target still points at a backend after remove")
	}
}

func TestCheckAndSetDefaults(t *testing.T) {
	p := newTestPKI(t)
	base := func() Config {
		return Config{Cert: p.cert, Roles: fakeRoles{}, Backend: &fakeBackend{}, MockSecret: make([]byte, 16)}
	}
	for _, tt := range []struct {
		name   string
		mutate func(*Config)
	}{
		{name: "no cert", mutate: func(c *Config) { c.Cert = nil }},
		{name: "no roles", mutate: func(c *Config) { c.Roles = nil }},
		{name: "no backend", mutate: func(c *Config) { c.Backend = nil }},
		{name: "short mock secret", mutate: func(c *Config) { c.MockSecret = make([]byte, 15) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.mutate(&c)
			if err := c.CheckAndSetDefaults(); err == nil {
				t.Errorf("CheckAndSetDefaults() error = nil; want an error")
			}
		})
	}
	c := base()
	if err := c.CheckAndSetDefaults(); err != nil {
		t.Fatal(err)
	}
	if c.AuthTimeout != time.Minute || c.DialTimeout != 30*time.Second || c.MaxConnections != 0 || c.Params.MaxClientConnections != 1000 ||
		c.Log == nil || c.Now == nil || c.IsReserved == nil || c.IsReserved("postgres") {
		t.Errorf("CheckAndSetDefaults() = %+v; want the documented defaults", c)
	}
	if !c.Params.RequireSecureTransport || c.Params.MinTLS != tls.VersionTLS12 {
		t.Errorf("CheckAndSetDefaults() params = %+v; want require_secure_transport on, TLS 1.2 minimum", c.Params)
	}
	c = base()
	c.AuthTimeout, c.MaxConnections = time.Second, 3
	c.Params = config.Params{MinTLS: tls.VersionTLS13}
	if err := c.CheckAndSetDefaults(); err != nil {
		t.Fatal(err)
	}
	if c.AuthTimeout != time.Second || c.MaxConnections != 3 || c.Params.MinTLS != tls.VersionTLS13 {
		t.Errorf("CheckAndSetDefaults() overwrote explicit settings: %+v", c)
	}
}

type fakeRoles map[string]pgbackend.Role

func (f fakeRoles) LookupRole(_ context.Context, name string) (pgbackend.Role, error) {
	if name == "broken" {
		return pgbackend.Role{}, errors.New("catalog unavailable")
	}
	r, ok := f[name]
	if !ok {
		return pgbackend.Role{Name: name}, nil
	}
	r.Name, r.Exists = name, true
	return r, nil
}

const goodPassword = "correct horse battery staple"

func verifier(t *testing.T, password string) string {
	t.Helper()
	v, err := scram.Verifier("", password, []byte("0123456789abcdef"), scram.DefaultIterations)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestScramExchange(t *testing.T) {
	p := newTestPKI(t)
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	past, future := now.Add(-time.Second), now.Add(time.Hour)
	good := verifier(t, goodPassword)
	roles := fakeRoles{
		"alice":   {CanLogin: true, Password: good},
		"nologin": {CanLogin: false, Password: good},
		"super":   {CanLogin: true, Superuser: true, Password: good},
		"expired": {CanLogin: true, Password: good, ValidUntil: &past},
		"exactly": {CanLogin: true, Password: good, ValidUntil: &now},
		"future":  {CanLogin: true, Password: good, ValidUntil: &future},
		"md5":     {CanLogin: true, Password: "md5" + strings.Repeat("ab", 16)},
		"nopass":  {CanLogin: true},
		"svc":     {CanLogin: true, Password: good},
	}
	s, err := New(Config{Cert: p.cert, Roles: roles, Backend: &fakeBackend{}, MockSecret: []byte("0123456789abcdef"),
		IsReserved: func(r string) bool { return r == "svc" }, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	wantCreds, err := scram.ParseVerifier(good)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		user      string
		wantValid bool
		wantWhy   string
	}{
		{user: "alice", wantValid: true},
		{user: "future", wantValid: true},
		{user: "ghost", wantWhy: "role does not exist"},
		{user: "svc", wantWhy: "reserved role"},
		{user: "super", wantWhy: "superuser roles may not log in through the gateway"},
		{user: "nologin", wantWhy: "role is not permitted to log in"},
		{user: "expired", wantWhy: "password has expired"},
		{user: "exactly", wantWhy: "password has expired"},
		{user: "md5", wantWhy: "role has no SCRAM-SHA-256 password"},
		{user: "nopass", wantWhy: "role has no SCRAM-SHA-256 password"},
	}
	for _, tt := range tests {
		t.Run(tt.user, func(t *testing.T) {
			for _, cs := range []*tls.ConnectionState{nil, {}} {
				role, err := roles.LookupRole(context.Background(), tt.user)
				if err != nil {
					t.Fatal(err)
				}
				x := s.scramExchange(role, cs, &runtime{params: config.Params{PasswordAuth: true}, cert: s.cfg.Cert})
				if x.User != tt.user || x.Valid != tt.wantValid || x.Why != tt.wantWhy {
					t.Errorf("scramExchange(%q) = user %q valid %v why %q; want valid %v why %q", tt.user, x.User,
						x.Valid, x.Why, tt.wantValid, tt.wantWhy)
				}
				if (cs != nil) != (x.Binding != nil) || x.Binding != nil && !x.Binding.Matches(p.cert.EndPoint) {
					t.Errorf("scramExchange(%q, tls %v) binding = %v; want the certificate's end point only over TLS",
						tt.user, cs != nil, x.Binding)
				}
				want := wantCreds
				if !tt.wantValid {
					want = scram.MockCredentials(s.cfg.MockSecret, tt.user)
				}
				if x.Creds.Salt != want.Salt || !bytes.Equal(x.Creds.StoredKey, want.StoredKey) || x.Creds.Iters != want.Iters {
					t.Errorf("scramExchange(%q) credentials are not the %s ones", tt.user,
						map[bool]string{true: "role's", false: "mock"}[tt.wantValid])
				}
			}
		})
	}
	// pgshield.password_auth = off: the same mock exchange, its own reason.
	alice, _ := roles.LookupRole(context.Background(), "alice")
	if x := s.scramExchange(alice, nil, &runtime{cert: s.cfg.Cert}); x.Valid || !strings.Contains(x.Why, "password_auth = off") ||
		x.Creds.Salt != scram.MockCredentials(s.cfg.MockSecret, "alice").Salt {
		t.Errorf("scramExchange(alice, password auth off) = valid %v why %q; want the mock exchange, refused", x.Valid, x.Why)
	}
	// A token principal (even one with a password set behind pgshield's
	// back) only ever gets the mock exchange; the reason says why it got
	// SCRAM at all.
	principal := pgbackend.Role{Name: "tok", Exists: true, CanLogin: true, Password: good,
		Principal: &pgbackend.TokenPrincipal{ObjectID: "oid-tok", Kind: pgbackend.PrincipalUser}}
	withIssuer := config.Params{PasswordAuth: true, OIDC: config.OIDCParams{Issuer: "https://issuer.example"}}
	for _, tt := range []struct {
		name string
		cs   *tls.ConnectionState
		p    config.Params
		why  string
	}{
		{name: "plaintext", p: withIssuer, why: "over TLS only"},
		{name: "no issuer", cs: &tls.ConnectionState{}, p: config.Params{PasswordAuth: true}, why: "oidc_issuer is not set"},
		{name: "plain name", cs: &tls.ConnectionState{}, p: withIssuer, why: "plain lower-case name"},
	} {
		if x := s.scramExchange(principal, tt.cs, &runtime{params: tt.p, cert: s.cfg.Cert}); x.Valid || !strings.Contains(x.Why, tt.why) ||
			x.Creds.Salt != scram.MockCredentials(s.cfg.MockSecret, "tok").Salt {
			t.Errorf("scramExchange(principal, %s) = valid %v why %q; want the mock exchange, refused with %q", tt.name, x.Valid, x.Why, tt.why)
		}
	}
}

// fakeBackend stands in for PostgreSQL behind the gateway: each session is a
// net.Pipe whose far end answers a Query with one row echoing the query text.
type fakeBackend struct {
	fail error
	wg   sync.WaitGroup
	mu   sync.Mutex
	got  []map[string]string
	// cancels records Cancel calls as "pid/key".
	cancels []string
}

func (f *fakeBackend) Connect(_ context.Context, params map[string]string) (*pgbackend.Backend, error) {
	f.mu.Lock()
	f.got = append(f.got, params)
	f.mu.Unlock()
	if f.fail != nil {
		return nil, f.fail
	}
	gw, pg := net.Pipe()
	f.wg.Add(1)
	go f.serve(pg)
	return &pgbackend.Backend{Conn: gw, PID: 777, Key: []byte{1, 2, 3, 4},
		Params:   []*pgproto3.ParameterStatus{{Name: "server_version", Value: "15.99"}},
		TxStatus: 'I'}, nil
}

func (f *fakeBackend) serve(c net.Conn) {
	defer f.wg.Done()
	defer c.Close()
	be := pgproto3.NewBackend(c, c)
	for {
		m, err := be.Receive()
		if err != nil {
			return
		}
		switch m := m.(type) {
		case *pgproto3.Query:
			be.Send(&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("q"), DataTypeOID: 25,
				DataTypeSize: -1, TypeModifier: -1}}})
			row := m.String
			if strings.Contains(row, "pgshield_guard.handover_check") {
				// pgshield_guard's answer for a role that may connect.
				row = "v4 t f t t f " + strings.Repeat("0", 64) + " fake"
			}
			be.Send(&pgproto3.DataRow{Values: [][]byte{[]byte(row)}})
			be.Send(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")})
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
			if err := be.Flush(); err != nil {
				return
			}
		case *pgproto3.Terminate:
			return
		}
	}
}

func (f *fakeBackend) Cancel(_ context.Context, pid uint32, key []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cancels = append(f.cancels, fmt.Sprintf("%d/%x", pid, key))
	return nil
}

type gatewayEnv struct {
	addr    string
	caFile  string
	backend *fakeBackend
	srv     *Server
	mu      sync.Mutex
	events  []audit.Event
}

// startGateway serves a gateway on loopback until the test ends.
func startGateway(t *testing.T, params map[string]string, backend *fakeBackend, maxConns int) *gatewayEnv {
	t.Helper()
	return startGatewayWith(t, params, backend, maxConns, nil)
}

// startGatewayWith is startGateway with mod applied to the Config.
func startGatewayWith(t *testing.T, params map[string]string, backend *fakeBackend, maxConns int, mod func(*Config)) *gatewayEnv {
	t.Helper()
	dir := t.TempDir()
	pth := func(n string) string { return filepath.Join(dir, n) }
	p := newTestPKI(t)
	// newTestPKI keeps its CA in memory; write it out for pgconn's sslrootcert.
	caFile := pth("root.crt")
	if err := os.WriteFile(caFile, pemCerts(t, p.cert.TLS.Certificate[1]), 0o600); err != nil {
		t.Fatal(err)
	}
	resolved, err := config.ResolveParams(params)
	if err != nil {
		t.Fatal(err)
	}
	roles := fakeRoles{
		"alice": {CanLogin: true, Password: verifier(t, goodPassword)},
		"md5":   {CanLogin: true, Password: "md5" + strings.Repeat("ab", 16)},
		// A password role whose name SQL must quote.
		"App-User": {CanLogin: true, Password: verifier(t, goodPassword)},
		// Token principals (no password).
		"alice@contoso.com":  {CanLogin: true, Principal: &pgbackend.TokenPrincipal{ObjectID: "oid-alice", Kind: "user"}},
		"bob@contoso.com":    {CanLogin: true, Principal: &pgbackend.TokenPrincipal{ObjectID: "oid-bob", Kind: "user"}},
		"Contoso DBAs":       {CanLogin: true, Principal: &pgbackend.TokenPrincipal{ObjectID: "oid-group-dbas", Kind: "group"}},
		"locked@contoso.com": {CanLogin: false, Principal: &pgbackend.TokenPrincipal{ObjectID: "oid-locked", Kind: "user"}},
	}
	env := &gatewayEnv{caFile: caFile, backend: backend}
	cfg := Config{Cert: p.cert, Roles: roles, Backend: backend, MockSecret: []byte("0123456789abcdef"),
		Params: resolved, AuthTimeout: 5 * time.Second, MaxConnections: maxConns, Audit: env.record}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve() = %v; want nil after the context ends", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Serve() did not return after the context ended")
		}
		backend.wg.Wait()
	})
	env.addr, env.srv = ln.Addr().String(), srv
	return env
}

func (e *gatewayEnv) record(ev audit.Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.events = append(e.events, ev)
}

// awaitAudited waits up to 5 s for audit events of type typ and returns
// them: the gateway audits a session's start only after the client has its
// ReadyForQuery, so the client can get there first.
func (e *gatewayEnv) awaitAudited(t *testing.T, typ string) []audit.Event {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if evs := e.audited(typ); len(evs) > 0 || time.Now().After(deadline) {
			return evs
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// audited returns the audit events of type typ so far.
func (e *gatewayEnv) audited(typ string) []audit.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []audit.Event
	for _, ev := range e.events {
		if ev.Type == typ {
			out = append(out, ev)
		}
	}
	return out
}

func (e *gatewayEnv) connString(user, password, extra string) string {
	host, port, _ := net.SplitHostPort(e.addr)
	return fmt.Sprintf("host=%s port=%s user='%s' password='%s' dbname=shop sslrootcert=%s connect_timeout=5 %s",
		host, port, user, password, e.caFile, extra)
}

func pemCerts(t *testing.T, der []byte) []byte {
	t.Helper()
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func TestServeWithPgconn(t *testing.T) {
	checkGoroutines(t)
	tests := []struct {
		name     string
		params   map[string]string
		user     string
		password string
		extra    string
		backend  error
		wantCode string // SQLSTATE; "" means a working session
		wantTLS  bool
	}{
		{name: "TLS with channel binding required", user: "alice", password: goodPassword,
			extra: "sslmode=verify-full channel_binding=require", wantTLS: true},
		{name: "direct TLS", user: "alice", password: goodPassword,
			extra: "sslmode=verify-full sslnegotiation=direct channel_binding=require", wantTLS: true},
		{name: "TLS without channel binding", user: "alice", password: goodPassword,
			extra: "sslmode=verify-full channel_binding=disable", wantTLS: true},
		{name: "TLS 1.3 minimum", params: map[string]string{"ssl_min_protocol_version": "TLSv1.3"}, user: "alice",
			password: goodPassword, extra: "sslmode=verify-full", wantTLS: true},
		{name: "wrong password", user: "alice", password: "wrong", extra: "sslmode=verify-full", wantCode: "28P01"},
		{name: "unknown role", user: "ghost", password: goodPassword, extra: "sslmode=verify-full", wantCode: "28P01"},
		{name: "md5 role", user: "md5", password: goodPassword, extra: "sslmode=verify-full", wantCode: "28P01"},
		{name: "plaintext refused", user: "alice", password: goodPassword, extra: "sslmode=disable",
			wantCode: "28000"},
		{name: "plaintext allowed when require_secure_transport is off",
			params: map[string]string{"require_secure_transport": "off"}, user: "alice", password: goodPassword,
			extra: "sslmode=disable"},
		{name: "backend refuses the session", user: "alice", password: goodPassword, extra: "sslmode=verify-full",
			backend: &pgbackend.BackendError{Msg: &pgproto3.ErrorResponse{Severity: "FATAL", Code: "3D000",
				Message: `database "shop" does not exist`}}, wantCode: "3D000"},
		{name: "backend unavailable", user: "alice", password: goodPassword, extra: "sslmode=verify-full",
			backend: errors.New("dial unix: no such file"), wantCode: "57P03"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := startGateway(t, tt.params, &fakeBackend{fail: tt.backend}, 0)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			conn, err := pgconn.Connect(ctx, env.connString(tt.user, tt.password, tt.extra))
			if tt.wantCode != "" {
				var pe *pgconn.PgError
				if !errors.As(err, &pe) || pe.Code != tt.wantCode {
					t.Fatalf("pgconn.Connect() error = %v; want SQLSTATE %s", err, tt.wantCode)
				}
				if conn != nil {
					conn.Close(ctx)
				}
				return
			}
			if err != nil {
				t.Fatalf("pgconn.Connect() error = %v; want a session", err)
			}
			defer conn.Close(ctx)
			if got := conn.ParameterStatus("server_version"); got != "15.99" {
				t.Errorf("server_version = %q; want the backend's 15.99", got)
			}
			if pid := conn.PID(); pid != 777 {
				t.Errorf("backend PID = %d; want 777", pid)
			}
			if key := conn.SecretKey(); bytes.Equal(key, []byte{1, 2, 3, 4}) {
				t.Errorf("client received the backend's own cancel key")
			}
			if _, isTLS := conn.Conn().(*tls.Conn); isTLS != tt.wantTLS {
				t.Errorf("client connection TLS = %v; want %v", isTLS, tt.wantTLS)
			}
			res, err := conn.Exec(ctx, "select 'relayed'").ReadAll()
			if err != nil || len(res) != 1 || len(res[0].Rows) != 1 || string(res[0].Rows[0][0]) != "select 'relayed'" {
				t.Fatalf("Exec() = %v, %v; want the fake backend's echo", res, err)
			}
			env.backend.mu.Lock()
			got := env.backend.got
			env.backend.mu.Unlock()
			if len(got) != 1 || got[0]["user"] != tt.user || got[0]["database"] != "shop" {
				t.Errorf("backend Connect params = %v; want user %s database shop", got, tt.user)
			}
			if err := conn.CancelRequest(ctx); err != nil {
				t.Fatalf("CancelRequest() error = %v", err)
			}
			deadline := time.Now().Add(3 * time.Second)
			for {
				env.backend.mu.Lock()
				cancels := fmt.Sprint(env.backend.cancels)
				env.backend.mu.Unlock()
				if cancels == "[777/01020304]" {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("backend cancels = %s; want the backend's own PID and key once", cancels)
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

// TestServeTooManyConnections checks that a connection over MaxConnections
// is told so inside TLS when it asked for TLS (never in plaintext before
// it, which libpq ≥ 17.1 discards: CVE-2024-10977), and in plaintext only
// to a client that never asked for TLS.
func TestServeTooManyConnections(t *testing.T) {
	checkGoroutines(t)
	env := startGateway(t, nil, &fakeBackend{}, 1)
	first, err := net.Dial("tcp", env.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	deadline := time.Now().Add(3 * time.Second)
	for env.srv.Stats().Active != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("Stats() = %+v; want the first connection tracked", env.srv.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Run("SSLRequest: answered after TLS", func(t *testing.T) {
		second, err := net.Dial("tcp", env.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer second.Close()
		_ = second.SetDeadline(time.Now().Add(5 * time.Second))
		write(t, second, sslRequest())
		if b := readByte(t, second); b != 'S' {
			t.Fatalf("answer to SSLRequest over capacity = %q; want 'S' (no plaintext error before TLS)", b)
		}
		tc := tls.Client(second, &tls.Config{InsecureSkipVerify: true})
		write(t, tc, startupMessage(t, map[string]string{"user": "alice", "database": "shop"}))
		m, err := pgproto3.NewFrontend(tc, tc).Receive()
		er, ok := m.(*pgproto3.ErrorResponse)
		if err != nil || !ok || er.Code != "53300" {
			t.Fatalf("over capacity, inside TLS: got %#v, %v; want ErrorResponse 53300", m, err)
		}
	})
	t.Run("pgconn shows it", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := pgconn.Connect(ctx, env.connString("alice", goodPassword, "sslmode=verify-full"))
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "53300" || pe.Message != "sorry, too many clients already" {
			t.Fatalf("pgconn.Connect() over capacity = %v; want 53300 sorry, too many clients already", err)
		}
	})
	t.Run("plaintext client: plaintext answer", func(t *testing.T) {
		second, err := net.Dial("tcp", env.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer second.Close()
		_ = second.SetDeadline(time.Now().Add(5 * time.Second))
		write(t, second, startupMessage(t, map[string]string{"user": "alice"}))
		m, err := pgproto3.NewFrontend(second, second).Receive()
		if er, ok := m.(*pgproto3.ErrorResponse); err != nil || !ok || er.Code != "53300" {
			t.Fatalf("plaintext startup over capacity: got %#v, %v; want ErrorResponse 53300", m, err)
		}
	})
}

// TestMaxClientConnectionsParameter checks that the cap on client
// connections is pgshield.max_client_connections when the Config sets
// none, and follows a live parameter change.
func TestMaxClientConnectionsParameter(t *testing.T) {
	checkGoroutines(t)
	env := startGateway(t, map[string]string{"pgshield.max_client_connections": "2"}, &fakeBackend{}, 0)
	hold := func(n int64) net.Conn {
		c, err := net.Dial("tcp", env.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		for deadline := time.Now().Add(3 * time.Second); env.srv.Stats().Active != n; {
			if time.Now().After(deadline) {
				t.Fatalf("Stats() = %+v; want %d connections tracked", env.srv.Stats(), n)
			}
			time.Sleep(5 * time.Millisecond)
		}
		return c
	}
	connect := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := pgconn.Connect(ctx, env.connString("alice", goodPassword, "sslmode=verify-full"))
		if err == nil {
			c.Close(ctx)
		}
		return err
	}
	hold(1)
	if err := connect(); err != nil {
		t.Fatalf("second connection under a cap of 2 = %v; want a session", err)
	}
	hold(2)
	var pe *pgconn.PgError
	if err := connect(); !errors.As(err, &pe) || pe.Code != "53300" {
		t.Fatalf("third connection under a cap of 2 = %v; want 53300", err)
	}
	resolved, err := config.ResolveParams(map[string]string{"pgshield.max_client_connections": "3"})
	if err != nil {
		t.Fatal(err)
	}
	env.srv.SetParams(resolved)
	// The refused connection is untracked by its own goroutine after the
	// client has its error: wait for it, or it still takes the third place.
	for deadline := time.Now().Add(3 * time.Second); env.srv.Stats().Active != 2; {
		if time.Now().After(deadline) {
			t.Fatalf("Stats() = %+v; want the 2 held connections tracked", env.srv.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := connect(); err != nil {
		t.Fatalf("third connection after raising the cap to 3 = %v; want a session", err)
	}
}

// TestServeUnknownCancelKey checks that a CancelRequest with a guessed key
// reaches no backend.
func TestServeUnknownCancelKey(t *testing.T) {
	checkGoroutines(t)
	env := startGateway(t, nil, &fakeBackend{}, 0)
	c, err := net.Dial("tcp", env.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b, _ := (&pgproto3.CancelRequest{ProcessID: 777, SecretKey: []byte{1, 2, 3, 4}}).Encode(nil)
	write(t, c, b)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Errorf("cancel connection read %d bytes, %v; want a silent close", n, err)
	}
	env.backend.mu.Lock()
	defer env.backend.mu.Unlock()
	if len(env.backend.cancels) != 0 {
		t.Errorf("backend cancels = %v; want none for the backend's own key sent by a client", env.backend.cancels)
	}
}

// writeConn records what is written to it.
type writeConn struct {
	net.Conn
	buf bytes.Buffer
}

func (c *writeConn) Write(p []byte) (int, error) { return c.buf.Write(p) }

// TestRefuse checks what a failed step sends the client: the backend's own
// ErrorResponse verbatim after the login's last messages, a client error
// without its reason, and nothing at all for the rest.
func TestRefuse(t *testing.T) {
	be := &pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "3D000",
		Message: `database "shop" does not exist`, Routine: "InitPostgres", File: "postinit.c", Line: 885}
	ok := []pgproto3.BackendMessage{&pgproto3.AuthenticationOk{}}
	encode := func(msgs ...pgproto3.BackendMessage) string {
		b, err := wire.Encode(nil, msgs...)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	tests := []struct {
		name   string
		err    error
		prefix []pgproto3.BackendMessage
		want   string
	}{
		{name: "backend error relayed verbatim", err: &pgbackend.BackendError{Msg: be}, prefix: ok,
			want: encode(&pgproto3.AuthenticationOk{}, be)},
		{name: "client error without its reason",
			err:  &clienterr.Error{Code: "28P01", Message: `password authentication failed for user "bob"`, Reason: "wrong password"},
			want: encode(wire.ErrorMessage("28P01", `password authentication failed for user "bob"`))},
		{name: "wrapped protocol error", err: fmt.Errorf("login: %w", wire.ErrProtocolError),
			want: encode(wire.ErrorMessage("08P01", "login: protocol violation"))},
		{name: "unavailable", err: errUnavailable(), prefix: ok,
			want: encode(&pgproto3.AuthenticationOk{}, wire.ErrorMessage("57P03", "the database system is not available"))},
		{name: "internal error", err: errors.New("open /var/lib/pgshield/secret: permission denied")},
		{name: "hangup", err: io.EOF},
		{name: "buffered after SSLRequest", err: errBufferedAfterSSLRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := &writeConn{}
			c := &clientConn{admitted: admitted{conn: w}}
			c.refuse(tt.err, tt.prefix...)
			if got := w.buf.String(); got != tt.want {
				t.Errorf("refuse(%v) wrote %q; want %q", tt.err, got, tt.want)
			}
		})
	}
}

func TestParseCheck(t *testing.T) {
	d := strings.Repeat("ab", 32)
	for _, tc := range []struct {
		in   string
		ok   bool
		want checkFields
	}{
		{in: "v4 t f t t f " + d + " alice", ok: true, want: checkFields{same: true, db: true, role: true, digest: d, name: "alice"}},
		{in: "v4 f t f f t " + d + " a b c", ok: true, want: checkFields{ext: true, dirty: true, digest: d, name: "a b c"}},
		{in: "v4 t f t t f " + d + " ", ok: true, want: checkFields{same: true, db: true, role: true, digest: d}},
		{in: "unavailable"},
		{in: ""},
		{in: "v1 t f t t " + d + " alice"},
		{in: "v2 t f t t f " + d + " alice"}, // a library whose rebind keeps named statements
		{in: "v4 t f t t " + d + " alice"},
		{in: "v4 t f t t x " + d + " alice"},
		{in: "v4 t f t t f " + d[:62] + " alice"},
		{in: "v4 t f t t f " + strings.ToUpper(d) + " alice"},
		{in: "v4 t f t t f " + d},
	} {
		got, ok := parseCheck(tc.in)
		if ok != tc.ok || got != tc.want {
			t.Errorf("parseCheck(%q) = %+v, %v; want %+v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}
