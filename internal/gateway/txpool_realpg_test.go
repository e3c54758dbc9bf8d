package gateway

// Transaction pooling against the real PostgreSQL: clients share backends
// transaction by transaction, each seeing only its own state.

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshield/pgshield/internal/testutil/pgtest"
)

func txEnv(t *testing.T, srv *pgtest.Server, size string) *gatewayEnv {
	return startRealGateway(t, srv, map[string]string{"pgshield.pool_mode": "transaction", "pgshield.pool_size": size,
		"pgshield.pool_wait_timeout": "20s"})
}

// backendOf is the backend serving c's statement, and the client port it
// is bound to (BindClient: pg_stat_activity shows the client served).
func backendOf(t *testing.T, c *pgx.Conn) (pid int32, port int32) {
	t.Helper()
	simple(t, c, "SELECT pg_catalog.pg_backend_pid(), client_port FROM pg_catalog.pg_stat_activity WHERE pid = pg_catalog.pg_backend_pid()", &pid, &port)
	return pid, port
}

func localPort(c *pgx.Conn) string {
	a := c.PgConn().Conn().LocalAddr().String()
	return a[strings.LastIndexByte(a, ':')+1:]
}

// TestRealTxPoolInterleave: two clients take turns on one backend
// (pool_size 1); each sees only its own transaction's state and is the
// identity the backend is bound to while it runs; the second waits while
// the first is in a transaction.
func TestRealTxPoolInterleave(t *testing.T) {
	srv := pgtest.Shared(t)
	checkGoroutines(t)
	srv.CreateRole(t, "gw_tx_il", goodPassword, "LOGIN")
	env := txEnv(t, srv, "1")
	ctx := context.Background()
	a, err := env.connectPgx(t, "gw_tx_il", goodPassword, "")
	if err != nil {
		t.Fatal(err)
	}
	b, err := env.connectPgx(t, "gw_tx_il", goodPassword, "")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		pa, porta := backendOf(t, a)
		pb, portb := backendOf(t, b)
		if pa != pb {
			t.Fatalf("backends %d and %d with pool_size 1", pa, pb)
		}
		if itoa(int(porta)) != localPort(a) || itoa(int(portb)) != localPort(b) {
			t.Fatalf("client_port %d/%d; want %s/%s: each client's own identity", porta, portb, localPort(a), localPort(b))
		}
	}

	mustExec(t, a, "BEGIN")
	mustExec(t, a, "SET LOCAL work_mem = '7MB'")
	done := make(chan string, 1)
	go func() {
		var v string
		_ = b.QueryRow(ctx, "SELECT pg_catalog.current_setting('work_mem')", pgx.QueryExecModeSimpleProtocol).Scan(&v)
		done <- v
	}()
	select {
	case v := <-done:
		t.Fatalf("b ran (work_mem %s) while a held the only backend in a transaction", v)
	case <-time.After(300 * time.Millisecond):
	}
	var v string
	simple(t, a, "SELECT pg_catalog.current_setting('work_mem')", &v)
	if v != "7MB" {
		t.Errorf("a's work_mem in its transaction = %s; want 7MB", v)
	}
	mustExec(t, a, "COMMIT")
	select {
	case v := <-done:
		if v != "4MB" {
			t.Errorf("b's work_mem = %q; want the default 4MB", v)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("b did not get the backend after a's COMMIT")
	}
	// A failed transaction stays the client's until its ROLLBACK.
	mustExec(t, a, "BEGIN")
	if _, err := a.Exec(ctx, "SELECT 1/0"); err == nil {
		t.Fatal("1/0 succeeded")
	}
	go func() {
		var n int
		_ = b.QueryRow(ctx, "SELECT 1", pgx.QueryExecModeSimpleProtocol).Scan(&n)
		done <- itoa(n)
	}()
	time.Sleep(100 * time.Millisecond)
	mustExec(t, a, "ROLLBACK")
	if v := <-done; v != "1" {
		t.Errorf("b after a's ROLLBACK = %s", v)
	}
	closeConn(t, a)
	closeConn(t, b)
	env.waitIdle(t, "gw_tx_il", 1)
}

// TestRealTxPoolPrepared: pgx's statement cache (named protocol-level
// statements) works while clients of a pool of one alternate, each change
// of client resetting the backend (DISCARD ALL drops every statement).
func TestRealTxPoolPrepared(t *testing.T) {
	srv := pgtest.Shared(t)
	checkGoroutines(t)
	srv.CreateRole(t, "gw_tx_ps", goodPassword, "LOGIN")
	env := txEnv(t, srv, "1")
	ctx := context.Background()
	var conns []*pgx.Conn
	for i := 0; i < 3; i++ {
		c, err := env.connectPgx(t, "gw_tx_ps", goodPassword, "")
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for round := 0; round < 5; round++ {
		for i, c := range conns {
			var got int
			// Same SQL in every client: the same statement name, each
			// client's own.
			if err := c.QueryRow(ctx, "SELECT $1::int + 1", round*10+i).Scan(&got); err != nil {
				t.Fatalf("round %d client %d: %v", round, i, err)
			}
			if got != round*10+i+1 {
				t.Fatalf("got %d; want %d", got, round*10+i+1)
			}
			var s string
			if err := c.QueryRow(ctx, "SELECT $1::text || 'x'", itoa(i)).Scan(&s); err != nil || s != itoa(i)+"x" {
				t.Fatalf("round %d client %d: %q, %v", round, i, s, err)
			}
		}
	}
	// A Bind too large for the gateway to hold whole (100 KB parameter)
	// still gets its statement re-prepared.
	big := make([]byte, 100<<10)
	for round := 0; round < 3; round++ {
		for i, c := range conns {
			var n int
			if err := c.QueryRow(ctx, "SELECT pg_catalog.length($1::bytea)", big).Scan(&n); err != nil || n != len(big) {
				t.Fatalf("round %d client %d: large Bind: %d, %v", round, i, n, err)
			}
		}
	}
	// A statement closed and prepared again under its name with other
	// text: the backend that kept the old one gets it closed first.
	a := conns[0]
	if _, err := a.PgConn().Prepare(ctx, "gw_named", "SELECT 1", nil); err != nil {
		t.Fatal(err)
	}
	var n int
	simple(t, conns[1], "SELECT 5", &n) // the backend changes clients
	if err := a.PgConn().Deallocate(ctx, "gw_named"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.PgConn().Prepare(ctx, "gw_named", "SELECT 2", nil); err != nil {
		t.Fatalf("Prepare again after Close = %v", err)
	}
	simple(t, conns[1], "SELECT 5", &n)
	rr := a.PgConn().ExecPrepared(ctx, "gw_named", nil, nil, nil).Read()
	if rr.Err != nil || len(rr.Rows) != 1 || string(rr.Rows[0][0]) != "2" {
		t.Fatalf("gw_named = %v, %v; want 2", rr.Rows, rr.Err)
	}
	// Another client never sees a's statements.
	rr = conns[1].PgConn().ExecPrepared(ctx, "gw_named", nil, nil, nil).Read()
	var pe *pgconn.PgError
	if !errors.As(rr.Err, &pe) || pe.Code != "26000" {
		t.Fatalf("another client's ExecPrepared(gw_named) = %v; want 26000", rr.Err)
	}
	// pgx's prepared mode under concurrency.
	var wg sync.WaitGroup
	errs := make(chan error, len(conns))
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < 50; k++ {
				var got int
				if err := c.QueryRow(ctx, "SELECT $1::int * 2", i*1000+k).Scan(&got); err != nil || got != (i*1000+k)*2 {
					errs <- errors.Join(err, errors.New("wrong result "+itoa(got)))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestRealTxPoolPinning: session features keep the client on its backend
// (pool_size 2, so the other client goes on); after it leaves, the backend
// is reset like any other.
func TestRealTxPoolPinning(t *testing.T) {
	srv := pgtest.Shared(t)
	checkGoroutines(t)
	srv.CreateRole(t, "gw_tx_pin", goodPassword, "LOGIN")
	env := txEnv(t, srv, "2")
	ctx := context.Background()
	for _, tt := range []struct {
		desc, make, check, want string
	}{
		{"SET", "SET work_mem = '7MB'", "SELECT pg_catalog.current_setting('work_mem')", "7MB"},
		{"temp table", "CREATE TEMP TABLE gw_tx_tmp AS SELECT 42 AS x", "SELECT x::text FROM gw_tx_tmp", "42"},
		{"PREPARE", "PREPARE gw_tx_p AS SELECT 'p'::text", "EXECUTE gw_tx_p", "p"},
		{"advisory lock", "SELECT pg_catalog.pg_advisory_lock(77)", "SELECT pg_catalog.count(*)::text FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()", "1"},
		{"WITH HOLD", "BEGIN; DECLARE gw_tx_c SCROLL CURSOR WITH HOLD FOR SELECT 'h'::text; COMMIT", "FETCH ABSOLUTE 1 FROM gw_tx_c", "h"},
	} {
		t.Run(tt.desc, func(t *testing.T) {
			a, err := env.connectPgx(t, "gw_tx_pin", goodPassword, "")
			if err != nil {
				t.Fatal(err)
			}
			b, err := env.connectPgx(t, "gw_tx_pin", goodPassword, "")
			if err != nil {
				t.Fatal(err)
			}
			mustExec(t, a, tt.make)
			pid, _ := backendOf(t, a)
			for i := 0; i < 3; i++ {
				if p, _ := backendOf(t, b); p == pid {
					t.Fatal("the other client got the pinned backend")
				}
				var got string
				simple(t, a, tt.check, &got)
				if got != tt.want {
					t.Fatalf("%s = %q; want %q", tt.check, got, tt.want)
				}
			}
			closeConn(t, a)
			closeConn(t, b)
			env.waitIdle(t, "gw_tx_pin", 2)
			// Both backends are now b's or reset: state gone for anyone.
			c, err := env.connectPgx(t, "gw_tx_pin", goodPassword, "")
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 4; i++ {
				var n string
				simple(t, c, "SELECT (SELECT pg_catalog.count(*) FROM pg_catalog.pg_class WHERE relname = 'gw_tx_tmp')::text || pg_catalog.current_setting('work_mem') || (SELECT pg_catalog.count(*) FROM pg_catalog.pg_prepared_statements)::text", &n)
				if n != "04MB0" {
					t.Fatalf("state after reset = %q; want 04MB0", n)
				}
			}
			closeConn(t, c)
		})
	}

	// LISTEN: notifications keep reaching the client.
	a, err := env.connectPgx(t, "gw_tx_pin", goodPassword, "")
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, a, "LISTEN gw_tx_chan")
	super := srv.Conn(t)
	for i := 0; i < 2; i++ {
		if _, err := super.Exec(ctx, "NOTIFY gw_tx_chan, 'hi'"); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		n, err := a.WaitForNotification(wctx)
		cancel()
		if err != nil || n.Payload != "hi" {
			t.Fatalf("notification %d: %v, %v", i, n, err)
		}
	}
}

// TestRealTxPoolCancelAndTerminate: a client's cancel key reaches the
// backend running its query, and nothing while it is idle; terminating
// the backend serving one client ends that client only.
func TestRealTxPoolCancelAndTerminate(t *testing.T) {
	srv := pgtest.Shared(t)
	checkGoroutines(t)
	srv.CreateRole(t, "gw_tx_cx", goodPassword, "LOGIN")
	env := txEnv(t, srv, "2")
	ctx := context.Background()
	a, err := env.connectPgx(t, "gw_tx_cx", goodPassword, "")
	if err != nil {
		t.Fatal(err)
	}
	b, err := env.connectPgx(t, "gw_tx_cx", goodPassword, "")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := a.Exec(ctx, "SELECT pg_catalog.pg_sleep(30)")
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	// b is idle: its key reaches nothing, not a's query.
	if err := b.PgConn().CancelRequest(ctx); err != nil {
		t.Logf("idle CancelRequest: %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("an idle client's cancel ended another's query: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	if err := a.PgConn().CancelRequest(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "57014" {
			t.Errorf("cancelled query = %v; want 57014", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("cancel did not reach a's backend")
	}

	// b's last backend, parked, is terminated: b's next query gets
	// another, unharmed.
	super := srv.Conn(t)
	bpid, _ := backendOf(t, b)
	var okb bool
	if err := super.QueryRow(ctx, "SELECT pg_catalog.pg_terminate_backend($1, 10000)", bpid).Scan(&okb); err != nil || !okb {
		t.Fatal(err)
	}
	if p, _ := backendOf(t, b); p == bpid {
		t.Fatal("b was served by its terminated backend")
	}

	mustExec(t, a, "BEGIN")
	pid, _ := backendOf(t, a)
	var ok bool
	if err := super.QueryRow(ctx, "SELECT pg_catalog.pg_terminate_backend($1, 10000)", pid).Scan(&ok); err != nil || !ok {
		t.Fatal(err)
	}
	if _, err := a.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("a's query after its backend was terminated succeeded")
	}
	for i := 0; i < 3; i++ {
		var n int
		simple(t, b, "SELECT 7", &n)
		if n != 7 {
			t.Fatal(n)
		}
	}
}

// TestRealTxPoolCopy: COPY in and out through transaction pooling, two
// clients alternating on one backend; each COPY's data reaches its own
// table and the backend is released after it.
func TestRealTxPoolCopy(t *testing.T) {
	srv := pgtest.Shared(t)
	checkGoroutines(t)
	srv.CreateRole(t, "gw_tx_copy", goodPassword, "LOGIN")
	super := srv.Conn(t)
	ctx := context.Background()
	if _, err := super.Exec(ctx, "CREATE TABLE IF NOT EXISTS public.gw_tx_copy_t (c int, v int); GRANT INSERT, SELECT ON public.gw_tx_copy_t TO gw_tx_copy"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = srv.Conn(t).Exec(ctx, "DROP TABLE public.gw_tx_copy_t") })
	env := txEnv(t, srv, "1")
	var conns []*pgx.Conn
	for i := 0; i < 2; i++ {
		c, err := env.connectPgx(t, "gw_tx_copy", goodPassword, "")
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for round := 0; round < 3; round++ {
		for i, c := range conns {
			rows := make([][]any, 100)
			for k := range rows {
				rows[k] = []any{int32(i), int32(k)}
			}
			n, err := c.CopyFrom(ctx, pgx.Identifier{"public", "gw_tx_copy_t"}, []string{"c", "v"}, pgx.CopyFromRows(rows))
			if err != nil || n != 100 {
				t.Fatalf("round %d client %d: CopyFrom = %d, %v", round, i, n, err)
			}
			var buf strings.Builder
			if _, err := c.PgConn().CopyTo(ctx, &buf, "COPY (SELECT count(*) FROM public.gw_tx_copy_t WHERE c = "+itoa(i)+") TO STDOUT"); err != nil {
				t.Fatal(err)
			}
			if got, want := strings.TrimSpace(buf.String()), itoa(100*(round+1)); got != want {
				t.Fatalf("client %d has %s rows; want %s", i, got, want)
			}
		}
	}
}
