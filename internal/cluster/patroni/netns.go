package patroni

// How a cluster node keeps PostgreSQL off TCP under Patroni 3.0.2.
//
// Two namespaces per node. Patroni must reach etcd and serve its REST API,
// and 3.0.2 does both over TCP only (patroni/dcs/etcd3.py and
// patroni/request.py are urllib3; patroni/api.py binds with getaddrinfo),
// so Patroni runs in the node's own network namespace, next to pgshield.
// PostgreSQL does not: Patroni starts "<bin_dir>/postgres" (pgcommand in
// patroni/postgresql/postmaster.py), and bin_dir is a directory pgshield
// writes (WriteBinDir) whose postgres runs the real one under
// `unshare --user --map-current-user --net`: a network namespace with no
// interface but a downed loopback, which Patroni, running as postgres
// without any capability, can make only together with a user namespace
// that maps postgres to itself. Every other tool is a link to the real
// binary; pg_rewind and initdb find the real postgres next to themselves
// and only ever run it single-user, which listens on nothing.
//
// No host in connect_address. Patroni advertises
// postgresql.connect_address as conn_url "postgres://<host>:<port>/postgres"
// (resolve_connection_addresses in patroni/postgresql/config.py), and every
// other node derives what it connects with from that URL
// (Member.conn_kwargs in patroni/dcs/__init__.py: urlparse's hostname,
// lower-cased, and port): primary_conninfo (primary_conninfo_params),
// pg_basebackup's --dbname (bootstrap.py), pg_rewind's --source-server and
// the leader checks (rewind.py). A host there can only ever be a TCP host:
// a socket path cannot survive urlparse ("/" ends the netloc, "@" is the
// user separator). With connect_address ":<LinkPort>" the hostname is None,
// Patroni leaves host out of every one of those connection strings, and
// libpq falls back to PGHOST from the environment, which the postmaster
// (and so its walreceiver), pg_basebackup and pg_rewind all inherit from
// Patroni (postmaster.py copies os.environ). Env sets PGHOST to the peer
// socket directory, where the node link serves .s.PGSQL.<LinkPort> of every
// peer and relays it over mutual TLS. The port number says which peer, so
// a replica follows whichever leader Patroni picked. The node's own
// connections are unaffected: Patroni gives them the socket directory as
// host explicitly (use_unix_socket, use_unix_socket_repl).
//
// What this costs: PGHOST also reaches any libpq client inside PostgreSQL
// (dblink, postgres_fdw) that names no host, which would land on the peer
// sockets, where the receiving link admits only the replication and rewind
// roles and pg_hba asks them for SCRAM.

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/pgshield/pgshield/internal/config"
)

// restAddr is where Patroni's REST API listens and what it advertises.
func (s Settings) restAddr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.RestPort))
}

// Env is Patroni's whole environment: paths, never a secret (the
// passwords are in the pgpass file it names).
func Env(s Settings) []string {
	return []string{
		"PATH=/usr/sbin:/usr/bin:/sbin:/bin",
		"LANG=C.UTF-8",
		"PGPASSFILE=" + s.PgpassFile,
		// The peer sockets: see the comment at the top of this file.
		"PGHOST=" + s.PeerSocketDir,
	}
}

// unshare is util-linux's (Debian's util-linux 2.38 has --map-current-user).
const unshare = "/usr/bin/unshare"

// WriteBinDir makes dir (0755) the bin_dir Patroni runs: links to every
// program in pgBinDir but postgres, which is a script that starts the real
// one in a network namespace of its own. Existing entries are replaced.
func WriteBinDir(dir, pgBinDir string) error { return WriteBinDirPinned(dir, pgBinDir, nil) }

// WriteBinDirPinned is WriteBinDir with the values of pinnedNames (from
// pgshield's managed settings; absent ones are pinned empty, "off" for
// archive_mode) on the postgres wrapper's command line.
func WriteBinDirPinned(dir, pgBinDir string, managed map[string]string) error {
	pinned := map[string]string{"archive_mode": "off"}
	names := slices.Clone(pinnedNames)
	for _, k := range pinnedNames {
		if v, ok := managed[k]; ok {
			pinned[k] = v
		}
	}
	for _, k := range pinnedIfGiven {
		if v, ok := managed[k]; ok {
			pinned[k] = v
			names = append(names, k)
		}
	}
	if !filepath.IsAbs(dir) || !filepath.IsAbs(pgBinDir) || filepath.Clean(dir) == filepath.Clean(pgBinDir) {
		return fmt.Errorf("bin dir %q for %q: want two different absolute paths", dir, pgBinDir)
	}
	if strings.ContainsAny(pgBinDir, "'\n") {
		return fmt.Errorf("bin dir %q: unsupported characters", pgBinDir)
	}
	entries, err := os.ReadDir(pgBinDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	found := false
	for _, e := range entries {
		name := e.Name()
		if name == "postgres" {
			found = true
			continue
		}
		if isolated[name] {
			continue
		}
		link := filepath.Join(dir, name)
		_ = os.Remove(link)
		if err := os.Symlink(filepath.Join(pgBinDir, name), link); err != nil {
			return err
		}
	}
	if !found {
		return fmt.Errorf("%s has no postgres", pgBinDir)
	}
	for _, name := range append([]string{"postgres"}, isolatedNames...) {
		if _, err := os.Stat(filepath.Join(pgBinDir, name)); err != nil {
			return err
		}
		pins := ""
		if name == "postgres" {
			// Command-line settings win over postgresql.auto.conf, which
			// PostgreSQL's OS user can write: Patroni reads these with
			// "postgres -C" and runs archive_command itself, outside.
			for _, k := range names {
				pins += " -c '" + k + "=" + strings.ReplaceAll(pinned[k], "'", `'\''`) + "'"
			}
		}
		script := "#!/bin/sh\n" +
			"# Written by pgshield: " + name + " in a network namespace with nothing in it\n" +
			"# (internal/cluster/patroni/netns.go). exec keeps the PID the one Patroni started.\n" +
			"exec " + unshare + " --user --map-current-user --net -- '" + filepath.Join(pgBinDir, name) + "' \"$@\"" + pins + "\n"
		if err := config.WriteFileAtomic(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
			return err
		}
	}
	return nil
}

// isolatedNames run in an empty network namespace too: pg_rewind runs
// restore_command and a single-user postgres (its own, found next to the
// real binary) from the data directory's configuration, pg_basebackup
// writes into it; both reach their source through the peer sockets.
var isolatedNames = []string{"pg_rewind", "pg_basebackup"}

var isolated = map[string]bool{"pg_rewind": true, "pg_basebackup": true}

// pinnedNames are the settings the postgres wrapper gives on its command
// line (WriteBinDirPinned).
var pinnedNames = []string{"archive_mode", "archive_command", "restore_command"}

// pinnedIfGiven are pinned on the wrapper's command line only when given
// (the node gives the paths Patroni itself uses): the files PostgreSQL
// reads its data and client authentication from. Not as local Patroni
// parameters, since a local hba_file stops Patroni writing pg_hba.conf;
// left out, any etcd writer could point every node at another file
// through the dynamic configuration.
var pinnedIfGiven = []string{"data_directory", "hba_file", "ident_file"}
