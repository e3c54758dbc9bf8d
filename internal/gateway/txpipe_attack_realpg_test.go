package gateway

// A hostile tenant against the pipelined hand-over (txhandover.go): the
// hand-over (Close, Close, FunctionCall set_config with expect=) travels in
// the same write as the next client's first messages, and pgshield_guard
// ends the backend (FATAL) on refusal. Each test asserts the safe
// behaviour; an attack that works shows up as a failure (kept, skipped,
// with FINDING in the reason).

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/pgbackend"
	"github.com/pgshield/pgshield/internal/testutil/pgtest"
)

// pipeEnv: role owns database db; a and b are two transaction-mode clients
// of (role, db) sharing its one backend (pool_size 1); ctl and others of
// the same role connect with another application_name (another key).
type pipeEnv struct {
	srv   *pgtest.Server
	env   *gatewayEnv
	role  string
	db    string
	super *pgx.Conn // superuser, in db
	logs  *logBuf
}

func newPipeEnv(t *testing.T, role string) *pipeEnv {
	t.Helper()
	srv := pgtest.Shared(t)
	checkGoroutines(t)
	srv.CreateRole(t, role, goodPassword, "LOGIN")
	db := role + "_db"
	ctx := context.Background()
	super0 := srv.Conn(t)
	if _, err := super0.Exec(ctx, "CREATE DATABASE "+db+" OWNER "+role); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c := srv.Conn(t)
		_, _ = c.Exec(ctx, "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)")
		_, _ = c.Exec(ctx, "ALTER ROLE "+role+" RESET ALL")
	})
	cc, err := pgbackend.PinnedConfig(srv.Cluster.DSN(config.SuperuserRole, db))
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	super, err := pgx.ConnectConfig(cctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { super.Close(context.Background()) })
	pe := &pipeEnv{srv: srv, role: role, db: db, super: super, logs: &logBuf{}}
	pe.env = startRealGatewayWith(t, srv, map[string]string{"pgshield.pool_mode": "transaction", "pgshield.pool_size": "1",
		"pgshield.pool_wait_timeout": "20s"}, func(c *Config) {
		c.Log = slog.New(slog.NewTextHandler(pe.logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	})
	return pe
}

// logBuf collects the gateway's log lines.
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuf) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(b)
}

func (l *logBuf) count(sub string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.buf.String(), sub)
}

func (l *logBuf) lines(sub string, max int) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, ln := range strings.Split(l.buf.String(), "\n") {
		if strings.Contains(ln, sub) && len(out) < max {
			out = append(out, ln)
		}
	}
	return out
}

// connect logs in as the role to db; app != "" gives another pool key.
func (p *pipeEnv) connect(t *testing.T, app string) (*pgx.Conn, error) {
	t.Helper()
	extra := "dbname=" + p.db
	if app != "" {
		extra += " application_name=" + app
	}
	return p.env.connectPgx(t, p.role, goodPassword, extra)
}

func (p *pipeEnv) mustConnect(t *testing.T, app string) *pgx.Conn {
	t.Helper()
	var last error
	for i := 0; i < 20; i++ {
		c, err := p.connect(t, app)
		if err == nil {
			return c
		}
		last = err
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("connect %s: %v", app, last)
	return nil
}

func (p *pipeEnv) superExec(t *testing.T, sqls ...string) {
	t.Helper()
	for _, q := range sqls {
		if _, err := p.super.Exec(context.Background(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// capRows reads the rows b's probes wrote: b's own port (a literal in the
// statement), the port the backend was bound to when it ran, advisory
// locks the backend held, and currval visibility.
type capRow struct {
	want, got string
	locks     int
	cur       string
}

func (p *pipeEnv) capRows(t *testing.T) []capRow {
	t.Helper()
	rows, err := p.super.Query(context.Background(), "SELECT want, coalesce(got, ''), locks, coalesce(cur, '') FROM public.cap ORDER BY n")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []capRow
	for rows.Next() {
		var r capRow
		if err := rows.Scan(&r.want, &r.got, &r.locks, &r.cur); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

// pipeSetup: the probe table, and functions that leave session state the
// light hand-over must clear (the pin scanner does not see into them).
func (p *pipeEnv) pipeSetup(t *testing.T) {
	t.Helper()
	p.superExec(t,
		"CREATE TABLE public.cap (n bigserial, want text, got text, locks int, cur text)",
		"ALTER TABLE public.cap OWNER TO "+p.role,
		"CREATE SEQUENCE public.sq",
		"ALTER SEQUENCE public.sq OWNER TO "+p.role,
		`CREATE FUNCTION public.leave() RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_catalog.pg_advisory_lock(4242);
  PERFORM pg_catalog.nextval('public.sq');
  RETURN 1;
END $$`,
		`CREATE FUNCTION public.leave_pid() RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_catalog.pg_advisory_lock(4242);
  PERFORM pg_catalog.nextval('public.sq');
  RETURN pg_catalog.pg_backend_pid();
END $$`,
		`CREATE FUNCTION public.cur() RETURNS text LANGUAGE plpgsql AS $$
BEGIN RETURN pg_catalog.currval('public.sq')::text; EXCEPTION WHEN others THEN RETURN NULL; END $$`,
	)
}

// probeSQL is b's statement: what it ran bound to and with.
func probeSQL(port string) string {
	return "INSERT INTO public.cap (want, got, locks, cur) SELECT '" + port + "', pg_catalog.inet_client_port()::text, " +
		"(SELECT pg_catalog.count(*)::int FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()), public.cur()"
}

// checkCap fails for every probe that ran on a backend not rebound to b,
// or that saw a's advisory lock or currval.
func (p *pipeEnv) checkCap(t *testing.T) int {
	t.Helper()
	bad := 0
	rows := p.capRows(t)
	for _, r := range rows {
		if r.got != r.want || r.locks != 0 || r.cur != "" {
			bad++
			if bad <= 5 {
				t.Errorf("b's statement (client port %s) ran bound to port %q, with %d advisory lock(s) and currval %q of a's",
					r.want, r.got, r.locks, r.cur)
			}
		}
	}
	t.Logf("%d probe rows, %d leaked", len(rows), bad)
	return bad
}

// TestRealTxPipeAttackLockWait: the hand-over's FunctionCall looks set_config
// up in pg_proc's syscache before pgshield_guard holds interrupts. A role
// that owns its database may VACUUM FULL pg_catalog.pg_proc: that empties
// every backend's pg_proc cache and holds an ACCESS EXCLUSIVE lock, so the
// lookup waits, and a lock_timeout (ALTER ROLE ... SET, which a role may do
// for itself) or a cancel (pg_cancel_backend, same role) turns the
// hand-over into an ERROR, not the guard's FATAL. PostgreSQL then reads on
// and runs b's messages on a backend still bound to a, with a's advisory
// lock and currval.
func TestRealTxPipeAttackLockWait(t *testing.T) {
	p := newPipeEnv(t, "gw_tp_lw")
	p.pipeSetup(t)
	ctx := context.Background()
	ctl := p.mustConnect(t, "ctl")
	if _, err := ctl.Exec(ctx, "ALTER ROLE CURRENT_USER IN DATABASE "+p.db+" SET lock_timeout = '1ms'"); err != nil {
		t.Fatalf("the role's own ALTER ROLE ... SET: %v", err)
	}
	a := p.mustConnect(t, "")
	b := p.mustConnect(t, "")
	vac := p.mustConnect(t, "vac")
	if _, err := vac.Exec(ctx, "SET lock_timeout = 0", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}

	// vacMu is held across each VACUUM FULL; a reconnect takes it (a login
	// runs queries that the lock_timeout fails too).
	var vacMu sync.Mutex
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var vacErr error
	vacs := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			vacMu.Lock()
			_, err := vac.Exec(ctx, "VACUUM FULL pg_catalog.pg_proc", pgx.QueryExecModeSimpleProtocol)
			vacMu.Unlock()
			if err != nil {
				vacErr = err
				continue
			}
			vacs++
		}
	}()
	stopVac := func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}
	defer stopVac()
	reconnect := func(c *pgx.Conn) *pgx.Conn {
		c.Close(ctx)
		vacMu.Lock()
		defer vacMu.Unlock()
		return p.mustConnect(t, "")
	}
	deadline := time.Now().Add(8 * time.Second)
	rounds, bErrs, aErrs := 0, 0, 0
	aPorts := map[string]bool{}
	for i := 0; i < 400 && time.Now().Before(deadline); i++ {
		rounds++
		for j := 0; j < 20; j++ { // a leaves its lock and currval
			var one int
			err := a.QueryRow(ctx, "SELECT public.leave()", pgx.QueryExecModeSimpleProtocol).Scan(&one)
			if err == nil {
				break
			}
			aErrs++
			if a.IsClosed() || isConnErr(err) {
				a = reconnect(a)
			}
		}
		aPorts[localPort(a)] = true
		if _, err := b.Exec(ctx, probeSQL(localPort(b)), pgx.QueryExecModeSimpleProtocol); err != nil {
			bErrs++
			if b.IsClosed() || isConnErr(err) {
				if bErrs <= 3 {
					t.Logf("b's session ended: %v", err)
				}
				b = reconnect(b)
			}
		}
	}
	stopVac()
	if vacs == 0 {
		t.Fatalf("VACUUM FULL pg_proc as the database owner: %v", vacErr)
	}
	t.Logf("%d rounds, %d VACUUM FULL, a errors %d, b errors %d, refused %d, hand-overs ended by an ERROR %d",
		rounds, vacs, aErrs, bErrs, p.env.srv.HandoversRefused(), p.logs.count("failed its hand-over with an error"))
	for _, l := range p.logs.lines("failed its hand-over with an error", 2) {
		t.Log(l)
	}
	fromA := 0
	for _, r := range p.capRows(t) {
		if r.got != r.want && aPorts[r.got] {
			fromA++
		}
	}
	t.Logf("probes of b bound to one of a's ports: %d", fromA)
	p.checkCap(t)
}

// TestRealTxPipeAttackLockWaitCancel: as TestRealTxPipeAttackLockWait, with
// no setting changed: a VACUUM FULL pg_proc empties the pg_proc caches, a
// second one holds the lock while b's hand-over looks set_config up, and a
// pg_cancel_backend of the same role ends the wait with an ERROR. b's
// INSERT then runs (once VACUUM is done) bound to a, with a's lock.
func TestRealTxPipeAttackLockWaitCancel(t *testing.T) {
	p := newPipeEnv(t, "gw_tp_lc")
	p.pipeSetup(t)
	ctx := context.Background()
	ctl := p.mustConnect(t, "ctl")
	vac := p.mustConnect(t, "vac")
	a := p.mustConnect(t, "")
	b := p.mustConnect(t, "")
	deadline := time.Now().Add(10 * time.Second)
	rounds, bErrs := 0, 0
	for i := 0; i < 30 && time.Now().Before(deadline); i++ {
		rounds++
		if _, err := vac.Exec(ctx, "VACUUM FULL pg_catalog.pg_proc", pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatalf("VACUUM FULL pg_proc as the database owner: %v", err)
		}
		var ok bool
		if err := ctl.QueryRow(ctx, "SELECT pg_catalog.pg_cancel_backend($1)", 0).Scan(&ok); err != nil { // warm
			t.Fatal(err)
		}
		var pid int32
		if err := a.QueryRow(ctx, "SELECT public.leave_pid()", pgx.QueryExecModeSimpleProtocol).Scan(&pid); err != nil {
			t.Fatalf("a: %v", err)
		}
		vacDone := make(chan error, 1)
		go func() {
			_, err := vac.Exec(ctx, "VACUUM FULL pg_catalog.pg_proc", pgx.QueryExecModeSimpleProtocol)
			vacDone <- err
		}()
		time.Sleep(3 * time.Millisecond)
		bDone := make(chan error, 1)
		port := localPort(b)
		go func() {
			_, err := b.Exec(ctx, probeSQL(port), pgx.QueryExecModeSimpleProtocol)
			bDone <- err
		}()
		time.Sleep(3 * time.Millisecond)
		if err := ctl.QueryRow(ctx, "SELECT pg_catalog.pg_cancel_backend($1)", pid).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		if err := <-vacDone; err != nil {
			t.Fatal(err)
		}
		if err := <-bDone; err != nil {
			bErrs++
			if b.IsClosed() || isConnErr(err) {
				if bErrs <= 2 {
					t.Logf("b's session ended: %v", err)
				}
				b.Close(ctx)
				b = p.mustConnect(t, "")
			}
		}
		// a's lock goes with its backend if b's session took it down.
		a.Close(ctx)
		a = p.mustConnect(t, "")
	}
	t.Logf("%d rounds, b errors %d, hand-overs ended by an ERROR %d", rounds, bErrs, p.logs.count("failed its hand-over with an error"))
	for _, l := range p.logs.lines("failed its hand-over with an error", 1) {
		t.Log(l)
	}
	p.checkCap(t)
}

// TestRealTxPipeAttackLockWaitCapture: the same wait, against pgx's
// statement cache. b has a query cached (its name is the SQL's SHA-256); a
// plants another statement under that name. b's next batch is the
// hand-over, the gateway's re-Parse of b's statement and b's Bind: with the
// hand-over ended by a cancel, the rebind never dropped a's statement, the
// re-Parse fails (42P05, swallowed) and b's Bind runs a's statement with
// b's parameter.
func TestRealTxPipeAttackLockWaitCapture(t *testing.T) {
	p := newPipeEnv(t, "gw_tp_lx")
	p.pipeSetup(t)
	p.superExec(t, "CREATE TABLE public.stolen (v text)", "ALTER TABLE public.stolen OWNER TO "+p.role)
	ctx := context.Background()
	ctl := p.mustConnect(t, "ctl")
	vac := p.mustConnect(t, "vac")
	// Neither needs pg_proc, which the VACUUM still holds when they run.
	const q = "SELECT $1::text"
	name := pgxStmtName(q)
	evil := "INSERT INTO public.stolen (v) VALUES ($1::text) RETURNING v"
	deadline := time.Now().Add(10 * time.Second)
	rounds := 0
	for i := 0; i < 20 && time.Now().Before(deadline); i++ {
		rounds++
		a := p.mustConnect(t, "")
		b := p.mustConnect(t, "")
		var got string
		if err := b.QueryRow(ctx, q, "warm-up").Scan(&got); err != nil { // cached by pgx
			t.Fatal(err)
		}
		if codes := rawBatch(t, a, &pgproto3.Parse{Name: name, Query: evil}, &pgproto3.Sync{}); len(codes) != 0 {
			t.Fatalf("a's Parse: %v", codes)
		}
		pid, _ := backendOf(t, a)
		// The backend is a's now, with set_config out of its cache.
		if _, err := vac.Exec(ctx, "VACUUM FULL pg_catalog.pg_proc", pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatalf("VACUUM FULL: %v", err)
		}
		var ok bool
		if err := ctl.QueryRow(ctx, "SELECT pg_catalog.pg_cancel_backend($1)", 0).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		vacDone := make(chan error, 1)
		go func() {
			_, err := vac.Exec(ctx, "VACUUM FULL pg_catalog.pg_proc", pgx.QueryExecModeSimpleProtocol)
			vacDone <- err
		}()
		time.Sleep(3 * time.Millisecond)
		bDone := make(chan error, 1)
		go func() {
			var v string
			bDone <- b.QueryRow(ctx, q, "b's secret").Scan(&v)
		}()
		time.Sleep(3 * time.Millisecond)
		if err := ctl.QueryRow(ctx, "SELECT pg_catalog.pg_cancel_backend($1)", pid).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		if err := <-vacDone; err != nil {
			t.Fatal(err)
		}
		err := <-bDone
		var n int
		if err := p.super.QueryRow(ctx, "SELECT count(*) FROM public.stolen").Scan(&n); err != nil {
			t.Fatal(err)
		}
		a.Close(ctx)
		b.Close(ctx)
		if n > 0 {
			t.Errorf("round %d: a's planted statement ran with b's parameter (%d row(s) in a's table); b got %v", rounds, n, err)
			break
		}
	}
	t.Logf("%d rounds, hand-overs ended by an ERROR %d", rounds, p.logs.count("failed its hand-over with an error"))
}

func isConnErr(err error) bool {
	if err == nil {
		return false
	}
	var pe *pgconn.PgError
	if ok := asPgErr(err, &pe); ok {
		return strings.HasPrefix(pe.Code, "08") || strings.HasPrefix(pe.Code, "57P")
	}
	return true
}

func asPgErr(err error, pe **pgconn.PgError) bool {
	for e := err; e != nil; {
		if x, ok := e.(*pgconn.PgError); ok {
			*pe = x
			return true
		}
		u, ok := e.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		e = u.Unwrap()
	}
	return false
}

// rawPhases writes each phase of msgs to c's connection (a pause between
// them) and reads answers until want ReadyForQuery; it returns the
// SQLSTATEs of the errors.
func rawPhases(t *testing.T, c *pgx.Conn, want int, phases ...[]pgproto3.FrontendMessage) ([]string, error) {
	t.Helper()
	pc := c.PgConn()
	fe := pc.Frontend()
	_ = pc.Conn().SetDeadline(time.Now().Add(20 * time.Second))
	defer pc.Conn().SetDeadline(time.Time{})
	for i, ph := range phases {
		if i > 0 {
			time.Sleep(50 * time.Millisecond)
		}
		for _, m := range ph {
			fe.Send(m)
		}
		if err := fe.Flush(); err != nil {
			return nil, err
		}
	}
	var codes []string
	for want > 0 {
		msg, err := fe.Receive()
		if err != nil {
			return codes, err
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			codes = append(codes, m.Code)
		case *pgproto3.ReadyForQuery:
			want--
		case *pgproto3.ParameterStatus:
			if m.Name == pgbackend.DirtyParam {
				t.Errorf("the client received ParameterStatus %s", m.Name)
			}
		}
	}
	return codes, nil
}

func rawPhases2(t *testing.T, c *pgx.Conn, want int, phases ...[]pgproto3.FrontendMessage) error {
	t.Helper()
	codes, err := rawPhases(t, c, want, phases...)
	if err == nil && len(codes) != 0 {
		err = fmt.Errorf("errors %v", codes)
	}
	return err
}

func ins(tag string) *pgproto3.Query {
	return &pgproto3.Query{String: "INSERT INTO public.once (tag, pid) VALUES ('" + tag + "', pg_catalog.pg_backend_pid())"}
}

// TestRealTxPipeAttackReplayOnce: a hand-over pgshield_guard refuses (the
// role's settings changed since the backend opened) ran nothing of the
// client's; the gateway resends the client's bytes to another backend, and
// every statement runs exactly once there, whatever the first batch is:
// several Queries, a batch over the 32 KiB flush, a message larger than
// the read buffer (Query, Bind), an extended batch whose Sync comes later,
// one with a Flush, COPY FROM STDIN, a Terminate right behind, pgx's cached
// statements re-prepared behind the hand-over.
func TestRealTxPipeAttackReplayOnce(t *testing.T) {
	p := newPipeEnv(t, "gw_tp_ro")
	p.superExec(t, "CREATE TABLE public.once (tag text, pid int)", "ALTER TABLE public.once OWNER TO "+p.role)
	ctx := context.Background()
	a := p.mustConnect(t, "")
	pad := strings.Repeat("x", 40<<10)
	type tc struct {
		name  string
		tags  []string // each must be in once exactly once
		maybe bool     // the client hung up: at most once
		run   func(t *testing.T, b *pgx.Conn) error
	}
	cases := []tc{
		{"two queries", []string{"q1", "q2"}, false, func(t *testing.T, b *pgx.Conn) error {
			return rawPhases2(t, b, 2, []pgproto3.FrontendMessage{ins("q1"), ins("q2")})
		}},
		{"batch over 32 KiB", func() []string {
			var s []string
			for i := 0; i < 500; i++ {
				s = append(s, "big"+itoa(i))
			}
			return s
		}(), false, func(t *testing.T, b *pgx.Conn) error {
			var ms []pgproto3.FrontendMessage
			for i := 0; i < 500; i++ {
				ms = append(ms, &pgproto3.Query{String: "INSERT INTO public.once (tag) VALUES ('big" + itoa(i) + "') -- " + strings.Repeat("y", 80)})
			}
			return rawPhases2(t, b, 500, ms)
		}},
		{"query over the read buffer", []string{"huge"}, false, func(t *testing.T, b *pgx.Conn) error {
			return rawPhases2(t, b, 1, []pgproto3.FrontendMessage{&pgproto3.Query{String: "INSERT INTO public.once (tag) VALUES ('huge') -- " + pad}})
		}},
		{"bind over the read buffer", []string{"hugebind"}, false, func(t *testing.T, b *pgx.Conn) error {
			return rawPhases2(t, b, 1, []pgproto3.FrontendMessage{
				&pgproto3.Parse{Query: "INSERT INTO public.once (tag) SELECT 'hugebind' WHERE length($1::text) > 0"},
				&pgproto3.Bind{Parameters: [][]byte{[]byte(pad)}}, &pgproto3.Execute{}, &pgproto3.Sync{}})
		}},
		{"Sync later", []string{"late"}, false, func(t *testing.T, b *pgx.Conn) error {
			return rawPhases2(t, b, 1, []pgproto3.FrontendMessage{
				&pgproto3.Parse{Query: "INSERT INTO public.once (tag) VALUES ('late')"}, &pgproto3.Bind{}, &pgproto3.Execute{}},
				[]pgproto3.FrontendMessage{&pgproto3.Sync{}})
		}},
		{"Flush", []string{"flush"}, false, func(t *testing.T, b *pgx.Conn) error {
			return rawPhases2(t, b, 1, []pgproto3.FrontendMessage{
				&pgproto3.Parse{Query: "INSERT INTO public.once (tag) VALUES ('flush')"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Flush{}},
				[]pgproto3.FrontendMessage{&pgproto3.Sync{}})
		}},
		{"COPY FROM STDIN", []string{"copy1", "copy2"}, false, func(t *testing.T, b *pgx.Conn) error {
			return rawPhases2(t, b, 1, []pgproto3.FrontendMessage{&pgproto3.Query{String: "COPY public.once (tag) FROM STDIN"},
				&pgproto3.CopyData{Data: []byte("copy1\ncopy2\n")}, &pgproto3.CopyDone{}})
		}},
		{"pgx cached statement", []string{"cached"}, false, func(t *testing.T, b *pgx.Conn) error {
			// b prepared it on an earlier backend: re-prepared behind the hand-over.
			qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			_, err := b.Exec(qctx, "INSERT INTO public.once (tag) SELECT $1::text WHERE $1::text <> 'warm'", "cached")
			return err
		}},
		{"Terminate behind", []string{"term"}, true, func(t *testing.T, b *pgx.Conn) error {
			pc := b.PgConn()
			fe := pc.Frontend()
			fe.Send(ins("term"))
			fe.Send(&pgproto3.Terminate{})
			err := fe.Flush()
			time.Sleep(200 * time.Millisecond)
			return err
		}},
	}
	for i, c := range cases {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			b := p.mustConnect(t, "")
			if c.name == "pgx cached statement" {
				if _, err := b.Exec(ctx, "INSERT INTO public.once (tag) SELECT $1::text WHERE $1::text <> 'warm'", "warm"); err != nil {
					t.Fatal(err)
				}
			}
			pa, _ := backendOf(t, a) // a holds the one backend last
			refused0 := p.env.srv.HandoversRefused()
			p.superExec(t, "ALTER ROLE "+p.role+" SET work_mem = '"+itoa(5+i)+"MB'")
			err := c.run(t, b)
			time.Sleep(50 * time.Millisecond)
			if got := p.env.srv.HandoversRefused(); got != refused0+1 {
				// The refusal was read before awaitHandover looked (fixed:
				// see TestRealTxPipeAttackRefusalRace).
				b.Close(ctx)
				t.Fatalf("%s: the refusal was not acted on (%d -> %d refused); client: %v", c.name, refused0, got, err)
			}
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			for _, tag := range c.tags {
				var n int
				var pid *int32
				if err := p.super.QueryRow(ctx, "SELECT count(*), max(pid) FROM public.once WHERE tag = $1", tag).Scan(&n, &pid); err != nil {
					t.Fatal(err)
				}
				if n > 1 || (n == 0 && !c.maybe) {
					t.Errorf("%s: %q ran %d times; want once", c.name, tag, n)
				}
				if pid != nil && *pid == pa {
					t.Errorf("%s: %q ran on the backend that refused its hand-over (%d)", c.name, tag, pa)
				}
			}
			b.Close(ctx)
		})
	}
	if t.Failed() {
		for _, l := range p.logs.lines("level=", 40) {
			t.Log(l)
		}
	}
}

// TestRealTxPipeAttackRefusalRace: a refusal that the downstream copy reads
// (FATAL, then EOF: handoverLost clears t.mu.ho and sends false) before the
// upstream, back from its write, looks at t.mu.ho in awaitHandover: it then
// finds no hand-over pending and goes on as if handed over, on a backend
// that is gone. The client's statement is never replayed: its Query gets
// no answer (the session hangs, holding the key's one backend slot) or its
// next message ends the session.
func TestRealTxPipeAttackRefusalRace(t *testing.T) {
	p := newPipeEnv(t, "gw_tp_rr")
	p.superExec(t, "CREATE TABLE public.once (tag text, pid int)", "ALTER TABLE public.once OWNER TO "+p.role)
	ctx := context.Background()
	a := p.mustConnect(t, "")
	b := p.mustConnect(t, "")
	deadline := time.Now().Add(12 * time.Second)
	rounds, lost := 0, 0
	for i := 0; i < 150 && time.Now().Before(deadline); i++ {
		rounds++
		backendOf(t, a)
		p.superExec(t, "ALTER ROLE "+p.role+" SET work_mem = '"+itoa(64+i%2)+"kB'")
		tag := "r" + itoa(i)
		qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		_, err := b.Exec(qctx, "INSERT INTO public.once (tag) VALUES ('"+tag+"')", pgx.QueryExecModeSimpleProtocol)
		cancel()
		var n int
		if err2 := p.super.QueryRow(ctx, "SELECT count(*) FROM public.once WHERE tag = $1", tag).Scan(&n); err2 != nil {
			t.Fatal(err2)
		}
		if err != nil || n != 1 {
			lost++
			t.Errorf("round %d: b's INSERT after a refused hand-over: %v, ran %d times", i, err, n)
			// b's session is stuck or gone, and may hold the one backend.
			b.Close(ctx)
			a.Close(ctx)
			break
		}
	}
	t.Logf("%d rounds, %d lost, %d refused", rounds, lost, p.env.srv.HandoversRefused())
}

// TestRealTxPipeAttackDirtyReport: pgshield_guard's ParameterStatus
// pgshield_guard.dirty never reaches the client that caused it (simple,
// extended, in a failed transaction, in an explicit transaction block), and
// it makes the next hand-over a full one (DISCARD ALL ahead, no refusal):
// the next client does not see the hidden setting.
func TestRealTxPipeAttackDirtyReport(t *testing.T) {
	p := newPipeEnv(t, "gw_tp_dr")
	p.superExec(t,
		`CREATE FUNCTION public.dirty() RETURNS text LANGUAGE sql AS $$SELECT pg_catalog.set_config('work_mem', '7MB', false)$$`,
		`CREATE FUNCTION public.dirty_fail() RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_catalog.set_config('work_mem', '9MB', false); PERFORM 1/0; RETURN 'no'; END $$`)
	a := p.mustConnect(t, "")
	b := p.mustConnect(t, "")
	forms := []struct {
		name string
		msgs []pgproto3.FrontendMessage
		z    int
	}{
		{"simple", []pgproto3.FrontendMessage{&pgproto3.Query{String: "SELECT public.dirty()"}}, 1},
		{"extended", []pgproto3.FrontendMessage{&pgproto3.Parse{Query: "SELECT public.dirty()"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}}, 1},
		{"failed", []pgproto3.FrontendMessage{&pgproto3.Query{String: "SELECT public.dirty_fail()"}}, 1},
		{"block", []pgproto3.FrontendMessage{&pgproto3.Query{String: "BEGIN; SELECT public.dirty(); COMMIT"}}, 1},
		{"two in a row", []pgproto3.FrontendMessage{&pgproto3.Query{String: "SELECT public.dirty()"}, &pgproto3.Query{String: "SELECT public.dirty()"}}, 2},
	}
	for _, f := range forms {
		backendOf(t, a)
		full0, refused0 := p.env.srv.handovers.full.Load(), p.env.srv.HandoversRefused()
		if _, err := rawPhases(t, b, f.z, f.msgs); err != nil {
			t.Fatalf("%s: %v", f.name, err)
		}
		var wm string
		simple(t, a, "SELECT pg_catalog.current_setting('work_mem')", &wm)
		full1, refused1 := p.env.srv.handovers.full.Load(), p.env.srv.HandoversRefused()
		t.Logf("%-12s a sees work_mem %s (full %d, refused %d)", f.name, wm, full1-full0, refused1-refused0)
		if wm != "4MB" {
			t.Errorf("%s: a sees b's work_mem %s", f.name, wm)
		}
		if f.name != "failed" && (full1 == full0 || refused1 != refused0) {
			t.Errorf("%s: hand-over to a: full %d -> %d, refused %d -> %d; want a full one (the report), no refusal",
				f.name, full0, full1, refused0, refused1)
		}
	}
}
