// Package pgtest runs one real PostgreSQL 15 per test binary, made and run
// by pgshield's own code (internal/postgres: InitDB, Bootstrap, Supervisor),
// for the tests between unit fakes and the end-to-end suite: the gateway,
// pgbackend and the controllers, in process, against the real server.
//
// Like the end-to-end suite it needs root and Debian's postgresql-15 with
// pgshield_guard (scripts/deps.sh), and runs only with PGSHIELD_E2E=1,
// which the README's test command sets. A package uses it with
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// and srv := pgtest.Shared(t) in each test that needs the server (first, so
// that a goroutine check registered after it does not count the server's).
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/auth/scram"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/pgbackend"
	"github.com/pgshield/pgshield/internal/postgres"
)

// EnvVar gates every test that starts PostgreSQL, as it gates e2e/.
const EnvVar = "PGSHIELD_E2E"

// startTimeout bounds initdb, the bootstrap start and stop, and the start.
const startTimeout = 3 * time.Minute

// Server is one PostgreSQL cluster as pgshield makes it: no TCP port, a
// private socket, pgshield_guard preloaded with the settings pgshield
// writes, scram-sha-256, local trust; the service role, the administrator
// (a SCRAM verifier) and pgshield's catalog with the lookup role.
type Server struct {
	// Cluster is pgshield's handle on the cluster: its Layout is a
	// temporary directory, its Cfg the defaults init writes.
	Cluster *postgres.Cluster
	// AdminPassword logs in as Cluster.Cfg.AdminUser.
	AdminPassword string

	sup      *postgres.Supervisor
	stopOnce sync.Once
}

// Start makes and starts a cluster in a new temporary directory. On error
// nothing is left behind.
func Start(ctx context.Context) (_ *Server, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("pgtest: must run as root (initdb and PostgreSQL run as the postgres OS user)")
	}
	u, err := postgres.LookupOSUser("postgres")
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	// PrepareDirs makes the root 0710 root:postgres, so postgres can reach
	// its directories below; os.TempDir itself is world-traversable.
	dir, err := os.MkdirTemp("", "pgshield-pgtest-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	s := &Server{}
	defer func() {
		if err != nil {
			s.Stop()
			os.RemoveAll(dir)
		}
	}()
	l := config.Layout{Root: dir}
	// The TLS files are never read: the gateway under test gets its own.
	cfg := &config.Config{TLSCertFile: l.ServerCert(), TLSKeyFile: l.ServerKey()}
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	s.Cluster = &postgres.Cluster{Layout: l, Cfg: cfg, User: u}
	// A Unix socket path is at most 107 bytes.
	if p := s.Cluster.SocketPath(); len(p) > 100 {
		return nil, fmt.Errorf("pgtest: socket path %s is too long; set TMPDIR to a shorter directory", p)
	}
	// The volume's mount point, a plain directory here (no encryption: the
	// tier tests what runs on top of it), 0711 as internal/storage makes it.
	if err := os.Mkdir(l.VolumeMount(), 0o711); err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if err := s.Cluster.PrepareDirs(); err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if err := s.Cluster.InitDB(ctx); err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	s.AdminPassword = "pgtest-" + randomHex(12)
	v, err := verifier(cfg.AdminUser, s.AdminPassword)
	if err != nil {
		return nil, err
	}
	if err := postgres.Bootstrap(ctx, s.Cluster, v); err != nil {
		return nil, fmt.Errorf("pgtest: bootstrap: %w", err)
	}
	// As the daemon runs it (new network namespace, log through pipes);
	// the log is dropped: its audit records are e2e's to check.
	s.sup = &postgres.Supervisor{Cluster: s.Cluster, ReadyTimeout: time.Minute, ServerLog: func([]audit.Event) {}}
	if err := s.sup.Start(ctx); err != nil {
		s.sup = nil // Start stopped what it started
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	return s, nil
}

// Stop shuts PostgreSQL down (fast, then immediate, then kill; 10 s each)
// and removes its directory. Safe to call more than once.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		if s.sup != nil {
			s.sup.Stop(10 * time.Second)
		}
		if s.Cluster != nil {
			os.RemoveAll(s.Cluster.Layout.Root)
		}
	})
}

// SocketDir is the directory of the postmaster's socket.
func (s *Server) SocketDir() string { return s.Cluster.Layout.SocketDir() }

// Port names the socket (.s.PGSQL.<port>); nothing listens on TCP.
func (s *Server) Port() int { return s.Cluster.Cfg.PGPort }

// Dialer opens backend sessions as the gateway does.
func (s *Server) Dialer() *pgbackend.Dialer {
	return &pgbackend.Dialer{Socket: s.Cluster.SocketPath()}
}

// Conn opens a connection as the bootstrap superuser to database postgres,
// with the search path pinned as pgshield pins it; closed when t ends.
func (s *Server) Conn(t testing.TB) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := s.Cluster.ConnectPrivileged(ctx, config.SuperuserRole)
	if err != nil {
		t.Fatalf("pgtest: connecting as %s: %v", config.SuperuserRole, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// EnsureCatalog runs postgres.EnsureCatalog as the service role, as the
// daemon's catalog does: pgbackend.CatalogConfig.Ensure.
func (s *Server) EnsureCatalog(ctx context.Context) error {
	conn, err := s.Cluster.ConnectPrivileged(ctx, s.Cluster.Cfg.ServiceRole)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return postgres.EnsureCatalog(ctx, conn, s.Cluster.Cfg.ServiceRole, s.Cluster.HasPgaudit())
}

// Catalog opens pgshield's catalog as the daemon does (its Logins is the
// gateway's role lookup); closed when t ends. Each has its own cache.
func (s *Server) Catalog(t testing.TB) *postgres.Catalog {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cat, err := postgres.NewCatalog(ctx, s.Cluster, nil)
	if err != nil {
		t.Fatalf("pgtest: opening the catalog: %v", err)
	}
	t.Cleanup(cat.Close)
	if err := cat.Ensure(ctx); err != nil {
		t.Fatalf("pgtest: ensuring the catalog: %v", err)
	}
	return cat
}

// CreateRole creates a role with attrs (SQL, such as "LOGIN" or "NOLOGIN
// VALID UNTIL 'infinity'") and, unless password is empty, the SCRAM
// verifier of password, computed by pgshield as init computes the
// administrator's. The role is dropped when t ends.
func (s *Server) CreateRole(t testing.TB, name, password, attrs string) {
	t.Helper()
	stmt := "CREATE ROLE " + pgx.Identifier{name}.Sanitize() + " " + attrs
	if password != "" {
		v, err := verifier(name, password)
		if err != nil {
			t.Fatal(err)
		}
		stmt += " PASSWORD " + postgres.QuoteLiteral(v)
	}
	s.exec(t, "creating role "+name, stmt)
	t.Cleanup(func() { s.exec(t, "dropping role "+name, "DROP ROLE IF EXISTS "+pgx.Identifier{name}.Sanitize()) })
}

// CreatePrincipal creates a token principal (its role and its row in
// pgshield.principals) with pgshield's own code; deleted when t ends.
func (s *Server) CreatePrincipal(t testing.TB, p pgbackend.TokenPrincipal) {
	t.Helper()
	cat := s.Catalog(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cat.CreatePrincipal(ctx, p, s.Cluster.Cfg.IsReserved); err != nil {
		t.Fatalf("pgtest: CreatePrincipal(%q): %v", p.Name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := cat.DeletePrincipal(ctx, p.Name); err != nil {
			t.Errorf("pgtest: DeletePrincipal(%q): %v", p.Name, err)
		}
	})
}

// exec runs one statement as the superuser on a connection of its own, so
// that it works in cleanups after the test's connections are closed.
func (s *Server) exec(t testing.TB, what, stmt string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := s.Cluster.ConnectPrivileged(ctx, config.SuperuserRole)
	if err != nil {
		t.Fatalf("pgtest: connecting as %s: %v", config.SuperuserRole, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, stmt); err != nil {
		// Not the statement: it may carry a verifier.
		t.Fatalf("pgtest: %s: %v", what, err)
	}
}

func verifier(user, password string) (string, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	return scram.Verifier(user, password, salt, scram.DefaultIterations)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// The binary's one server: started by the first Shared, stopped by Main.
var shared struct {
	sync.Mutex
	main    bool // Main is running the tests
	started bool
	srv     *Server
	err     error
}

// Shared returns the test binary's server, starting it at the first call.
// It skips t unless PGSHIELD_E2E=1, and fails it if the server could not
// be started (then every later test fails at once too).
func Shared(t testing.TB) *Server {
	t.Helper()
	if os.Getenv(EnvVar) != "1" {
		t.Skip("needs a real PostgreSQL 15: set PGSHIELD_E2E=1 (scripts/test.sh does)")
	}
	shared.Lock()
	defer shared.Unlock()
	if !shared.main {
		t.Fatal("pgtest: call pgtest.Main from TestMain, which stops the server")
	}
	if !shared.started {
		shared.started = true
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		start := time.Now()
		shared.srv, shared.err = Start(ctx)
		cancel()
		if shared.err == nil {
			t.Logf("pgtest: PostgreSQL started in %s (%s)", time.Since(start).Round(time.Millisecond), shared.srv.SocketDir())
		}
	}
	if shared.err != nil {
		t.Fatalf("starting PostgreSQL: %v", shared.err)
	}
	return shared.srv
}

// Main runs the tests, then stops the shared server if one was started,
// and exits with the tests' code.
func Main(m *testing.M) {
	shared.Lock()
	shared.main = true
	shared.Unlock()
	code := m.Run()
	shared.Lock()
	if shared.srv != nil {
		shared.srv.Stop()
	}
	shared.Unlock()
	os.Exit(code)
}
