package gateway

import (
	"context"
	"errors"
	"net"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshield/pgshield/internal/pgbackend"
)

// A client may not send the parameter that carries the real client, nor any
// other under pgshield's prefixes, in any case or through options: 42501
// before any authentication, and no backend is opened.
func TestClientCarrierRefused(t *testing.T) {
	checkGoroutines(t)
	for _, extra := range []string{
		"pgshield_guard.client=v=1",
		"PGSHIELD_GUARD.Client=v=1",
		"pgshield.client=v=1",
		"pgshield.anything=x",
		`options='-c pgshield_guard.client=v=1'`,
		`options='--pgshield.client=v=1'`,
		`options='-c search_path=public -c PgShield_Guard.client=x'`,
		`options='-c pgshield_guard\\.client=x'`,
		`options='-c pgshield-guard.client=x'`, // ParseLongOption reads '-' as '_'
		`options='--pgshield-guard.client=x'`,
	} {
		t.Run(extra, func(t *testing.T) {
			env := startGateway(t, nil, &fakeBackend{}, 0)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			// A wrong password: the refusal must come before authentication.
			conn, err := pgconn.Connect(ctx, env.connString("alice", "wrong", "sslmode=verify-full "+extra))
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "42501" {
				t.Fatalf("pgconn.Connect(%s) error = %v; want SQLSTATE 42501", extra, err)
			}
			if conn != nil {
				conn.Close(ctx)
			}
			env.backend.mu.Lock()
			defer env.backend.mu.Unlock()
			if len(env.backend.got) != 0 {
				t.Errorf("a backend was opened: %v", env.backend.got)
			}
		})
	}
}

// The gateway's own record names the client's address and port, its TLS
// session and login method, with a fresh 256-bit key per backend.
func TestClientIdentityParam(t *testing.T) {
	checkGoroutines(t)
	env := startGateway(t, nil, &fakeBackend{}, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var ports []string
	for _, cb := range []string{"require", "disable"} {
		conn, err := pgconn.Connect(ctx, env.connString("alice", goodPassword, "sslmode=verify-full channel_binding="+cb))
		if err != nil {
			t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(conn.Conn().LocalAddr().String())
		ports = append(ports, port)
		conn.Close(ctx)
	}
	env.backend.mu.Lock()
	got := env.backend.got
	env.backend.mu.Unlock()
	if len(got) != 2 {
		t.Fatalf("backend connects = %d; want 2", len(got))
	}
	var keys []string
	for i, method := range []string{"scram-sha-256-plus", "scram-sha-256"} {
		want := regexp.MustCompile(`^v=1&addr=127\.0\.0\.1&port=` + ports[i] +
			`&tls=TLSv1\.3&cipher=TLS_(AES_128_GCM_SHA256|AES_256_GCM_SHA384|CHACHA20_POLY1305_SHA256)&bits=(128|256)&method=` +
			regexp.QuoteMeta(method) + `&key=([0-9a-f]{64})$`)
		m := want.FindStringSubmatch(got[i][pgbackend.ClientParam])
		if m == nil {
			t.Fatalf("backend param %s = %q; want %s", pgbackend.ClientParam, got[i][pgbackend.ClientParam], want)
		}
		keys = append(keys, m[3])
		if p, _ := strconv.Atoi(ports[i]); p == 0 {
			t.Errorf("client port %q", ports[i])
		}
	}
	if keys[0] == keys[1] {
		t.Errorf("two backends got the same key")
	}
}
