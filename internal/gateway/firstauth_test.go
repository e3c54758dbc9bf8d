package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/auth/scram"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/testutil/oidcissuer"
)

func TestFirstRequest(t *testing.T) {
	issuer := config.OIDCParams{Issuer: "https://issuer.example"}
	both := config.Params{PasswordAuth: true, OIDC: issuer}
	tokensOnly := config.Params{OIDC: issuer}
	noTokens := config.Params{PasswordAuth: true}
	tests := []struct {
		name string
		tls  bool
		p    config.Params
		user string
		want authRequest
	}{
		{name: "plaintext, quoted name", p: both, user: "alice@contoso.com", want: askSCRAM},
		{name: "plaintext, password_auth off", p: tokensOnly, user: "alice@contoso.com", want: askSCRAM},
		{name: "tokens off, quoted name", tls: true, p: noTokens, user: "alice@contoso.com", want: askSCRAM},
		{name: "tokens off, both off", tls: true, p: config.Params{}, user: "Bob", want: askSCRAM},
		{name: "password_auth off, plain name", tls: true, p: tokensOnly, user: "alice", want: askPassword},
		{name: "password_auth off, quoted name", tls: true, p: tokensOnly, user: "Bob", want: askPassword},
		{name: "both on, plain name", tls: true, p: both, user: "alice", want: askSCRAM},
		{name: "both on, upper case", tls: true, p: both, user: "Bob", want: askPassword},
		{name: "both on, UPN", tls: true, p: both, user: "alice@contoso.com", want: askPassword},
		{name: "both on, space", tls: true, p: both, user: "Contoso DBAs", want: askPassword},
		{name: "both on, hyphen", tls: true, p: both, user: "ingest-app", want: askPassword},
	}
	for _, tt := range tests {
		if got := firstRequest(tt.tls, tt.p, tt.user); got != tt.want {
			t.Errorf("%s: firstRequest(tls %v, %q) = %v; want %v", tt.name, tt.tls, tt.user, got, tt.want)
		}
	}
}

// passwordChecks records the credentials cleartextLogin checks passwords
// against, for the length of the test.
type passwordChecks struct {
	mu    sync.Mutex
	salts []string
}

func watchPasswordChecks(t *testing.T) *passwordChecks {
	t.Helper()
	w := &passwordChecks{}
	// Set before any gateway starts and restored after it stops (cleanups
	// run last in, first out), so no handler sees the swap.
	orig := verifyPassword
	verifyPassword = func(c scram.Credentials, pw string) bool {
		w.mu.Lock()
		w.salts = append(w.salts, c.Salt)
		w.mu.Unlock()
		return orig(c, pw)
	}
	t.Cleanup(func() { verifyPassword = orig })
	return w
}

func (w *passwordChecks) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.salts
	w.salts = nil
	return s
}

// firstAuthMessage starts a session for user and describes the first
// authentication request the gateway sends.
func firstAuthMessage(t *testing.T, env *gatewayEnv, useTLS bool, user string) string {
	t.Helper()
	raw, err := net.Dial("tcp", env.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(5 * time.Second))
	c := raw
	if useTLS {
		write(t, raw, sslRequest())
		if b := readByte(t, raw); b != 'S' {
			t.Fatalf("SSLRequest answer = %q; want 'S'", b)
		}
		pemCA, err := os.ReadFile(env.caFile)
		if err != nil {
			t.Fatal(err)
		}
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(pemCA)
		tc := tls.Client(raw, &tls.Config{RootCAs: roots, ServerName: "localhost"})
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		c = tc
	}
	write(t, c, startupMessage(t, map[string]string{"user": user, "database": "shop"}))
	m, err := pgproto3.NewFrontend(c, c).Receive()
	switch m := m.(type) {
	case *pgproto3.AuthenticationSASL:
		return fmt.Sprintf("SASL %v", m.AuthMechanisms)
	case *pgproto3.AuthenticationCleartextPassword:
		return "cleartext"
	default:
		return fmt.Sprintf("%T %v", m, err)
	}
}

// TestFirstRequestRevealsNoCatalog checks, for each mode, that what a
// client learns before authenticating (the first request and the final
// error) depends only on the mode and the shape of the name: a principal, a
// password role and an unknown name of the same shape look alike.
func TestFirstRequestRevealsNoCatalog(t *testing.T) {
	checkGoroutines(t)
	checks := watchPasswordChecks(t)
	is := oidcissuer.Start(t)
	const (
		scramTLS   = "SASL [SCRAM-SHA-256-PLUS SCRAM-SHA-256]"
		scramPlain = "SASL [SCRAM-SHA-256]"
		cleartext  = "cleartext"
	)
	modes := []struct {
		name          string
		params        map[string]string
		tls           bool
		quoted, plain string // the first request for each name shape
		// pbkdf2 says whether every cleartext login runs PBKDF2.
		pbkdf2 bool
	}{
		{name: "plaintext", params: tokenParams(t, is, map[string]string{"require_secure_transport": "off"}),
			quoted: scramPlain, plain: scramPlain},
		{name: "TLS, token authentication off", tls: true, quoted: scramTLS, plain: scramTLS},
		{name: "TLS, password_auth off", params: tokenParams(t, is, map[string]string{"pgshield.password_auth": "off"}),
			tls: true, quoted: cleartext, plain: cleartext},
		{name: "TLS, both on", params: tokenParams(t, is, nil), tls: true, quoted: cleartext, plain: scramTLS, pbkdf2: true},
	}
	// Each group holds names of one shape that must look alike; the first
	// is a principal or a password role, the rest unknown or password roles.
	groups := []struct {
		shape string
		names []string
	}{
		{shape: "quoted", names: []string{"alice@contoso.com", "nobody@contoso.com", "App-User"}},
		{shape: "plain", names: []string{"alice", "ghost"}},
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			env := startGateway(t, m.params, &fakeBackend{}, 0)
			sslmode := "sslmode=disable"
			if m.tls {
				sslmode = "sslmode=verify-full"
			}
			for _, g := range groups {
				want := m.quoted
				if g.shape == "plain" {
					want = m.plain
				}
				var first0, final0 string
				for i, user := range g.names {
					first := firstAuthMessage(t, env, m.tls, user)
					if first != want {
						t.Errorf("%s: first request = %s; want %s (%s name)", user, first, want, g.shape)
					}
					checks.take()
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					conn, err := pgconn.Connect(ctx, env.connString(user, "not-the-secret", sslmode))
					cancel()
					var pe *pgconn.PgError
					if !errors.As(err, &pe) {
						if conn != nil {
							conn.Close(context.Background())
						}
						t.Fatalf("%s: Connect() error = %v; want a refusal", user, err)
					}
					final := pe.Severity + " " + pe.Code + " " + strings.ReplaceAll(pe.Message, `"`+user+`"`, `"<user>"`)
					// The cleartext path runs PBKDF2 for every name, against
					// mock credentials when the role cannot use its own.
					salts := checks.take()
					switch {
					case first != cleartext || !m.pbkdf2:
						if len(salts) != 0 {
							t.Errorf("%s: %d password checks; want none in this mode", user, len(salts))
						}
					case user == "App-User":
						if len(salts) != 1 || salts[0] != "0123456789abcdef" {
							t.Errorf("%s: password checked against salts %q; want its own verifier's", user, salts)
						}
					default:
						mock := scram.MockCredentials(env.srv.cfg.MockSecret, user).Salt
						if len(salts) != 1 || salts[0] != mock {
							t.Errorf("%s: password checked against salts %q; want the mock credentials'", user, salts)
						}
					}
					if i == 0 {
						first0, final0 = first, final
						if pe.Code != "28P01" {
							t.Errorf("%s: refusal %s; want 28P01", user, final)
						}
					} else if first != first0 || final != final0 {
						t.Errorf("%s: first request %s, refusal %s; want %s and %s as for %s", user, first, final,
							first0, final0, g.names[0])
					}
				}
			}
		})
	}
}

// TestCleartextPasswordLogin: with token and password logins both on, a
// password role whose name SQL must quote is asked for its password in the
// clear (inside TLS) and checked against its SCRAM verifier.
func TestCleartextPasswordLogin(t *testing.T) {
	checkGoroutines(t)
	is := oidcissuer.Start(t)
	tests := []struct {
		name, user, password, extra string
		params                      map[string]string
		wantCode, wantReason        string // "" code: a working session
	}{
		{name: "right password", user: "App-User", password: goodPassword, extra: "sslmode=verify-full"},
		{name: "wrong password", user: "App-User", password: "wrong", extra: "sslmode=verify-full",
			wantCode: "28P01", wantReason: "wrong password"},
		{name: "unknown name", user: "Ghost", password: goodPassword, extra: "sslmode=verify-full",
			wantCode: "28P01", wantReason: "role does not exist"},
		{name: "password_auth off", user: "App-User", password: goodPassword, extra: "sslmode=verify-full",
			params: map[string]string{"pgshield.password_auth": "off"}, wantCode: "28P01", wantReason: "password_auth = off"},
		{name: "oversized password", user: "App-User", password: strings.Repeat("p", 17<<10), extra: "sslmode=verify-full",
			wantCode: "28P01", wantReason: "password of 17408 bytes is over the 16384-byte limit"},
		{name: "a principal's token does not open a password role", user: "App-User",
			password: token(t, is, "oid-alice", nil), extra: "sslmode=verify-full", wantCode: "28P01", wantReason: "wrong password"},
		// The price of the rule: no SCRAM, so no channel binding.
		{name: "channel binding required", user: "App-User", password: goodPassword,
			extra: "sslmode=verify-full channel_binding=require", wantCode: "client"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := startGateway(t, tokenParams(t, is, tt.params), &fakeBackend{}, 0)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			conn, err := pgconn.Connect(ctx, env.connString(tt.user, tt.password, tt.extra))
			switch tt.wantCode {
			case "":
				if err != nil {
					t.Fatalf("Connect() error = %v; want a session", err)
				}
				conn.Close(ctx)
				starts := env.awaitAudited(t, "session.start")
				if len(starts) != 1 || starts[0].Fields["method"] != MethodPassword {
					t.Errorf("session.start events = %+v; want one with method %q", starts, MethodPassword)
				}
				return
			case "client":
				if err == nil {
					conn.Close(ctx)
					t.Fatalf("Connect() succeeded; want the client to refuse a server that skips channel binding")
				}
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
			if len(fails) != 1 || !strings.Contains(fails[0].Reason, tt.wantReason) || fails[0].Fields["method"] != MethodPassword {
				t.Fatalf("auth.failure events = %+v; want one, method %q, reason containing %q", fails, MethodPassword, tt.wantReason)
			}
		})
	}
}
