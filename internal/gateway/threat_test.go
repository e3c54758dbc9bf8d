package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/threat"
)

// Linux routes all of 127.0.0.0/8 to lo: a test can be many sources.
func loopback(n byte) net.IP { return net.IPv4(127, 0, 0, n) }

// startThreatGateway serves a gateway with a threat.Guard built from params
// (administrator "App-User").
func startThreatGateway(t *testing.T, params map[string]string, maxConns int) (*gatewayEnv, *threat.Guard) {
	t.Helper()
	resolved, err := config.ResolveParams(params)
	if err != nil {
		t.Fatal(err)
	}
	g := threat.New(ThreatConfig(resolved, "App-User"))
	env := startGatewayWith(t, params, &fakeBackend{}, maxConns, func(c *Config) { c.Threat = g })
	return env, g
}

// connectFrom logs in with pgconn from source address 127.0.0.n.
func (e *gatewayEnv) connectFrom(t *testing.T, n byte, user, password string) (*pgconn.PgConn, error) {
	t.Helper()
	cfg, err := pgconn.ParseConfig(e.connString(user, password, "sslmode=verify-full"))
	if err != nil {
		t.Fatal(err)
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: loopback(n)}, Timeout: 5 * time.Second}
	cfg.DialFunc = d.DialContext
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return pgconn.ConnectConfig(ctx, cfg)
}

func (e *gatewayEnv) dialFrom(t *testing.T, n byte) net.Conn {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: loopback(n)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// expectSilentClose checks that c is closed having sent nothing, even
// after the client spoke first (an SSLRequest).
func expectSilentClose(t *testing.T, c net.Conn) {
	t.Helper()
	_, _ = c.Write(sslRequest()) // may fail: the gateway may have closed already
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	var ne net.Error
	if len(b) != 0 || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("refused connection got %q, %v; want a close with zero bytes", b, err)
	}
}

// failLogins makes n wrong-password logins as user from 127.0.0.src, each
// of which must be a 28P01.
func failLogins(t *testing.T, env *gatewayEnv, src byte, user string, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		c, err := env.connectFrom(t, src, user, "wrong")
		if c != nil {
			c.Close(context.Background())
		}
		if pgCode(err) != "28P01" {
			t.Fatalf("wrong password %d from 127.0.0.%d = %v; want 28P01", i+1, src, err)
		}
	}
}

func TestThreatBanAtAccept(t *testing.T) {
	checkGoroutines(t)
	env, g := startThreatGateway(t, nil, 0)
	failLogins(t, env, 3, "alice", 5)
	bans := env.audited("threat.ban")
	if len(bans) != 1 || bans[0].Client != "127.0.0.3" || bans[0].Fields["source"] != "127.0.0.3/32" {
		t.Fatalf("threat.ban records = %+v; want one for 127.0.0.3", bans)
	}
	// The 6th attempt is closed at accept, before TLS, without a byte.
	expectSilentClose(t, env.dialFrom(t, 3))
	if _, err := env.connectFrom(t, 3, "alice", goodPassword); err == nil || pgCode(err) != "" {
		t.Fatalf("login from the banned source with the right password = %v; want the connection closed", err)
	}
	if ev := env.awaitAudited(t, "connection.banned"); len(ev) != 1 {
		t.Errorf("connection.banned records = %d; want 1 (reported once a minute)", len(ev))
	}
	// Other sources are untouched.
	c, err := env.connectFrom(t, 4, "alice", goodPassword)
	if err != nil {
		t.Fatalf("login from another source = %v; want a session", err)
	}
	c.Close(context.Background())
	if s := g.Stats(); s.Bans != 1 {
		t.Errorf("Stats().Bans = %d; want 1", s.Bans)
	}
}

// TestThreatOnlyRealPeerBanned: names from the wire are only names, and a
// trusted proxy's PROXY header names the peer that gets banned (never the
// proxy).
func TestThreatOnlyRealPeerBanned(t *testing.T) {
	checkGoroutines(t)
	env, g := startThreatGateway(t, map[string]string{"pgshield.trusted_proxies": "127.0.0.8/32"}, 0)
	hostile := "x\n\"127.0.0.9\"\r\n{\"client\":\"10.0.0.1\"}"
	failLogins(t, env, 5, hostile, 5)
	// Through the trusted proxy 127.0.0.8, for client 192.0.2.7.
	for i := 0; i < 5; i++ {
		cfg, err := pgconn.ParseConfig(env.connString("alice", "wrong", "sslmode=verify-full"))
		if err != nil {
			t.Fatal(err)
		}
		cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
			d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: loopback(8)}}
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			_, err = fmt.Fprintf(c, "PROXY TCP4 192.0.2.7 127.0.0.1 5555 5432\r\n")
			return c, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err = pgconn.ConnectConfig(ctx, cfg)
		cancel()
		if pgCode(err) != "28P01" {
			t.Fatalf("wrong password through the proxy = %v; want 28P01", err)
		}
	}
	var got []string
	for _, b := range g.Bans() {
		got = append(got, b.Source.String())
	}
	if strings.Join(got, ",") != "127.0.0.5/32,192.0.2.7/32" {
		t.Errorf("bans = %v; want only the real peers 127.0.0.5 and 192.0.2.7 (not the proxy, not names)", got)
	}
	for _, n := range []byte{9} {
		c, err := env.connectFrom(t, n, "alice", goodPassword)
		if err != nil {
			t.Errorf("login from 127.0.0.%d = %v; want a session", n, err)
			continue
		}
		c.Close(context.Background())
	}
	for _, ev := range append(env.audited("auth.failure"), env.audited("threat.ban")...) {
		b, err := json.Marshal(ev)
		if err != nil || !json.Valid(b) || strings.Contains(string(b), "\n") {
			t.Errorf("audit record %s: %v; want one line of valid JSON", b, err)
		}
	}
}

func TestThreatSlowloris(t *testing.T) {
	checkGoroutines(t)
	env, _ := startThreatGateway(t, map[string]string{"pgshield.preauth_timeout": "2s"}, 0)
	trickle := func(t *testing.T, c net.Conn, prefix []byte) time.Duration {
		t.Helper()
		start := time.Now()
		if len(prefix) > 0 {
			write(t, c, prefix)
		}
		// One byte every 250 ms, never finishing: a deadline that moved
		// with each byte would never fire.
		for i := 0; i < 40; i++ {
			if _, err := c.Write([]byte{0}); err != nil {
				return time.Since(start)
			}
			_ = c.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
			if _, err := c.Read(make([]byte, 1)); err != nil {
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() {
					return time.Since(start)
				}
			}
		}
		t.Fatalf("connection still open after 10 s of trickling; want it cut at the 2 s pre-authentication deadline")
		return 0
	}
	t.Run("startup packet", func(t *testing.T) {
		c := env.dialFrom(t, 1)
		// A startup packet that claims 1,000 bytes.
		if d := trickle(t, c, []byte{0, 0, 0x03, 0xe8, 0, 3, 0, 0}); d < 1500*time.Millisecond || d > 3500*time.Millisecond {
			t.Errorf("trickled startup cut after %v; want about 2 s", d)
		}
	})
	t.Run("TLS handshake", func(t *testing.T) {
		c := env.dialFrom(t, 1)
		write(t, c, sslRequest())
		if b := readByte(t, c); b != 'S' {
			t.Fatalf("answer to SSLRequest = %q; want 'S'", b)
		}
		// A handshake record that claims 512 bytes.
		if d := trickle(t, c, []byte{0x16, 0x03, 0x01, 0x02, 0x00}); d > 3500*time.Millisecond {
			t.Errorf("trickled TLS handshake cut after %v; want about 2 s", d)
		}
	})
}

// TestThreatFloodKeepsKnownSourceIn: silent sockets from other sources take
// every pre-authentication slot anyone may use, but a source with a recent
// successful login still gets in, from the reserve.
func TestThreatFloodKeepsKnownSourceIn(t *testing.T) {
	checkGoroutines(t)
	env, g := startThreatGateway(t, map[string]string{"pgshield.max_preauth_connections": "8",
		"pgshield.max_preauth_connections_per_source": "4", "pgshield.preauth_reserved_connections": "4"}, 0)
	c, err := env.connectFrom(t, 1, "alice", goodPassword)
	if err != nil {
		t.Fatal(err)
	}
	c.Close(context.Background())
	var flood []net.Conn
	for i := 0; i < 4; i++ {
		flood = append(flood, env.dialFrom(t, 2))
	}
	deadline := time.Now().Add(5 * time.Second)
	for g.Stats().PreAuth != 4 {
		if time.Now().After(deadline) {
			t.Fatalf("Stats() = %+v; want the flood's 4 sockets authenticating", g.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	expectSilentClose(t, env.dialFrom(t, 2)) // over the per-source cap
	expectSilentClose(t, env.dialFrom(t, 3)) // general part full
	if c, err := env.connectFrom(t, 1, "alice", goodPassword); err != nil {
		t.Fatalf("known-good source during the flood = %v; want a session", err)
	} else {
		c.Close(context.Background())
	}
	for _, f := range flood {
		f.Close()
	}
	if len(env.audited("connection.throttled")) == 0 {
		t.Error("no connection.throttled record for the flood")
	}
}

// TestThreatRoleThrottle: many sources guessing one role are slowed to one
// attempt at a time; the role's known-good source is not.
func TestThreatRoleThrottle(t *testing.T) {
	checkGoroutines(t)
	env, _ := startThreatGateway(t, map[string]string{"pgshield.bruteforce_role_max_failures": "3",
		"pgshield.bruteforce_role_max_delay": "1s"}, 0)
	c, err := env.connectFrom(t, 1, "alice", goodPassword)
	if err != nil {
		t.Fatal(err)
	}
	c.Close(context.Background())
	for n := byte(10); n < 13; n++ {
		failLogins(t, env, n, "alice", 1)
	}
	// 30 sources guess at once; the usual source logs in meanwhile. The
	// queue holds 2 s of 100 ms turns; the rest are refused.
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var answered []time.Duration
	refused := 0
	for n := byte(20); n < 50; n++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := env.connectFrom(t, n, "alice", "wrong")
			if c != nil {
				c.Close(context.Background())
			}
			mu.Lock()
			defer mu.Unlock()
			switch pgCode(err) {
			case "28P01":
				answered = append(answered, time.Since(start))
			case "53300":
				refused++
			default:
				t.Errorf("guess from 127.0.0.%d = %v; want 28P01 or 53300", n, err)
			}
		}()
	}
	time.Sleep(50 * time.Millisecond)
	t0 := time.Now()
	c, err = env.connectFrom(t, 1, "alice", goodPassword)
	if err != nil {
		t.Fatalf("known-good source under attack = %v; want a session", err)
	}
	c.Close(context.Background())
	if d := time.Since(t0); d > 1500*time.Millisecond {
		t.Errorf("known-good login took %v under attack; want no slow-down", d)
	}
	wg.Wait()
	quick := 0
	for _, d := range answered {
		if d < 90*time.Millisecond {
			quick++
		}
	}
	// One answer per 100 ms turn at most (a few more on a loaded machine,
	// where handshakes trickle in and the answers' arrival jitters); without
	// the slow-down all 30 come back within a few hundred milliseconds.
	var last time.Duration
	for _, d := range answered {
		last = max(last, d)
	}
	if quick > 1 || refused == 0 || len(answered) > int(last/(100*time.Millisecond))+3 {
		t.Errorf("guesses answered %v, %d refused; want one at a time (at most 1 at once) and the queue's excess refused", answered, refused)
	}
}

func TestThreatSessionLimits(t *testing.T) {
	checkGoroutines(t)
	t.Run("per role", func(t *testing.T) {
		env, g := startThreatGateway(t, map[string]string{"pgshield.max_connections_per_role": "1"}, 0)
		first, err := env.connectFrom(t, 1, "alice", goodPassword)
		if err != nil {
			t.Fatal(err)
		}
		_, err = env.connectFrom(t, 2, "alice", goodPassword)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "53300" || pe.Message != `too many connections for role "alice"` {
			t.Fatalf("second session of alice = %v; want 53300 too many connections for role \"alice\"", err)
		}
		first.Close(context.Background())
		deadline := time.Now().Add(5 * time.Second)
		for g.Stats().Sessions != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("Stats() = %+v after the session ended; want its slot back", g.Stats())
			}
			time.Sleep(5 * time.Millisecond)
		}
		c, err := env.connectFrom(t, 2, "alice", goodPassword)
		if err != nil {
			t.Fatalf("session after the first ended = %v", err)
		}
		c.Close(context.Background())
	})
	t.Run("administrator's reserve", func(t *testing.T) {
		env, _ := startThreatGateway(t, map[string]string{"pgshield.max_connections": "3",
			"pgshield.reserved_admin_connections": "2", "pgshield.max_connections_per_source": "1"}, 0)
		first, err := env.connectFrom(t, 1, "alice", goodPassword)
		if err != nil {
			t.Fatal(err)
		}
		defer first.Close(context.Background())
		_, err = env.connectFrom(t, 2, "alice", goodPassword)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "53300" || !strings.Contains(pe.Message, "reserved for the administrator") {
			t.Fatalf("session into the reserve = %v; want 53300 reserved for the administrator", err)
		}
		// The administrator gets in, even from a source at its cap.
		for i := 0; i < 2; i++ {
			a, err := env.connectFrom(t, 1, "App-User", goodPassword)
			if err != nil {
				t.Fatalf("administrator session %d = %v; want it from the reserve", i+1, err)
			}
			defer a.Close(context.Background())
		}
	})
}

// TestPoolMaxTotalAuto: pgshield.pool_max_total = auto follows what
// PostgreSQL's limits leave the gateway, as threat protection derives them
// (89 until known), within the pool's one-second tick; a number stays.
func TestPoolMaxTotalAuto(t *testing.T) {
	resolved, err := config.ResolveParams(nil)
	if err != nil {
		t.Fatal(err)
	}
	g := threat.New(ThreatConfig(resolved, "admin"))
	env := startGatewayWith(t, nil, &fakeBackend{}, 0, func(c *Config) { c.Threat = g })
	if got := env.srv.PoolMaxTotal(); got != threat.FallbackMaxSessions {
		t.Fatalf("pool_max_total auto before PostgreSQL's limits are known = %d; want %d", got, threat.FallbackMaxSessions)
	}
	g.SetServerLimits(300, 3) // 300 - 3 - 4 - 4 = 289
	deadline := time.Now().Add(5 * time.Second)
	for env.srv.PoolMaxTotal() != 289 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if got := env.srv.PoolMaxTotal(); got != 289 {
		t.Fatalf("pool_max_total auto after max_connections 300 = %d; want 289", got)
	}
	fixed, err := config.ResolveParams(map[string]string{"pgshield.pool_max_total": "50"})
	if err != nil {
		t.Fatal(err)
	}
	env.srv.SetParams(fixed)
	g.SetServerLimits(500, 3)
	time.Sleep(1500 * time.Millisecond) // at least one tick
	if got := env.srv.PoolMaxTotal(); got != 50 {
		t.Errorf("pool_max_total 50 = %d after PostgreSQL's limits changed; want 50", got)
	}
}
