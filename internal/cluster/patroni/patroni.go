// Package patroni generates the configuration of the Patroni that a
// high-availability pgshield node will run (as postgres) in place of the
// postmaster. Nothing in the daemon uses it yet: see internal/cluster.
package patroni

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	yaml "go.yaml.in/yaml/v3"

	"github.com/pgshield/pgshield/internal/cluster/promote"
	"github.com/pgshield/pgshield/internal/config"
)

// Roles Patroni replicates and rewinds as. They log in over the Unix
// socket only, with SCRAM; pgshield creates them and sets their SCRAM
// verifiers itself, so no password is ever in Patroni's file or in SQL.
const (
	ReplicationRole = config.ReplicationRole
	RewindRole      = config.RewindRole
	// SuperuserRole is the bootstrap superuser Patroni connects as, over
	// the socket by peer identity (Patroni runs as postgres): no password.
	SuperuserRole = "postgres"
	// RESTUser is the user name of Patroni's REST API basic
	// authentication (Settings.RESTPassword).
	RESTUser = "pgshield"
	// Database is Patroni's postgresql.database (its default), the one
	// database the rewind role opens.
	Database = "postgres"
)

// Timings are Patroni's leader-lease settings in seconds. Patroni wants
// loop_wait + 2*retry_timeout <= ttl.
type Timings struct{ TTL, LoopWait, RetryTimeout int }

// Namespace is the etcd prefix of Patroni's keys: the leader key is
// Namespace + scope + "/leader" (what internal/cluster/fence reads).
const Namespace = "/pgshield/"

var (
	// DefaultTimings are Patroni's own defaults.
	DefaultTimings = Timings{TTL: 30, LoopWait: 10, RetryTimeout: 10}
	// TestTimings are the short ones the tests use (the trial:
	// first write 9.9 s after kill -9 of the primary's node).
	TestTimings = Timings{TTL: 10, LoopWait: 2, RetryTimeout: 4}
)

// Validate refuses timings Patroni would misbehave with.
func (t Timings) Validate() error {
	if t.TTL < 10 || t.LoopWait < 1 || t.RetryTimeout < 3 {
		return fmt.Errorf("patroni timings %d/%d/%d: ttl >= 10, loop_wait >= 1, retry_timeout >= 3", t.TTL, t.LoopWait, t.RetryTimeout)
	}
	if t.LoopWait+2*t.RetryTimeout > t.TTL {
		return fmt.Errorf("patroni timings %d/%d/%d: loop_wait + 2*retry_timeout must not exceed ttl", t.TTL, t.LoopWait, t.RetryTimeout)
	}
	return nil
}

// Settings are what the configuration is made of. Only RESTPassword is
// secret: the roles' passwords go only to the pgpass file (WritePgpass).
type Settings struct {
	Scope string // the cluster's name
	Node  string // this node's name

	DataDir string // PostgreSQL's data directory (on the unlocked volume)
	// BinDir is the wrapper directory WriteBinDir makes, not PostgreSQL's
	// own: its postgres starts the postmaster in an empty network
	// namespace.
	BinDir    string
	SocketDir string // pgshield's private socket directory
	Port      int    // the socket's port number (no TCP port is opened)
	// LinkPort is this node's number on the node link: every other node
	// reaches this node's PostgreSQL at <PeerSocketDir>/.s.PGSQL.<LinkPort>
	// (internal/cluster/link). Unique in the cluster.
	LinkPort int
	// PeerSocketDir is where this node's link makes one socket per peer;
	// Patroni and everything it runs find it through PGHOST (Env).
	PeerSocketDir string
	// RestPort is the port of Patroni's REST API on the node's loopback;
	// every other node's link listens on its own loopback at the same port
	// and relays to this node. Unique in the cluster.
	RestPort int
	// RESTPassword is the password (with RESTUser) Patroni 3.0.2's REST
	// API asks of every request that changes something: every POST,
	// PATCH, PUT and DELETE handler is under check_access (api.py), GETs
	// are not, so another node's GET /patroni needs none (and Patroni's
	// own requests send restapi.auth, which is not set, not
	// restapi.authentication). Without it, any local user of the node
	// could POST /reinitialize or /switchover or PATCH /config on the
	// loopback port. A secret: Patroni 3.0.2 reads it from its YAML (or
	// from PATRONI_RESTAPI_PASSWORD, which would put it in the
	// environment), so the YAML is written by WriteConfig only: 0600,
	// owned by Patroni's user, in a 0700 directory. Required.
	RESTPassword string
	PgpassFile   string // written by WritePgpass

	// Managed are pgshield's managed PostgreSQL settings (ParseConf of
	// postgres.Cluster.ManagedConf). They go into the local
	// postgresql.parameters, which override what PATCH /config stores in
	// etcd, so no administrator call to Patroni's API can change them.
	Managed map[string]string
	// HBA are pgshield's own pg_hba.conf lines; the replication and rewind
	// lines come before them.
	HBA []string

	Etcd    EtcdClient
	Timings Timings
	// AsyncWhenAlone turns synchronous_mode_strict off: see Generate.
	AsyncWhenAlone bool
	// PrePromote is Patroni's pre_promote hook: `Bin cluster pre-promote
	// --socket Socket`, which asks the daemon whether this node's volume is
	// unlocked and its key unwraps, and refuses the promotion otherwise
	// (internal/cluster/promote). Both empty leave the hook out.
	// TODO(#18): required once the daemon serves the promotion socket; the
	// link package's two-node test runs Patroni without a daemon.
	PrePromote PrePromote
}

// PrePromote names the pgshield binary and the daemon's promotion socket:
// paths only, so the hook's argv can hold no secret.
type PrePromote struct{ Bin, Socket string }

// EtcdClient is how Patroni reaches etcd: TLS with a client certificate.
type EtcdClient struct {
	Endpoints                     []string // host:port of every member
	CACert, ClientCert, ClientKey string   // file paths
}

func (s Settings) validate() error {
	var missing []string
	for name, v := range map[string]string{"scope": s.Scope, "node": s.Node, "data dir": s.DataDir, "bin dir": s.BinDir,
		"socket dir": s.SocketDir, "peer socket dir": s.PeerSocketDir, "pgpass file": s.PgpassFile,
		"etcd CA": s.Etcd.CACert, "etcd client certificate": s.Etcd.ClientCert, "etcd client key": s.Etcd.ClientKey} {
		if v == "" {
			missing = append(missing, name)
		}
	}
	if s.RESTPassword == "" {
		missing = append(missing, "REST API password")
	}
	if len(missing) > 0 {
		return fmt.Errorf("patroni configuration: missing %s", strings.Join(missing, ", "))
	}
	for _, p := range []string{s.DataDir, s.BinDir, s.SocketDir, s.PeerSocketDir, s.PgpassFile, s.Etcd.CACert, s.Etcd.ClientCert, s.Etcd.ClientKey} {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("patroni configuration: %s is not an absolute path", p)
		}
	}
	if filepath.Clean(s.PeerSocketDir) == filepath.Clean(s.SocketDir) {
		return errors.New("patroni configuration: the peer socket directory must not be the node's own socket directory")
	}
	for name, p := range map[string]int{"port": s.Port, "link port": s.LinkPort, "REST port": s.RestPort} {
		if p <= 0 || p > 65535 {
			return fmt.Errorf("patroni configuration: %s %d", name, p)
		}
	}
	if len(s.Etcd.Endpoints) == 0 {
		return errors.New("patroni configuration: no etcd endpoint")
	}
	for _, hp := range s.Etcd.Endpoints {
		h, port, err := net.SplitHostPort(hp)
		if n, perr := strconv.Atoi(port); err != nil || perr != nil || h == "" || n <= 0 || n > 65535 || strings.ContainsAny(h, "/ ") {
			return fmt.Errorf("patroni configuration: %q is not host:port", hp)
		}
	}
	if s.PrePromote != (PrePromote{}) {
		if _, err := promote.Command(s.PrePromote.Bin, s.PrePromote.Socket); err != nil {
			return fmt.Errorf("patroni configuration: %w", err)
		}
	}
	return s.Timings.Validate()
}

// fixed are the settings a high-availability node owns on top of
// pgshield's managed ones; the managed values may not change them.
func (s Settings) fixed() map[string]string {
	return map[string]string{
		"listen_addresses":        "",
		"port":                    strconv.Itoa(s.Port),
		"unix_socket_directories": s.SocketDir,
		"unix_socket_permissions": "0700",
		"password_encryption":     "scram-sha-256",
		"ssl":                     "off",
		// pg_rewind needs one of the two; checksums are the initdb option
		// pgshield does not choose here.
		"wal_log_hints": "on",
		"hot_standby":   "on",
	}
}

// DefaultMaxSlotWALKeepSize bounds the WAL that replication slots keep on a
// node unless the managed settings set max_slot_wal_keep_size themselves.
// Patroni keeps a slot for every member (use_slots): a member that stops
// confirming (down, or a compromised peer holding its slot) would
// otherwise keep every WAL segment until the primary's disk is full and
// it stops. Past the bound the slot is invalidated and that member must
// be cloned again (Patroni's reinitialize); the primary goes on.
const DefaultMaxSlotWALKeepSize = "8GB"

// LocalParameters are the PostgreSQL parameters Generate writes into the
// local postgresql.parameters for s: pgshield's managed settings, the
// slot bound and fixed. Patroni applies them over the dynamic
// configuration in etcd, so on a cluster node a value for one of these
// names stored through PATCH /config never takes effect.
func LocalParameters(s Settings) (map[string]string, error) {
	params := map[string]string{}
	for k, v := range s.Managed {
		params[strings.ToLower(k)] = v
	}
	switch v, ok := params["max_slot_wal_keep_size"]; {
	case !ok:
		params["max_slot_wal_keep_size"] = DefaultMaxSlotWALKeepSize
	case v == "" || strings.HasPrefix(strings.TrimSpace(v), "-"):
		return nil, fmt.Errorf("patroni configuration: max_slot_wal_keep_size %q: a cluster node bounds the WAL its replication slots keep", v)
	}
	for k, v := range s.fixed() {
		if old, ok := params[k]; ok && old != v {
			return nil, fmt.Errorf("patroni configuration: the managed settings set %s to %q, which a cluster node must have as %q", k, old, v)
		}
		params[k] = v
	}
	return params, nil
}

// Generate makes Patroni's YAML for s.
//
// synchronous_mode_strict is on unless AsyncWhenAlone: a commit is
// acknowledged only once the synchronous standby has it, even when the
// standby is gone, so losing the primary after the standby never loses an
// acknowledged commit (the promise). The price: with two nodes,
// writes wait while the standby is down (reads go on); with three, another
// replica becomes the synchronous standby and writes go on. Without it,
// Patroni lets a primary whose standby failed commit alone, and a disk
// lost then loses those commits.
//
// failsafe_mode stays off: with it a primary that loses etcd keeps
// writing, which is the split brain fencing exists to prevent.
func Generate(s Settings) ([]byte, error) {
	if err := s.validate(); err != nil {
		return nil, err
	}
	params, err := LocalParameters(s)
	if err != nil {
		return nil, err
	}
	hba := []string{
		// Replication and rewind: their roles only, SCRAM only, the socket
		// only (the relay from other nodes ends on it). The replication
		// role has no other line: a database walsender (replication=
		// database, which runs SQL) or a plain session of it must not
		// fall through to pgshield's own lines. The rewind role opens
		// Patroni's database only (pg_rewind and Patroni's checks).
		"local replication " + ReplicationRole + " scram-sha-256",
		"local replication all reject",
		"local all " + ReplicationRole + " reject",
		"local " + Database + " " + RewindRole + " scram-sha-256",
		"local all " + RewindRole + " reject",
	}
	hba = append(hba, s.HBA...)

	doc := map[string]any{
		"scope":     s.Scope,
		"namespace": Namespace,
		"name":      s.Node,
		// Patroni 3.0.2 serves REST over TCP only. On the node's loopback,
		// and the same address is advertised: on every other node it is
		// that node's link, which relays here (internal/cluster/link).
		"restapi": map[string]any{
			"listen":          s.restAddr(),
			"connect_address": s.restAddr(),
			"authentication": map[string]string{
				"username": RESTUser,
				"password": s.RESTPassword,
			},
		},
		"etcd3": map[string]any{
			"hosts":    s.Etcd.Endpoints,
			"protocol": "https",
			"cacert":   s.Etcd.CACert,
			"cert":     s.Etcd.ClientCert,
			"key":      s.Etcd.ClientKey,
		},
		"bootstrap": map[string]any{
			"dcs": map[string]any{
				"ttl":                     s.Timings.TTL,
				"loop_wait":               s.Timings.LoopWait,
				"retry_timeout":           s.Timings.RetryTimeout,
				"synchronous_mode":        true,
				"synchronous_mode_strict": !s.AsyncWhenAlone,
				"failsafe_mode":           false,
				"postgresql": map[string]any{
					"use_pg_rewind": true,
					"use_slots":     true,
				},
			},
			// As pgshield's own initdb (internal/postgres): no TCP
			// authentication at all, checksums on.
			"initdb": []any{
				map[string]string{"encoding": "UTF8"},
				map[string]string{"locale": "C.UTF-8"},
				"data-checksums",
				map[string]string{"auth-local": "trust"},
				map[string]string{"auth-host": "reject"},
			},
			"pg_hba": hba,
		},
		"postgresql": map[string]any{
			// Patroni sets listen_addresses from this: an empty host
			// gives listen_addresses = '' (no TCP port). Patroni 3.0.2's
			// --validate-config resolves the host and so rejects it; Patroni
			// itself does not validate on start and takes it as ''.
			"listen": ":" + strconv.Itoa(s.Port),
			// No host, only the link port: see netns.go.
			"connect_address":      ":" + strconv.Itoa(s.LinkPort),
			"use_unix_socket":      true,
			"use_unix_socket_repl": true,
			"database":             Database,
			"data_dir":             s.DataDir,
			"bin_dir":              s.BinDir,
			"pgpass":               s.PgpassFile,
			"authentication": map[string]any{
				"superuser":   map[string]any{"username": SuperuserRole},
				"replication": map[string]any{"username": ReplicationRole},
				"rewind":      map[string]any{"username": RewindRole},
			},
			"parameters": params,
			"pg_hba":     hba,
			// Pinned here because Patroni takes any postgresql key its local
			// file leaves out from the dynamic configuration in etcd, which
			// every etcd client can write: commands it would run as
			// PostgreSQL's OS user outside PostgreSQL's empty namespace.
			"callbacks":              map[string]any{},
			"before_stop":            "",
			"create_replica_methods": []string{"basebackup"},
			"recovery_conf":          map[string]any{},
			"remove_data_directory_on_rewind_failure":     false,
			"remove_data_directory_on_diverged_timelines": false,
			// A replica's base backup starts at once instead of waiting
			// for a spread checkpoint (up to 0.9 of checkpoint_timeout:
			// minutes after a bulk load).
			"basebackup": []any{map[string]string{"checkpoint": "fast"}},
		},
		"tags": map[string]any{
			"nofailover":    false,
			"noloadbalance": false,
			"clonefrom":     false,
			"nosync":        false,
		},
	}
	if s.PrePromote != (PrePromote{}) {
		cmd, err := promote.Command(s.PrePromote.Bin, s.PrePromote.Socket)
		if err != nil {
			return nil, err
		}
		// Patroni 3.0 runs it after taking the leader key and before
		// pg_ctl promote; any exit status but 0 (or the hook being
		// cancelled) refuses the promotion and releases the key.
		doc["postgresql"].(map[string]any)["pre_promote"] = cmd
	}
	b, err := yaml.Marshal(doc)
	if err != nil {
		return nil, err
	}
	return append([]byte("# Written by pgshield; do not edit. It holds the REST API password: 0600, Patroni's user only.\n"), b...), nil
}

// WriteConfig writes Generate's YAML to path for Patroni running as
// uid:gid: mode 0600 and (when run as root) owned by uid:gid from the
// start, through the temporary file's descriptor, then renamed into place,
// so no path is followed after the file exists. The directory must be a
// real directory (not a symlink), 0700 at most, and root's or uid's.
func WriteConfig(path string, s Settings, uid, gid int) error {
	return writeConfig(path, s, uid, gid, 0o600, 0o700, false)
}

// WriteConfigRootOwned is WriteConfig for a daemon that keeps Patroni's
// configuration out of Patroni's user's hands: the file is root's, 0640,
// group gid (Patroni's, which reads it), in a directory that must be
// root's and 0750 at most. Patroni's user can read it but neither change
// it nor put another in its place: code running as that user (a
// compromised PostgreSQL backend) cannot give Patroni, which runs outside
// PostgreSQL's empty network namespace, a callback to run or another
// pre_promote or bin_dir.
func WriteConfigRootOwned(path string, s Settings, gid int) error {
	if os.Geteuid() != 0 {
		return errors.New("patroni configuration: a root-owned file needs root")
	}
	return writeConfig(path, s, 0, gid, 0o640, 0o750, true)
}

func writeConfig(path string, s Settings, uid, gid int, mode, dirMax os.FileMode, rootDir bool) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("patroni configuration: %s is not an absolute path", path)
	}
	dir := filepath.Dir(path)
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("patroni configuration: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok {
		return fmt.Errorf("patroni configuration: %s is not a directory", dir)
	}
	if fi.Mode().Perm()&^dirMax != 0 {
		return fmt.Errorf("patroni configuration: directory %s has mode %04o, wider than %04o", dir, fi.Mode().Perm(), dirMax)
	}
	euid := os.Geteuid()
	if rootDir && st.Uid != 0 {
		return fmt.Errorf("patroni configuration: directory %s belongs to uid %d, not root", dir, st.Uid)
	}
	if st.Uid != 0 && int(st.Uid) != uid && int(st.Uid) != euid {
		return fmt.Errorf("patroni configuration: directory %s belongs to uid %d, not root's or uid %d's", dir, st.Uid, uid)
	}
	b, err := Generate(s)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	err = f.Chmod(mode)
	if err == nil && euid == 0 {
		err = f.Chown(uid, gid)
	}
	if err == nil {
		_, err = f.Write(b)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("patroni configuration: %w", err)
	}
	return os.Rename(tmp, path)
}

// Passwords are the replication and rewind roles' passwords.
type Passwords struct{ Replication, Rewind string }

// WritePgpass writes the libpq password file Patroni and the tools it runs
// read the two roles' passwords from (mode 0600; its directory must be
// 0700). Patroni is started with PGPASSFILE naming it: a path, not a
// secret, in its environment.
func WritePgpass(path string, s Settings, pw Passwords) error {
	return WritePgpassOwned(path, s, pw, -1, -1)
}

// WritePgpassOwned is WritePgpass giving the file to uid:gid through its
// descriptor (config.WriteFileAtomicOwned).
func WritePgpassOwned(path string, s Settings, pw Passwords, uid, gid int) error {
	if pw.Replication == "" || pw.Rewind == "" {
		return errors.New("pgpass: both passwords are needed")
	}
	fi, err := os.Stat(filepath.Dir(path))
	if err != nil {
		return err
	}
	// 0750 at most: a root-owned directory Patroni's group may read
	// (WriteConfigRootOwned's), or Patroni's user's own 0700.
	if fi.Mode().Perm()&^0o750 != 0 {
		return fmt.Errorf("pgpass: directory %s has mode %04o, wider than 0750", filepath.Dir(path), fi.Mode().Perm())
	}
	var b strings.Builder
	for _, e := range [][2]string{{ReplicationRole, pw.Replication}, {RewindRole, pw.Rewind}} {
		// Any host, port and database: the node's own socket and every
		// peer's socket (one port number per peer) all need them.
		fmt.Fprintf(&b, "*:*:*:%s:%s\n", e[0], pgpassEscape(e[1]))
	}
	return config.WriteFileAtomicOwned(path, []byte(b.String()), 0o600, uid, gid)
}

// pgpassEscape escapes ':' and '\' as libpq's password file requires.
func pgpassEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `:`, `\:`).Replace(s)
}
