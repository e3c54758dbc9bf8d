package gateway

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshield/pgshield/internal/pgbackend"
)

// fakeLeadership is a Leadership whose answer the test sets; set notifies
// the watchers, as a fence's OnFence and OnConfirm would.
type fakeLeadership struct {
	mu       sync.Mutex
	may      bool
	watchers map[int]func()
	next     int
}

var _ Leadership = (*fakeLeadership)(nil)

func newFakeLeadership(may bool) *fakeLeadership {
	return &fakeLeadership{may: may, watchers: map[int]func(){}}
}

func (f *fakeLeadership) MayWrite() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.may
}

func (f *fakeLeadership) Watch(onChange func()) (stop func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := f.next
	f.next++
	f.watchers[id] = onChange
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		delete(f.watchers, id)
	}
}

// set changes the answer and, if notify, tells the watchers (outside the
// lock, as the fence calls its callbacks); without notify it is a fence
// whose deadline passed before it told anyone.
func (f *fakeLeadership) set(may, notify bool) {
	f.mu.Lock()
	f.may = may
	var fns []func()
	for _, fn := range f.watchers {
		fns = append(fns, fn)
	}
	f.mu.Unlock()
	if notify {
		for _, fn := range fns {
			fn()
		}
	}
}

func (f *fakeLeadership) watching() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.watchers)
}

// startFencedGateway serves a gateway whose leadership is lead; alice is
// in session pooling, App-User in transaction pooling. The watch must be
// stopped when Serve returns.
func startFencedGateway(t *testing.T, lead *fakeLeadership, mod func(*Config)) *gatewayEnv {
	t.Helper()
	// Registered first, so it runs after the gateway's own cleanup.
	t.Cleanup(func() {
		if n := lead.watching(); n != 0 {
			t.Errorf("%d leadership watches left after Serve returned; want 0", n)
		}
	})
	return startGatewayWith(t, map[string]string{"pgshield.pool_mode": "session",
		"pgshield.pool_mode_overrides": `role:"App-User"=transaction`}, &fakeBackend{}, 0, func(c *Config) {
		c.Leadership = lead
		if mod != nil {
			mod(c)
		}
	})
}

// wantPgError checks err is a PostgreSQL error with code and message.
func wantPgError(t *testing.T, what string, err error, code, msg string) {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != code || pe.Severity != "FATAL" || pe.Message != msg {
		t.Errorf("%s: %v; want FATAL %s %q", what, err, code, msg)
	}
}

const (
	fencedSessionMsg = "terminating connection: this node is no longer the confirmed primary"
	fencedLoginMsg   = "this node is not the confirmed primary of its cluster; connect to another host"
)

// wantFencedSession checks that c's session was ended by the fence: its
// next query finds FATAL 57P01.
func wantFencedSession(t *testing.T, what string, c *pgconn.PgConn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.Exec(ctx, "select 'after the fence'").ReadAll()
	wantPgError(t, what, err, "57P01", fencedSessionMsg)
}

// login connects as user with password and returns the connection or
// the error.
func login(env *gatewayEnv, user, password string) (*pgconn.PgConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return pgconn.Connect(ctx, env.connString(user, password, "sslmode=verify-full"))
}

// idleBackends is how many pooled backends are idle, all roles.
func idleBackends(env *gatewayEnv) int {
	n := 0
	for _, s := range env.srv.PoolStats() {
		n += s.Idle
	}
	return n
}

// waitFor polls cond for up to 5 s.
func waitFor(cond func() bool) bool {
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// TestLeadershipFence: when the node stops being the confirmed primary,
// a session in session pooling and one in transaction pooling end at once
// with 57P01, the idle pooled backend (the transaction-mode session's,
// between transactions) is closed, a new login is refused
// with 57P01 before any authentication (a wrong password gets the same
// answer, and no backend is dialed), and the transition is audited once;
// when leadership comes back, logins work again.
func TestLeadershipFence(t *testing.T) {
	checkGoroutines(t)
	lead := newFakeLeadership(true)
	env := startFencedGateway(t, lead, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	sessionMode := connectAlice(t, env)
	txMode, err := login(env, "App-User", goodPassword)
	if err != nil {
		t.Fatalf("login as App-User: %v", err)
	}
	defer txMode.Close(ctx)
	if _, err := txMode.Exec(ctx, "select 'transaction pooling'").ReadAll(); err != nil {
		t.Fatalf("query in transaction pooling: %v", err)
	}
	// The transaction-mode session's backend waits idle in the pool
	// between transactions.
	if !waitFor(func() bool { return idleBackends(env) == 1 }) {
		t.Fatalf("pool stats %+v; want 1 idle backend before the fence", env.srv.PoolStats())
	}
	if got := len(env.audited("cluster.fenced")) + len(env.audited("cluster.confirmed")); got != 0 {
		t.Errorf("%d cluster events before any transition; want 0", got)
	}

	lead.set(false, true)
	// Ended at once, before either client says a word.
	if !waitFor(func() bool { return env.srv.sessionCount() == 0 }) {
		t.Errorf("%d sessions still relaying 5 s after the fence; want 0", env.srv.sessionCount())
	}
	if n := idleBackends(env); n != 0 {
		t.Errorf("%d idle pooled backends after the fence; want 0 (stats %+v)", n, env.srv.PoolStats())
	}
	wantFencedSession(t, "session pooling, query after the fence", sessionMode)
	wantFencedSession(t, "transaction pooling, query after the fence", txMode)

	env.backend.mu.Lock()
	dialed := len(env.backend.got)
	env.backend.mu.Unlock()
	for _, tt := range []struct{ user, password string }{
		{"alice", goodPassword},
		{"alice", "wrong password"}, // refused before authentication: not 28P01
		{"App-User", goodPassword},
	} {
		c, err := login(env, tt.user, tt.password)
		if c != nil {
			c.Close(ctx)
		}
		wantPgError(t, "login of "+tt.user+" while fenced", err, "57P01", fencedLoginMsg)
	}
	env.backend.mu.Lock()
	if n := len(env.backend.got); n != dialed {
		t.Errorf("%d backend sessions dialed for logins refused by the fence; want 0", n-dialed)
	}
	env.backend.mu.Unlock()

	// A second word from the fence is no second transition.
	lead.set(false, true)
	evs := env.audited("cluster.fenced")
	if len(evs) != 1 {
		t.Fatalf("cluster.fenced audited %d times; want once: %+v", len(evs), evs)
	}
	if evs[0].Outcome != "failure" || evs[0].Fields["sessions_ended"] != 2 {
		t.Errorf("cluster.fenced = %+v; want outcome failure, sessions_ended 2", evs[0])
	}
	if n := len(env.audited("cluster.confirmed")); n != 0 {
		t.Errorf("cluster.confirmed audited %d times while fenced; want 0", n)
	}
	refused := 0
	for _, ev := range env.audited("connection.refused") {
		if ev.Reason == "this node is not the confirmed primary" {
			refused++
		}
	}
	if refused != 3 {
		t.Errorf("%d logins audited as refused by the fence; want 3", refused)
	}

	lead.set(true, true)
	lead.set(true, true)
	if n := len(env.audited("cluster.confirmed")); n != 1 {
		t.Errorf("cluster.confirmed audited %d times; want once", n)
	}
	back := connectAlice(t, env)
	if _, err := back.Exec(ctx, "select 'confirmed again'").ReadAll(); err != nil {
		t.Errorf("query after leadership came back: %v", err)
	}
	txBack, err := login(env, "App-User", goodPassword)
	if err != nil {
		t.Fatalf("transaction pooling login after leadership came back: %v", err)
	}
	defer txBack.Close(ctx)
	if _, err := txBack.Exec(ctx, "select 'confirmed again'").ReadAll(); err != nil {
		t.Errorf("transaction pooling query after leadership came back: %v", err)
	}
	if n := len(env.audited("cluster.fenced")); n != 1 {
		t.Errorf("cluster.fenced audited %d times in all; want once", n)
	}
}

// TestLeadershipUnnoticedDeadline: a fence whose deadline has passed
// says MayWrite false before it tells anyone; a login is refused all the
// same (nothing is audited as a transition: none was announced).
func TestLeadershipUnnoticedDeadline(t *testing.T) {
	checkGoroutines(t)
	lead := newFakeLeadership(true)
	env := startFencedGateway(t, lead, nil)
	lead.set(false, false)
	c, err := login(env, "alice", goodPassword)
	if c != nil {
		c.Close(context.Background())
	}
	wantPgError(t, "login past an unannounced deadline", err, "57P01", fencedLoginMsg)
	if n := len(env.audited("cluster.fenced")); n != 0 {
		t.Errorf("cluster.fenced audited %d times without a notification; want 0", n)
	}
}

// TestLeadershipStartsFenced: a gateway whose fence has not confirmed
// yet refuses logins, audits no transition, and lets logins in once the
// fence confirms (audited as cluster.confirmed).
func TestLeadershipStartsFenced(t *testing.T) {
	checkGoroutines(t)
	lead := newFakeLeadership(false)
	env := startFencedGateway(t, lead, nil)
	c, err := login(env, "alice", goodPassword)
	if c != nil {
		c.Close(context.Background())
	}
	wantPgError(t, "login before the first confirmation", err, "57P01", fencedLoginMsg)
	if n := len(env.audited("cluster.fenced")); n != 0 {
		t.Errorf("cluster.fenced audited %d times for the starting state; want 0", n)
	}
	lead.set(true, true)
	if n := len(env.audited("cluster.confirmed")); n != 1 {
		t.Errorf("cluster.confirmed audited %d times; want once", n)
	}
	connectAlice(t, env)
}

// lookupHook runs hook during each role lookup: inside the login, after
// the leadership check.
type lookupHook struct {
	RoleLookup
	hook func()
}

func (l lookupHook) LookupRole(ctx context.Context, name string) (pgbackend.Role, error) {
	l.hook()
	return l.RoleLookup.LookupRole(ctx, name)
}

// TestLeadershipLostDuringLogin: the fence falls while a login is under
// way (it passed the leadership check, then the fence ended the sessions
// there were): the session is ended as soon as it relays, in either pool
// mode.
func TestLeadershipLostDuringLogin(t *testing.T) {
	checkGoroutines(t)
	for _, user := range []string{"alice", "App-User"} {
		t.Run(user, func(t *testing.T) {
			lead := newFakeLeadership(true)
			var once sync.Once
			env := startFencedGateway(t, lead, func(c *Config) {
				c.Roles = lookupHook{RoleLookup: c.Roles, hook: func() { once.Do(func() { lead.set(false, true) }) }}
			})
			c, err := login(env, user, goodPassword)
			if err != nil {
				// Ended before its ReadyForQuery reached the client: as
				// good, if it is the fence's 57P01.
				wantPgError(t, "login during the fence", err, "57P01", fencedSessionMsg)
				return
			}
			defer c.Close(context.Background())
			wantFencedSession(t, "query of a session whose login straddled the fence", c)
		})
	}
}
