package postgres

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/backup"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/pgbackend"
)

// Cluster names one managed PostgreSQL cluster.
type Cluster struct {
	Layout config.Layout
	Cfg    *config.Config
	User   OSUser
	// Guard, if set, must pass before PostgreSQL starts or initdb runs: it
	// checks that the encrypted volume is mounted and unlocked, so nothing
	// is ever written to the bare disk under the mount point.
	Guard func() error
	// Live, if set, returns pgshield's configuration as it is now: the
	// daemon changes parameters and admin principals while Cfg stays as it
	// was at start, and the settings written for PostgreSQL
	// (pgshield_guard's) follow them. Nil means Cfg.
	Live func() *config.Config
	// WriteSettings, when set (a cluster node), takes the managed
	// settings and pg_hba.conf's lines instead of WriteManagedFiles
	// writing them into the data directory: Patroni writes those files
	// there, and a joining node's data directory must stay empty until
	// Patroni clones the primary into it.
	WriteSettings func(managedConf string, hbaLines []string) error
}

// SocketPath is the postmaster's Unix socket.
func (c *Cluster) SocketPath() string {
	return pgbackend.SocketPath(c.Layout.SocketDir(), c.Cfg.PGPort)
}

// Bin returns the path of a PostgreSQL program.
func (c *Cluster) Bin(name string) string { return filepath.Join(c.Cfg.PGBinDir, name) }

// DSN is the connection string of a role over the private socket. Connect
// privileged roles with ConnectPrivileged or PinnedPool, never with the
// string alone.
func (c *Cluster) DSN(role, database string) string {
	return pgbackend.DSN(c.Layout.SocketDir(), c.Cfg.PGPort, role, database)
}

// ConnectPrivileged opens one connection as role (the superuser or the
// service role) with the search path pinned.
func (c *Cluster) ConnectPrivileged(ctx context.Context, role string) (*pgx.Conn, error) {
	cc, err := pgbackend.PinnedConfig(c.DSN(role, "postgres"))
	if err != nil {
		return nil, err
	}
	return pgx.ConnectConfig(ctx, cc)
}

// PinnedPool opens a pool of connections as role with the search path pinned.
func (c *Cluster) PinnedPool(ctx context.Context, role string, maxConns int32) (*pgxpool.Pool, error) {
	return pgbackend.PinnedPool(ctx, c.DSN(role, "postgres"), maxConns)
}

// managedSettings are the settings pgshield owns; ALTER SYSTEM may not
// change them (see ProtectedParameter).
func (c *Cluster) managedSettings() string {
	// pgshield_guard comes first so that pgaudit, loaded after it, wraps it
	// and records the statements it refuses.
	libs := []string{"pgshield_guard"}
	if c.HasPgaudit() {
		// Statement auditing is configured with `pgshield parameter set
		// pgaudit.log ...`; the library itself is pgshield's to load.
		libs = append(libs, "pgaudit")
	}
	if c.hasLib("pg_stat_statements") {
		// An allowed extension that only works when preloaded.
		libs = append(libs, "pg_stat_statements")
	}
	preload := fmt.Sprintf("shared_preload_libraries = '%s'\n", strings.Join(libs, ","))
	return preload + c.guardSettings() + fmt.Sprintf(`# Written by pgshield; do not edit. PostgreSQL listens on no TCP port:
# the pgshield gateway is the only way in, over the Unix socket below.
listen_addresses = ''
port = %d
unix_socket_directories = '%s'
unix_socket_permissions = 0700
password_encryption = 'scram-sha-256'
ssl = off
# Everything written to the volume is encrypted: zero-filling each new WAL
# segment would encrypt 16 MiB of zeros before its first record (half of
# what a bulk load writes). Sparse segments are as durable (fdatasync
# commits the block allocations too). 'parameter set wal_init_zero on'
# brings PostgreSQL's default back.
wal_init_zero = off
# The server log goes, as JSON lines, into named pipes that pgshield reads,
# redacts and merges into the audit log on the encrypted volume: no file
# ever holds it in clear (see internal/audit/serverlog.go). No rotation:
# the pipes are the only "files".
logging_collector = on
log_destination = 'jsonlog'
log_directory = '%s'
log_filename = '%s'
log_file_mode = 0600
log_rotation_age = 0
log_rotation_size = 0
log_truncate_on_rotation = off
log_timezone = 'UTC'
# jsonlog then names the C function and file of every message: the only
# proof, which no role can forge with RAISE, that pgaudit wrote a record.
log_error_verbosity = verbose
# pg_stat_statements keeps query texts in a file; utility statements
# (ALTER ROLE ... PASSWORD) are not normalized, so they are not tracked.
pg_stat_statements.track_utility = off
`, c.Cfg.PGPort, c.Layout.SocketDir(), c.LogPipeDir(), audit.ServerLogName)
}

// LogPipeDir holds the named pipes PostgreSQL's logging collector writes
// to (root's, 0710 root:postgres, outside the volume: pipes hold no data).
func (c *Cluster) LogPipeDir() string { return filepath.Join(c.Layout.RunDir(), "pglog") }

// HasPgaudit reports whether Debian's postgresql-15-pgaudit is installed.
func (c *Cluster) HasPgaudit() bool { return c.hasLib("pgaudit") }

func (c *Cluster) libPath(name string) string {
	return filepath.Join(filepath.Dir(c.Cfg.PGBinDir), "lib", name+".so")
}

func (c *Cluster) hasLib(name string) bool {
	_, err := os.Stat(c.libPath(name))
	return err == nil
}

// CheckGuard refuses to go on without pgshield_guard (pgext/pgshield_guard),
// the library that keeps the administrator and the roles it creates from
// becoming superuser-equivalent: without it PostgreSQL 15 would let them
// grant themselves pg_execute_server_program.
func (c *Cluster) CheckGuard() error {
	if !c.hasLib("pgshield_guard") {
		return fmt.Errorf("pgshield_guard is not installed (%s is missing); it keeps the administrator from becoming a superuser: run scripts/deps.sh to build and install it",
			c.libPath("pgshield_guard"))
	}
	return nil
}

// guardSettings configure pgshield_guard. Its parameters can only be set in
// the configuration files (PGC_SIGHUP), and ALTER SYSTEM may not touch them
// (see ProtectedParameter), so only pgshield sets them.
func (c *Cluster) guardSettings() string {
	var b strings.Builder
	b.WriteString("# pgshield_guard: what roles that are not superusers may not do.\n")
	for _, s := range c.GuardValues() {
		fmt.Fprintf(&b, "%s = '%s'\n", s.Name, confQuote(s.Value))
	}
	return b.String()
}

// ReservedMemberships are the predefined roles only a superuser may grant:
// the server's files and programs, and pg_write_all_data, because in
// PostgreSQL 15 it also writes the system catalogs through the
// automatically updatable system views pg_group (pg_authid) and
// pg_stat_database_conflicts (pg_database): a holder could rename
// pg_execute_server_program or swap database postgres for its own.
var ReservedMemberships = []string{"pg_execute_server_program", "pg_read_server_files", "pg_write_server_files", "pg_write_all_data"}

// GuardSetting is one pgshield_guard parameter and its value as
// current_setting reports it once PostgreSQL has read it.
type GuardSetting struct{ Name, Value string }

// GuardValues are the values guardSettings writes; the daemon reads them
// back after a reload and refuses a change PostgreSQL did not take.
func (c *Cluster) GuardValues() []GuardSetting {
	// An invalid parameter set (which the daemon refuses to start with)
	// allows no extension rather than the defaults.
	cfg := c.Cfg
	if c.Live != nil {
		cfg = c.Live()
	}
	var exts []string
	if p, err := config.ResolveParams(cfg.Parameters); err == nil {
		exts = p.AllowedExtensions
	}
	return []GuardSetting{
		{"pgshield_guard.reserved_roles", guardList(c.Cfg.ReservedRoles())},
		{"pgshield_guard.reserved_memberships", guardList(ReservedMemberships)},
		{"pgshield_guard.admin_roles", guardList(append([]string{cfg.AdminUser}, cfg.AdminPrincipals...))},
		{"pgshield_guard.allowed_extensions", guardList(exts)},
	}
}

// guardList quotes every name as an SQL identifier. pgshield_guard splits
// the list as PostgreSQL splits identifier lists, which downcases unquoted
// names and cannot take spaces or quotes in them: an unquoted
// "Contoso DBAs" would make the whole list invalid, an unquoted
// Mary.Smith@Contoso.com would protect a role that does not exist.
func guardList(names []string) string {
	quoted := make([]string, len(names))
	for i, n := range names {
		quoted[i] = `"` + strings.ReplaceAll(n, `"`, `""`) + `"`
	}
	return strings.Join(quoted, ",")
}

// hba allows only local connections. The socket directory is 0700 and owned
// by the postgres OS user, so only root (the gateway) and postgres can reach
// it; the gateway has already authenticated every client it connects for.
const hba = `# Written by pgshield. No host lines: PostgreSQL listens on no TCP port.
# The socket directory is private (0700, postgres): only the pgshield gateway
# (root) and the postgres OS user can connect, and the gateway authenticates
# each client with SCRAM before it opens a session for it here.
local   all   all   trust
`

// PrepareDirs creates the directories PostgreSQL needs with their modes.
func (c *Cluster) PrepareDirs() error {
	if c.Guard != nil {
		if err := c.Guard(); err != nil {
			return err
		}
	}
	for _, d := range []struct {
		path  string
		owned bool
	}{
		{c.Layout.VolumeDir(), false},
		{c.Layout.PGData(), true},
		{c.Layout.PGLogDir(), true},
		{c.Layout.RunDir(), false},
		{c.Layout.SocketDir(), true},
	} {
		if err := os.MkdirAll(d.path, 0o700); err != nil {
			return err
		}
		if err := os.Chmod(d.path, 0o700); err != nil {
			return err
		}
		if d.owned {
			if err := c.User.Chown(d.path); err != nil {
				return err
			}
		}
	}
	// The postgres OS user must traverse (not list) the root-owned
	// directories above its own: 0710 root:postgres. Everyone else gets nothing.
	for _, d := range []string{c.Layout.Root, c.Layout.VolumeDir(), c.Layout.RunDir()} {
		if err := os.Chown(d, 0, int(c.User.GID)); err != nil {
			return err
		}
		if err := os.Chmod(d, 0o710); err != nil {
			return err
		}
	}
	return nil
}

// InitDB creates the cluster with Debian's initdb.
func (c *Cluster) InitDB(ctx context.Context) error {
	if err := c.CheckGuard(); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(c.Layout.PGData(), "PG_VERSION")); err == nil {
		return fmt.Errorf("a PostgreSQL cluster already exists in %s", c.Layout.PGData())
	}
	cmd := c.User.Command(c.Bin("initdb"), "-D", c.Layout.PGData(), "-U", config.SuperuserRole,
		"--auth-local=trust", "--auth-host=reject", "-E", "UTF8", "--locale=C.UTF-8", "--data-checksums")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("initdb failed: %w\n%s", err, strings.TrimSpace(out.String()))
	}
	conf := filepath.Join(c.Layout.PGData(), "postgresql.conf")
	f, err := os.OpenFile(conf, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString("\n# pgshield's settings come last and win over the above.\ninclude 'pgshield.conf'\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return c.WriteManagedFiles()
}

// WriteManagedFiles (re)writes pgshield.conf and pg_hba.conf.
func (c *Cluster) WriteManagedFiles() error {
	if err := c.CheckGuard(); err != nil {
		return err
	}
	if c.WriteSettings != nil {
		return c.WriteSettings(c.ManagedConf(), HBALines())
	}
	for name, body := range map[string]string{"pgshield.conf": c.managedSettings() + c.archiveSettings(), "pg_hba.conf": hba} {
		p := filepath.Join(c.Layout.PGData(), name)
		if err := config.WriteFileAtomic(p, []byte(body), 0o600); err != nil {
			return err
		}
		if err := c.User.Chown(p); err != nil {
			return err
		}
	}
	return nil
}

// HBALines are hba's lines without its comments.
func HBALines() []string {
	var lines []string
	for _, l := range strings.Split(hba, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	return lines
}

// protected are PostgreSQL settings pgshield manages itself; changing them
// would open a TCP port, move the socket, weaken authentication or break
// supervision.
var protected = map[string]bool{
	"listen_addresses": true, "port": true, "unix_socket_directories": true,
	"unix_socket_group": true, "unix_socket_permissions": true, "password_encryption": true,
	"ssl": true, "data_directory": true, "hba_file": true, "ident_file": true,
	"config_file": true, "external_pid_file": true, "logging_collector": true,
	"log_directory": true, "log_file_mode": true, "archive_command": true, "archive_mode": true,
	"archive_library": true, "restore_command": true, "shared_preload_libraries": true,
	"local_preload_libraries": true, "session_preload_libraries": true,
	"dynamic_library_path": true, "krb_server_keyfile": true, "event_source": true,
	"ssl_cert_file": true, "ssl_key_file": true, "ssl_ca_file": true, "ssl_crl_file": true,
	"ssl_crl_dir": true, "ssl_passphrase_command": true, "allow_system_table_mods": true,
	"ignore_system_indexes": true, "zero_damaged_pages": true, "ignore_checksum_failure": true,
	"jit_provider": true, "log_filename": true,
	// The server log's route into the audit stream.
	"log_destination": true, "log_rotation_age": true, "log_rotation_size": true,
	"log_truncate_on_rotation": true, "log_timezone": true, "pg_stat_statements.track_utility": true,
	"log_error_verbosity": true,
	// The audit role table decoys are granted to (internal/ctl/alerts
	// sets it): another value turns every decoy table off.
	"pgaudit.role": true,
}

// ProtectedParameter reports whether a PostgreSQL parameter is managed by
// pgshield and so may not be set by users.
func ProtectedParameter(name string) bool {
	name = strings.ToLower(name)
	return protected[name] || strings.HasPrefix(name, "pgshield_guard.")
}

// archiveSettings turn on continuous WAL archiving into the pgBackRest
// repository (internal/backup), which point-in-time restore needs. The
// archive_command runs inside PostgreSQL's network namespace: the
// repository is a local path. Its configuration, which holds the
// repository passphrase, is on the encrypted volume.
func (c *Cluster) archiveSettings() string {
	return fmt.Sprintf(`# Continuous archiving to the encrypted pgBackRest repository.
archive_mode = on
archive_command = '%s'
# A default (ALTER SYSTEM may change it): a quiet server still archives its
# WAL at least every 5 minutes, which bounds what a restore can miss.
archive_timeout = 300
`, confQuote(backup.ArchiveCommand(c.Layout.BackupConfig())))
}

// confQuote escapes s for a single-quoted postgresql.conf value, where a
// backslash starts an escape and a quote is doubled.
func confQuote(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), "'", "''")
}
