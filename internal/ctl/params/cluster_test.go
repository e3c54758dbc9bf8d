package params

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/postgres"
	"github.com/pgshield/pgshield/internal/testutil/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const pgBinDir = "/usr/lib/postgresql/15/bin"

// TestConfLine: the line postgres -C reads is the one Patroni writes
// (quotes and backslashes doubled), so a quote cannot end the value.
func TestConfLine(t *testing.T) {
	if got := confLine("search_path", `a' , shared_buffers = '1\`); got != `search_path = 'a'' , shared_buffers = ''1\\'`+"\n" {
		t.Errorf("confLine = %q", got)
	}
	for _, a := range configCheckArgs("work_mem") {
		if strings.Contains(a, "12MB") {
			t.Errorf("the value is in postgres -C's arguments: %q", a)
		}
	}
}

func TestFatalMessage(t *testing.T) {
	stderr := `2026-12-07 09:36:00.296 GMT [14192] LOG:  skipping missing configuration file "/proc/self/pgshield-none/postgresql.auto.conf"
2026-12-07 09:36:00.296 GMT [14192] LOG:  invalid value for parameter "wal_level": "foo"
2026-12-07 09:36:00.296 GMT [14192] HINT:  Available values: minimal, replica, logical.
2026-12-07 09:36:00.296 GMT [14192] FATAL:  configuration file "/dev/stdin" contains errors
`
	if got := fatalMessage(stderr); got != `invalid value for parameter "wal_level": "foo" Available values: minimal, replica, logical.` {
		t.Errorf("fatalMessage = %q", got)
	}
	if got := fatalMessage("no tags\n"); got != "" {
		t.Errorf("fatalMessage = %q", got)
	}
}

// checkCluster is a postgres.Cluster for checkWithPostgres: Debian's
// PostgreSQL 15 and its OS user. postgres -C starts no server.
func checkCluster(t *testing.T) *postgres.Cluster {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("postgres -C runs as the postgres OS user: needs root")
	}
	if _, err := os.Stat(pgBinDir + "/postgres"); err != nil {
		t.Skip("PostgreSQL 15 is not installed")
	}
	u, err := postgres.LookupOSUser("postgres")
	if err != nil {
		t.Skip(err)
	}
	return &postgres.Cluster{Cfg: &config.Config{PGBinDir: pgBinDir}, User: u}
}

// TestCheckWithPostgres: PostgreSQL's parser decides, and what goes to
// Patroni is its canonical form; a quote in a value stays in the value.
func TestCheckWithPostgres(t *testing.T) {
	cl := checkCluster(t)
	ctx := context.Background()
	for _, c := range []struct{ name, value, want string }{
		{"work_mem", "12MB", "12288"},
		{"max_connections", "1e3", "1000"}, // Patroni's int() would not read "1e3"
		{"shared_buffers", "0x10", "16"},
		{"wal_level", "LOGICAL", "logical"},
		{"checkpoint_timeout", "5min", "300"},
		{"log_line_prefix", `a' , shared_buffers = '1\`, `a' , shared_buffers = '1\`},
		{"default_transaction_isolation", "serializable", "serializable"},
	} {
		got, err := checkWithPostgres(ctx, cl, c.name, c.value)
		if err != nil || got != c.want {
			t.Errorf("%s = %q: %q, %v; want %q", c.name, c.value, got, err, c.want)
		}
	}
	for _, c := range []struct{ name, value, want string }{
		{"work_mem", "abc", `invalid value for parameter "work_mem": "abc"`},
		{"wal_level", "foo", "Available values: minimal, replica, logical."},
		{"max_connections", "0", `0 is outside the valid range for parameter "max_connections"`},
		{"huge_pages", "maybe", `invalid value for parameter "huge_pages"`},
	} {
		_, err := checkWithPostgres(ctx, cl, c.name, c.value)
		if ce, ok := clienterr.As(err); !ok || ce.Code != apitype.CodeInvalid || !strings.Contains(ce.Message, c.want) {
			t.Errorf("%s = %q: %v; want %q", c.name, c.value, err, c.want)
		}
	}
}

// fakePatroni stands in for ClusterSet: it records what it was given
// and, unless drop, applies it to the test server the way Patroni does
// (the value in the server's configuration, then a reload; ALTER SYSTEM
// here, for want of Patroni's postgresql.conf).
type fakeClusterSet struct {
	srv  *pgtest.Server
	t    *testing.T
	mu   sync.Mutex
	got  [][2]string
	drop bool
	err  error
}

func (f *fakeClusterSet) set(ctx context.Context, name, value string) error {
	f.mu.Lock()
	f.got = append(f.got, [2]string{name, value})
	f.mu.Unlock()
	if f.err != nil || f.drop {
		return f.err
	}
	conn := f.srv.Conn(f.t)
	if _, err := conn.Exec(ctx, "ALTER SYSTEM SET "+pgx.Identifier{name}.Sanitize()+" TO "+quoteLiteral(value)); err != nil {
		return err
	}
	_, err := conn.Exec(ctx, "SELECT pg_catalog.pg_reload_conf()")
	return err
}

func (f *fakeClusterSet) calls() [][2]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.got)
}

// TestRealClusterParameter: on a cluster node a PostgreSQL parameter is
// checked by PostgreSQL, handed to ClusterSet in its canonical form (never
// ALTER SYSTEM), audited with the value redacted, and returned once this
// node's PostgreSQL shows it or says it needs a restart; what the checks
// refuse never reaches ClusterSet.
func TestRealClusterParameter(t *testing.T) {
	srv := pgtest.Shared(t)
	ctx := context.Background()
	cat := srv.Catalog(t)
	f := &fakeClusterSet{srv: srv, t: t}
	var events []audit.Event
	var emu sync.Mutex
	c := New(Config{Cluster: srv.Cluster, Pool: func() *pgxpool.Pool { return cat.Pool }, ClusterSet: f.set,
		Audit: func(e audit.Event) { emu.Lock(); events = append(events, e); emu.Unlock() }})
	t.Cleanup(func() {
		conn := srv.Conn(t)
		for _, n := range []string{"work_mem", "max_connections", "timezone"} {
			_, _ = conn.Exec(ctx, "ALTER SYSTEM RESET "+n)
		}
		_, _ = conn.Exec(ctx, "SELECT pg_catalog.pg_reload_conf()")
	})

	v, err := c.SetParameter(ctx, "WORK_MEM", "12MB")
	if err != nil || v.Value != "12288" || v.Unit != "kB" || v.PendingRestart {
		t.Fatalf("work_mem: %+v %v", v, err)
	}
	if got := f.calls(); len(got) != 1 || got[0] != [2]string{"work_mem", "12288"} {
		t.Errorf("ClusterSet got %v", got)
	}
	emu.Lock()
	if len(events) != 1 || events[0].Type != "parameter.set" || events[0].Fields["cluster"] != true ||
		events[0].Fields["value"] != audit.Redact("12MB") || events[0].Fields["name"] != "work_mem" {
		t.Errorf("audit: %+v", events)
	}
	emu.Unlock()

	// A show hook: pg_settings says "UTC" for 'utc'.
	if v, err := c.SetParameter(ctx, "timezone", "utc"); err != nil || v.Value != "UTC" {
		t.Errorf("timezone: %+v %v", v, err)
	}

	// A restart-context parameter: in the configuration, pending restart.
	v, err = c.SetParameter(ctx, "max_connections", "150")
	if err != nil || !v.PendingRestart || v.Context != "static" {
		t.Errorf("max_connections: %+v %v", v, err)
	}

	f.got = nil
	for _, r := range []struct{ name, value, want string }{
		{"work_mem", "abc", `invalid value for parameter "work_mem": "abc"`},
		{"shared_preload_libraries", "evil", "managed by pgshield"},
		{"search_path", "a\nshared_preload_libraries = 'evil'", "control characters"},
		{"work_mem", "1\x00", "invalid value"},
		{"server_version", "1", "cannot be changed"},
		{"checkpoint_timeout", "1y", `invalid value for parameter "checkpoint_timeout"`}, // sighup: postgres -C alone decides
		{"default_transaction_isolation", "chaos", `invalid value for parameter "default_transaction_isolation"`},
	} {
		_, err := c.SetParameter(ctx, r.name, r.value)
		if ce, ok := clienterr.As(err); !ok || ce.Code != apitype.CodeInvalid || !strings.Contains(ce.Message, r.want) {
			t.Errorf("%s = %q: %v; want %q", r.name, r.value, err, r.want)
		}
	}
	if got := f.calls(); len(got) != 0 {
		t.Errorf("refused values reached ClusterSet: %q", got)
	}

	// ClusterSet's own refusal is the client's; another failure is
	// "unavailable".
	f.err = clienterr.New(apitype.CodeInvalid, "parameter %q is set by Patroni", "work_mem")
	if _, err := c.SetParameter(ctx, "work_mem", "4MB"); err != f.err {
		t.Errorf("ClusterSet's refusal: %v", err)
	}
	f.err = errors.New("boom")
	if _, err := c.SetParameter(ctx, "work_mem", "4MB"); !isCode(err, apitype.CodeUnavailable) {
		t.Errorf("ClusterSet failing: %v", err)
	}

	// Stored but never applied here: a bounded wait, then a clear error.
	f.err, f.drop = nil, true
	old := clusterWait
	clusterWait = time.Second
	t.Cleanup(func() { clusterWait = old })
	start := time.Now()
	_, err = c.SetParameter(ctx, "work_mem", "5MB")
	if !isCode(err, apitype.CodeUnavailable) || !strings.Contains(err.Error(), "does not show it") || time.Since(start) > 5*time.Second {
		t.Errorf("never applied: %v after %s", err, time.Since(start))
	}
}

func isCode(err error, code string) bool {
	ce, ok := clienterr.As(err)
	return ok && ce.Code == code
}
