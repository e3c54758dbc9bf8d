package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/testutil/oidcissuer"
)

const testAudience = "api://pgshield-gateway-test"

func tokenParams(t *testing.T, is *oidcissuer.Issuer, extra map[string]string) map[string]string {
	t.Helper()
	ca, err := is.WriteCA(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	p := map[string]string{"pgshield.oidc_issuer": is.URL, "pgshield.oidc_audience": testAudience,
		"pgshield.oidc_ca_file": ca}
	for k, v := range extra {
		p[k] = v
	}
	return p
}

func token(t *testing.T, is *oidcissuer.Issuer, oid string, mod func(oidcissuer.Claims)) string {
	t.Helper()
	c := is.Access(testAudience, oid, time.Hour)
	if mod != nil {
		mod(c)
	}
	tok, err := oidcissuer.Sign(is.Key(jose.RS256), "", c)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestTokenLogin(t *testing.T) {
	checkGoroutines(t)
	is := oidcissuer.Start(t)
	aliceTok := token(t, is, "oid-alice", nil)
	groupTok := token(t, is, "oid-carol", func(c oidcissuer.Claims) { c["groups"] = []string{"oid-other", "oid-group-dbas"} })
	tests := []struct {
		name, user, password, extra string
		params                      map[string]string
		wantCode, wantReason        string // "" code: a working session
	}{
		{name: "user principal", user: "alice@contoso.com", password: aliceTok, extra: "sslmode=verify-full"},
		{name: "group principal", user: "Contoso DBAs", password: groupTok, extra: "sslmode=verify-full"},
		{name: "alice's token as bob", user: "bob@contoso.com", password: aliceTok, extra: "sslmode=verify-full",
			wantCode: "28P01", wantReason: `not the role's object ID "oid-bob"`},
		{name: "token without the group", user: "Contoso DBAs", password: aliceTok, extra: "sslmode=verify-full",
			wantCode: "28P01", wantReason: "does not list group"},
		{name: "NOLOGIN principal", user: "locked@contoso.com", password: token(t, is, "oid-locked", nil),
			extra: "sslmode=verify-full", wantCode: "28P01", wantReason: "not permitted to log in"},
		{name: "bad token", user: "alice@contoso.com", password: aliceTok[:len(aliceTok)-4], extra: "sslmode=verify-full",
			wantCode: "28P01", wantReason: "bad signature"},
		{name: "65 KiB token", user: "alice@contoso.com", password: strings.Repeat("A", 65<<10), extra: "sslmode=verify-full",
			wantCode: "28P01", wantReason: "over the 16384-byte limit"},
		{name: "plaintext, even with require_secure_transport off", user: "alice@contoso.com", password: aliceTok,
			params: map[string]string{"require_secure_transport": "off"}, extra: "sslmode=disable",
			wantCode: "28P01", wantReason: "over TLS only"},
		{name: "SCRAM role still uses SCRAM", user: "alice", password: goodPassword, extra: "sslmode=verify-full channel_binding=require"},
		{name: "password_auth off refuses passwords", user: "alice", password: goodPassword, extra: "sslmode=verify-full",
			params: map[string]string{"pgshield.password_auth": "off"}, wantCode: "28P01", wantReason: "password_auth = off"},
		{name: "password_auth off keeps tokens", user: "alice@contoso.com", password: aliceTok, extra: "sslmode=verify-full",
			params: map[string]string{"pgshield.password_auth": "off"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := startGateway(t, tokenParams(t, is, tt.params), &fakeBackend{}, 0)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			conn, err := pgconn.Connect(ctx, env.connString(tt.user, tt.password, tt.extra))
			if tt.wantCode == "" {
				if err != nil {
					t.Fatalf("Connect() error = %v; want a session", err)
				}
				conn.Close(ctx)
				return
			}
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != tt.wantCode {
				t.Fatalf("Connect() error = %v; want SQLSTATE %s", err, tt.wantCode)
			}
			if want := `password authentication failed for user "` + tt.user + `"`; pe.Message != want {
				t.Errorf("client message = %q; want the uniform %q", pe.Message, want)
			}
			fails := env.audited("auth.failure")
			if len(fails) != 1 || !strings.Contains(fails[0].Reason, tt.wantReason) {
				t.Fatalf("auth.failure events = %+v; want one with reason containing %q", fails, tt.wantReason)
			}
			if strings.Contains(fails[0].Reason, tt.password[:20]) {
				t.Errorf("audit reason %q holds the token", fails[0].Reason)
			}
		})
	}
}

// A token principal on a plaintext connection is offered SCRAM like any
// name: the token is never asked for in the clear.
func TestTokenNeverAskedInPlaintext(t *testing.T) {
	checkGoroutines(t)
	is := oidcissuer.Start(t)
	env := startGateway(t, tokenParams(t, is, map[string]string{"require_secure_transport": "off"}), &fakeBackend{}, 0)
	c, err := net.Dial("tcp", env.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": "alice@contoso.com", "database": "shop"}}).Encode(nil)
	write(t, c, b)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	m, err := pgproto3.NewFrontend(c, c).Receive()
	if sasl, ok := m.(*pgproto3.AuthenticationSASL); err != nil || !ok || fmt.Sprint(sasl.AuthMechanisms) != "[SCRAM-SHA-256]" {
		t.Fatalf("first message = %#v, %v; want AuthenticationSASL [SCRAM-SHA-256], never a password request", m, err)
	}
}

func TestTokenExpiryEnforced(t *testing.T) {
	checkGoroutines(t)
	is := oidcissuer.Start(t)
	// exp is whole seconds: 3 s from now ends the session 2 to 3 s in.
	exp := time.Now().Add(3 * time.Second)
	short := token(t, is, "oid-alice", func(c oidcissuer.Claims) { c["exp"] = exp.Unix() })
	for _, enforce := range []string{"on", "off"} {
		t.Run("enforce "+enforce, func(t *testing.T) {
			env := startGateway(t, tokenParams(t, is, map[string]string{"pgshield.oidc_enforce_expiry": enforce}), &fakeBackend{}, 0)
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			conn, err := pgconn.Connect(ctx, env.connString("alice@contoso.com", short, "sslmode=verify-full"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			time.Sleep(time.Until(exp) + 500*time.Millisecond)
			_, err = conn.Exec(ctx, "select 1").ReadAll()
			var pe *pgconn.PgError
			if enforce == "off" {
				if err != nil {
					t.Fatalf("query after expiry with enforcement off: %v; want it to work (checked at connect only)", err)
				}
				return
			}
			if !errors.As(err, &pe) || pe.Code != "57P01" || !strings.Contains(pe.Message, "access token expired") {
				t.Fatalf("query after expiry error = %v; want 57P01 access token expired", err)
			}
			if ev := env.audited("session.terminated"); len(ev) != 1 {
				t.Errorf("session.terminated events = %+v; want one", ev)
			}
		})
	}
}
