package gateway

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/wire"
)

func drainMsg() *pgproto3.ErrorResponse {
	return wire.ErrorMessage(wire.CodeAdminShutdown, "terminating connection due to administrator command")
}

// connectAlice opens a working session through env, checked with a query.
func connectAlice(t *testing.T, env *gatewayEnv) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, env.connString("alice", goodPassword, "sslmode=verify-full"))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	if _, err := c.Exec(ctx, "select 1").ReadAll(); err != nil {
		t.Fatalf("select 1: %v", err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// wantAdminShutdown checks that c's next query finds its session ended
// with 57P01, as PostgreSQL ends it on a fast shutdown.
func wantAdminShutdown(t *testing.T, c *pgconn.PgConn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.Exec(ctx, "select 2").ReadAll()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "57P01" || pe.Severity != "FATAL" ||
		pe.Message != "terminating connection due to administrator command" {
		t.Errorf("query after the drain: %v; want FATAL 57P01 terminating connection due to administrator command", err)
	}
}

// TestDrainNoGrace: with no grace every open session is ended with 57P01
// at once, and the listener no longer accepts.
func TestDrainNoGrace(t *testing.T) {
	env := startGateway(t, nil, &fakeBackend{}, 0)
	a, b := connectAlice(t, env), connectAlice(t, env)
	env.srv.StopAccepting()
	if n := env.srv.Drain(0, drainMsg()); n != 2 {
		t.Errorf("Drain() ended %d sessions; want 2", n)
	}
	wantAdminShutdown(t, a)
	wantAdminShutdown(t, b)
	if c, err := net.DialTimeout("tcp", env.addr, 2*time.Second); err == nil {
		c.Close()
		t.Errorf("a connection was accepted after StopAccepting")
	}
}

// TestDrainWaitsForSessions: within the grace, sessions that end by
// themselves end the drain; none is terminated.
func TestDrainWaitsForSessions(t *testing.T) {
	env := startGateway(t, nil, &fakeBackend{}, 0)
	a, b := connectAlice(t, env), connectAlice(t, env)
	done := make(chan int, 1)
	go func() { done <- env.srv.Drain(10*time.Minute, drainMsg()) }()
	// The sessions still work during the grace.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := a.Exec(ctx, "select 'in the grace'").ReadAll(); err != nil {
		t.Fatalf("query during the grace: %v", err)
	}
	a.Close(ctx)
	b.Close(ctx)
	select {
	case n := <-done:
		if n != 0 {
			t.Errorf("Drain() ended %d sessions; want 0 (both ended by themselves)", n)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("Drain() still waits after every session ended")
	}
}

// TestDrainEndsLateSessions: a session that starts relaying after the
// drain ended the others (its login was under way) is ended at once;
// after EndDrain (a restart is over) sessions work again.
func TestDrainEndsLateSessions(t *testing.T) {
	env := startGateway(t, nil, &fakeBackend{}, 0)
	if n := env.srv.Drain(0, drainMsg()); n != 0 {
		t.Errorf("Drain() of an idle gateway ended %d sessions", n)
	}
	wantAdminShutdown(t, connectLate(t, env))
	env.srv.EndDrain()
	c := connectAlice(t, env)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Exec(ctx, "select 'after'").ReadAll(); err != nil {
		t.Errorf("query after EndDrain: %v", err)
	}
}

// connectLate logs in without a first query (the session may be ended
// as soon as it relays).
func connectLate(t *testing.T, env *gatewayEnv) *pgconn.PgConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgconn.Connect(ctx, env.connString("alice", goodPassword, "sslmode=verify-full"))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}
