package pgtest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgshield/pgshield/internal/config"
)

func TestMain(m *testing.M) { Main(m) }

// TestStartStop starts a server of its own (not the shared one, so that it
// can stop it), checks that it is set up as pgshield sets PostgreSQL up,
// and that Stop leaves no process and no directory behind.
func TestStartStop(t *testing.T) {
	if os.Getenv(EnvVar) != "1" {
		t.Skip("needs a real PostgreSQL 15: set PGSHIELD_E2E=1 (scripts/test.sh does)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	srv, err := Start(ctx)
	if err != nil {
		t.Fatalf("Start() error = %v", err)
	}
	defer srv.Stop()
	pid := postmasterPID(t, srv)
	conn := srv.Conn(t)

	for name, want := range map[string]string{
		"listen_addresses":        "",
		"password_encryption":     "scram-sha-256",
		"unix_socket_directories": srv.SocketDir(),
		"port":                    strconv.Itoa(srv.Port()),
		"search_path":             "pg_catalog, pg_temp",
	} {
		if got := setting(t, conn, name); got != want {
			t.Errorf("%s = %q; want %q", name, got, want)
		}
	}
	if got := setting(t, conn, "shared_preload_libraries"); !strings.HasPrefix(got, "pgshield_guard") {
		t.Errorf("shared_preload_libraries = %q; want pgshield_guard first", got)
	}
	for _, g := range srv.Cluster.GuardValues() {
		if got := setting(t, conn, g.Name); got != g.Value {
			t.Errorf("%s = %q; want %q", g.Name, got, g.Value)
		}
	}
	var rules []string
	rows, err := conn.Query(ctx, `SELECT pg_catalog.concat_ws(' ', r.type, r.database, r.user_name, r.auth_method)
	  FROM pg_catalog.pg_hba_file_rules r`)
	if err == nil {
		rules, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err != nil || len(rules) != 1 || rules[0] != "local {all} {all} trust" {
		t.Errorf("pg_hba rules = %q, %v; want only local all all trust", rules, err)
	}
	if fi, err := os.Stat(srv.SocketDir()); err != nil {
		t.Error(err)
	} else if fi.Mode().Perm() != 0o700 || fi.Sys().(*syscall.Stat_t).Uid != srv.Cluster.User.UID {
		t.Errorf("socket directory %s: %v, uid %d; want 0700, the postgres OS user's", srv.SocketDir(), fi.Mode(),
			fi.Sys().(*syscall.Stat_t).Uid)
	}

	// What Bootstrap and EnsureCatalog make.
	for role, want := range map[string]string{
		config.SuperuserRole:        "super login createrole",
		srv.Cluster.Cfg.ServiceRole: "super login",
		srv.Cluster.Cfg.AdminUser:   "login createrole scram",
		config.LookupRole:           "login",
	} {
		var got string
		err := conn.QueryRow(ctx, `SELECT pg_catalog.concat_ws(' ',
		    CASE WHEN a.rolsuper THEN 'super' END, CASE WHEN a.rolcanlogin THEN 'login' END,
		    CASE WHEN a.rolcreaterole THEN 'createrole' END,
		    CASE WHEN a.rolpassword OPERATOR(pg_catalog.^@) 'SCRAM-SHA-256$' THEN 'scram' END)
		  FROM pg_catalog.pg_authid a WHERE a.rolname OPERATOR(pg_catalog.=) $1`, role).Scan(&got)
		if err != nil || got != want {
			t.Errorf("role %s = %q, %v; want %q", role, got, err, want)
		}
	}
	if err := srv.EnsureCatalog(ctx); err != nil {
		t.Errorf("EnsureCatalog() error = %v", err)
	}

	root := srv.Cluster.Layout.Root
	srv.Stop()
	if _, err := os.Stat(root); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Stop, %s: %v; want it removed", root, err)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("after Stop, postmaster %d: kill(0) = %v; want it gone", pid, err)
	}
}

func setting(t *testing.T, conn *pgx.Conn, name string) string {
	t.Helper()
	var v string
	if err := conn.QueryRow(context.Background(), `SELECT pg_catalog.current_setting($1)`, name).Scan(&v); err != nil {
		t.Fatalf("current_setting(%q): %v", name, err)
	}
	return v
}

func postmasterPID(t *testing.T, srv *Server) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(srv.Cluster.Layout.PGData(), "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// TestSharedSkips checks the gate: without PGSHIELD_E2E=1 nothing starts.
func TestSharedSkips(t *testing.T) {
	if os.Getenv(EnvVar) == "1" {
		t.Skip("PGSHIELD_E2E=1: the gate is open")
	}
	t.Run("gated", func(t *testing.T) {
		Shared(t)
		t.Error("Shared() returned without PGSHIELD_E2E=1; want a skip")
	})
	if shared.started {
		t.Errorf("Shared() started PostgreSQL without PGSHIELD_E2E=1")
	}
}
