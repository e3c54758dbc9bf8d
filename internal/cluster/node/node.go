// Package node is what a high-availability pgshield runs besides its
// gateway (issue #18): Patroni in place of the postmaster (through the
// postgres supervisor's Command), the node link that carries replication
// and Patroni's REST calls between nodes, the promotion socket Patroni's
// pre_promote hook asks, and the leadership fence the gateway follows.
// The daemon builds one Node when its configuration has a cluster
// section; a single node never does.
package node

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pgshield/pgshield/internal/auth/scram"
	"github.com/pgshield/pgshield/internal/cluster/fence"
	"github.com/pgshield/pgshield/internal/cluster/link"
	"github.com/pgshield/pgshield/internal/cluster/patroni"
	"github.com/pgshield/pgshield/internal/cluster/promote"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/pgbackend"
	"github.com/pgshield/pgshield/internal/postgres"
)

// The files of Layout.ClusterDir, brought by `init --ha --ha-files DIR`.
const (
	FileCA          = "ca.crt"   // the cluster CA (node certificates)
	FileNodeCert    = "node.crt" // this node's, CN = its name
	FileNodeKey     = "node.key"
	FileEtcdCA      = "etcd-ca.crt"
	FileEtcdCert    = "etcd-client.crt"
	FileEtcdKey     = "etcd-client.key"
	FileSecrets     = "secrets.json" // Secrets
	patroniBin      = "/usr/bin/patroni"
	pythonBin       = "/usr/bin/python3"
	patroniYAML     = "patroni.yml"
	patroniLauncher = "launch.py"
	patroniPgpass   = "pgpass"
	fenceMarginSec  = 1
)

// Files are the names every node's cluster directory holds.
var Files = []string{FileCA, FileNodeCert, FileNodeKey, FileEtcdCA, FileEtcdCert, FileEtcdKey, FileSecrets}

// Secrets are the cluster's, the same on every node: the replication and
// rewind roles' passwords (PostgreSQL holds only their SCRAM verifiers),
// and the key that MACs what the nodes share through PostgreSQL
// (shared.go). Only root reads them: Patroni's pgpass has the two
// passwords, never the config key.
type Secrets struct {
	Replication string `json:"replication"`
	Rewind      string `json:"rewind"`
	Config      string `json:"config"`
}

// ReadSecrets reads and checks secrets.json.
func ReadSecrets(path string) (Secrets, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Secrets{}, err
	}
	s, err := ParseSecrets(b)
	if err != nil {
		return s, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// ParseSecrets checks a secrets bundle (secrets.json's content).
func ParseSecrets(b []byte) (Secrets, error) {
	var s Secrets
	if err := json.Unmarshal(b, &s); err != nil {
		return s, errors.New("not the cluster's secrets")
	}
	if len(s.Replication) < 16 || len(s.Rewind) < 16 || len(s.Config) < 16 {
		return s, errors.New("replication, rewind and config must each be at least 16 characters")
	}
	for _, v := range []string{s.Replication, s.Rewind, s.Config} {
		if strings.IndexFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0 {
			return s, errors.New("replication, rewind and config may hold no control characters")
		}
	}
	return s, nil
}

// NewSecrets makes fresh random passwords.
func NewSecrets() Secrets {
	return Secrets{Replication: rand.Text(), Rewind: rand.Text(), Config: rand.Text()}
}

// RoleStatements create the replication and rewind roles on the first
// node (its bootstrap, run as the superuser over the socket), each with a
// SCRAM verifier: no password reaches PostgreSQL. The rewind role gets
// the four functions pg_rewind reads the source with, as Patroni's own
// bootstrap grants them.
func RoleStatements(s Secrets) ([]string, error) {
	var stmts []string
	for _, r := range []struct{ role, pw, attrs string }{
		{config.ReplicationRole, s.Replication, "LOGIN REPLICATION"},
		{config.RewindRole, s.Rewind, "LOGIN"},
	} {
		salt := make([]byte, 16)
		if _, err := rand.Read(salt); err != nil {
			return nil, err
		}
		v, err := scram.Verifier(r.role, r.pw, salt, scram.DefaultIterations)
		if err != nil {
			return nil, err
		}
		stmts = append(stmts, fmt.Sprintf("CREATE ROLE %s %s PASSWORD %s", r.role, r.attrs, postgres.QuoteLiteral(v)),
			fmt.Sprintf("COMMENT ON ROLE %s IS 'pgshield cluster role (reserved)'", r.role))
	}
	for _, fn := range []string{"pg_catalog.pg_ls_dir(text, boolean, boolean)", "pg_catalog.pg_stat_file(text, boolean)",
		"pg_catalog.pg_read_binary_file(text)", "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)"} {
		stmts = append(stmts, "GRANT EXECUTE ON FUNCTION "+fn+" TO "+config.RewindRole)
	}
	return stmts, nil
}

// Config is what a Node needs.
type Config struct {
	Layout config.Layout
	Cfg    *config.Config // Cfg.Cluster is set
	User   postgres.OSUser
	// Bin is the pgshield binary Patroni's pre_promote hook runs.
	Bin string
	// Volume and Keys answer the promotion check (volume.AtRest, the keys
	// controller).
	Volume promote.Volume
	Keys   promote.Keys
	// PatroniPID is the running Patroni's pid (the supervisor's), 0 if
	// none: only its socket is talked to on the REST port.
	PatroniPID func() int
	// OnLeader, if set, runs in a goroutine of its own each time the
	// fence confirms this node's leadership after not having it (the
	// backup stanza, which only a primary can make).
	OnLeader func()
	Log      *slog.Logger
}

// Node is one cluster node's machinery around its PostgreSQL.
type Node struct {
	c        Config
	cl       *config.Cluster
	secrets  Secrets
	link     *link.Node
	fence    *fence.Fence
	settings patroni.Settings
	// local reaches Patroni's REST API on the loopback; etcd the members,
	// with the node's client certificate (cluster show).
	local, etcd *http.Client

	mu sync.Mutex // guards settings' Managed and HBA (WriteSettings)
	// managed are the local parameters WriteSettings last wrote, guarded
	// by mu (settings itself is not changed after New).
	managed map[string]string
}

// Timings are the cluster's Patroni timings.
func Timings(cl *config.Cluster) patroni.Timings {
	t := patroni.DefaultTimings
	if cl.TTL != 0 {
		t = patroni.Timings{TTL: cl.TTL, LoopWait: cl.LoopWait, RetryTimeout: cl.RetryTimeout}
	}
	return t
}

// New reads the node's cluster material and builds its link and fence;
// nothing runs yet.
func New(c Config) (*Node, error) {
	if c.Cfg == nil || c.Cfg.Cluster == nil {
		return nil, errors.New("cluster node: no cluster configuration")
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	cl := c.Cfg.Cluster
	dir := c.Layout.ClusterDir()
	f := func(name string) string { return filepath.Join(dir, name) }
	sec, err := ReadSecrets(f(FileSecrets))
	if err != nil {
		return nil, fmt.Errorf("cluster node: %w", err)
	}
	timings := Timings(cl)
	if err := timings.Validate(); err != nil {
		return nil, err
	}
	n := &Node{c: c, cl: cl, secrets: sec}
	pdir := c.Layout.PatroniDir()
	n.settings = patroni.Settings{
		Scope: cl.Scope, Node: cl.Node,
		DataDir: c.Layout.PGData(), BinDir: c.Layout.PatroniBinDir(),
		SocketDir: c.Layout.SocketDir(), Port: c.Cfg.PGPort,
		LinkPort: cl.LinkPort, PeerSocketDir: c.Layout.PeerSocketDir(), RestPort: cl.RESTPort,
		PgpassFile: filepath.Join(c.Layout.PatroniPassDir(), patroniPgpass),
		// A new one at each start: only Patroni (its YAML) and this
		// process need it.
		RESTPassword: rand.Text(),
		Etcd: patroni.EtcdClient{Endpoints: cl.Etcd, CACert: filepath.Join(pdir, FileEtcdCA),
			ClientCert: filepath.Join(pdir, FileEtcdCert), ClientKey: filepath.Join(pdir, FileEtcdKey)},
		Timings:        timings,
		AsyncWhenAlone: cl.AsyncWhenAlone,
		PrePromote:     patroni.PrePromote{Bin: c.Bin, Socket: c.Layout.PromoteSocket()},
	}

	id, err := link.LoadIdentity(cl.Node, f(FileCA), f(FileNodeCert), f(FileNodeKey))
	if err != nil {
		return nil, fmt.Errorf("cluster node: %w", err)
	}
	var peers []link.Peer
	for _, p := range cl.Peers {
		peers = append(peers, link.Peer{Name: p.Name, Addr: p.Addr, PGPort: p.LinkPort, RESTPort: p.RESTPort})
	}
	n.link, err = link.New(link.Config{Identity: id, Listen: cl.LinkListen,
		Socket: pgbackend.SocketPath(c.Layout.SocketDir(), c.Cfg.PGPort),
		REST:   net.JoinHostPort("127.0.0.1", strconv.Itoa(cl.RESTPort)), Database: patroni.Database,
		Peers: peers, PeerSocketDir: c.Layout.PeerSocketDir(), SocketUID: int(c.User.UID), SocketGID: int(c.User.GID),
		// For a peer joining (`init --ha`): the secrets it would otherwise
		// be handed as a file.
		Secrets: func() []byte { b, _ := json.Marshal(sec); return b },
		Log:     c.Log.With("component", "link")})
	if err != nil {
		return nil, err
	}

	cert, err := tls.LoadX509KeyPair(f(FileEtcdCert), f(FileEtcdKey))
	if err != nil {
		return nil, fmt.Errorf("cluster node: etcd client certificate: %w", err)
	}
	caPEM, err := os.ReadFile(f(FileEtcdCA))
	if err != nil {
		return nil, fmt.Errorf("cluster node: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("cluster node: %s holds no certificate", f(FileEtcdCA))
	}
	etcdTLS := &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	// Never a proxy from the environment, never a redirect followed.
	noRedirect := func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	n.etcd = &http.Client{Timeout: showTimeout, CheckRedirect: noRedirect, Transport: &http.Transport{Proxy: nil, TLSClientConfig: etcdTLS}}
	n.local = &http.Client{Timeout: showTimeout, CheckRedirect: noRedirect, Transport: &http.Transport{Proxy: nil}}
	var eps []string
	for _, e := range cl.Etcd {
		eps = append(eps, "https://"+e)
	}
	n.fence, err = fence.New(fence.Config{Endpoints: eps, TLS: etcdTLS,
		Namespace: patroni.Namespace, Scope: cl.Scope, Node: cl.Node,
		TTL: time.Duration(timings.TTL) * time.Second, LoopWait: time.Duration(timings.LoopWait) * time.Second,
		Margin: fenceMarginSec * time.Second, Log: c.Log.With("component", "fence"),
		OnConfirm: func() {
			if c.OnLeader != nil {
				go c.OnLeader()
			}
		}})
	if err != nil {
		return nil, err
	}
	return n, nil
}

// Fence is the gateway's leadership (gateway.Leadership).
func (n *Node) Fence() *fence.Fence { return n.fence }

// WriteSettings is postgres.Cluster.WriteSettings: pgshield's managed
// settings and pg_hba lines become Patroni's local parameters and pg_hba
// (which no PATCH /config can override), written with the bin directory,
// the pgpass file and Patroni's copies of the etcd client files into
// Layout.PatroniDir, Patroni's user's alone.
func (n *Node) WriteSettings(managedConf string, hba []string) error {
	managed, err := patroni.ParseConf(managedConf)
	if err != nil {
		return fmt.Errorf("cluster node: managed settings: %w", err)
	}
	// The postmaster runs in a user namespace that maps only its own
	// user (patroni/netns.go), so the gateway's connections (root's)
	// reach it from an unmapped uid: the kernel's overflow uid. That is
	// who pgshield_guard must believe the client identity from. Nobody
	// else can be that peer: the socket's directory is 0700 and
	// PostgreSQL's user's, so only root (and that user, which is mapped
	// to itself) can open the socket at all.
	ov, err := os.ReadFile("/proc/sys/kernel/overflowuid")
	if err != nil {
		return fmt.Errorf("cluster node: %w", err)
	}
	overflow, err := strconv.Atoi(strings.TrimSpace(string(ov)))
	if err != nil || overflow <= 0 || overflow == int(n.c.User.UID) {
		return fmt.Errorf("cluster node: overflow uid %q", ov)
	}
	managed["pgshield_guard.gateway_uid"] = strconv.Itoa(overflow)
	// Protected parameters the managed settings leave at PostgreSQL's
	// default are pinned too: the local parameters win over the dynamic
	// configuration, which any etcd client can write for every node.
	for k, v := range clusterPins {
		if _, ok := managed[k]; !ok {
			managed[k] = v
		}
	}
	// pg_rewind reads the source's files as this role; pgshield_guard
	// lets no one else below superuser do so (the role is reserved: no
	// one may become it or be granted it).
	managed["pgshield_guard.rewind_role"] = config.RewindRole
	n.mu.Lock()
	defer n.mu.Unlock()
	uid, gid := int(n.c.User.UID), int(n.c.User.GID)
	pdir := n.c.Layout.PatroniDir()
	if err := readableDir(pdir, gid); err != nil {
		return err
	}
	for _, name := range []string{FileEtcdCA, FileEtcdCert, FileEtcdKey} {
		b, err := os.ReadFile(filepath.Join(n.c.Layout.ClusterDir(), name))
		if err != nil {
			return err
		}
		// Root's, readable by Patroni's group: not replaceable by it.
		if err := config.WriteFileAtomicOwned(filepath.Join(pdir, name), b, 0o640, 0, gid); err != nil {
			return err
		}
	}
	// The files Patroni points PostgreSQL at (its config_dir is the data
	// directory), pinned on the command line.
	pins := maps.Clone(managed)
	pins["data_directory"] = n.settings.DataDir
	pins["hba_file"] = filepath.Join(n.settings.DataDir, "pg_hba.conf")
	pins["ident_file"] = filepath.Join(n.settings.DataDir, "pg_ident.conf")
	if err := patroni.WriteBinDirPinned(n.settings.BinDir, n.c.Cfg.PGBinDir, pins); err != nil {
		return err
	}
	if err := patroni.WriteLauncher(filepath.Join(pdir, patroniLauncher), gid); err != nil {
		return err
	}
	n.managed = managed // SetParameter refuses what these pin
	s := n.settings
	s.Managed, s.HBA = managed, hba
	if err := patroni.WriteConfigRootOwned(filepath.Join(pdir, patroniYAML), s, gid); err != nil {
		return err
	}
	// libpq wants its password file 0600 and Patroni its directory
	// writable: both Patroni's user's, alone in their directory.
	if err := privateDir(n.c.Layout.PatroniPassDir(), uid, gid); err != nil {
		return err
	}
	if err := readableDir(n.c.Layout.PatroniHome(), gid); err != nil {
		return err
	}
	if err := patroni.WritePgpassOwned(s.PgpassFile, s, patroni.Passwords{Replication: n.secrets.Replication, Rewind: n.secrets.Rewind}, uid, gid); err != nil {
		return err
	}
	// A change while Patroni runs (pgshield_guard's lists: an
	// administrator principal, the allowed extensions, either received
	// from the cluster) reaches PostgreSQL only through Patroni, which
	// reads its YAML again on SIGHUP and, at the start of its next cycle
	// (within loop_wait), rewrites postgresql.conf and reloads PostgreSQL.
	// The pid is the supervisor's child, not yet reaped: it cannot have
	// been reused.
	if n.c.PatroniPID != nil {
		if pid := n.c.PatroniPID(); pid > 0 {
			if err := syscall.Kill(pid, syscall.SIGHUP); err != nil && !errors.Is(err, syscall.ESRCH) {
				return fmt.Errorf("cluster node: asking Patroni to reload: %w", err)
			}
		}
	}
	return nil
}

// clusterPins are PostgreSQL's defaults of protected parameters
// (postgres.ProtectedParameter) that pgshield's managed settings do not
// set. Not here: data_directory, config_file, hba_file and ident_file,
// which Patroni sets or reads itself (a local hba_file would stop it
// writing pg_hba.conf); archive_mode, archive_command and restore_command,
// pinned on the postgres wrapper's command line (patroni/netns.go); the
// ssl_* files (ssl is off) and event_source (Windows).
var clusterPins = map[string]string{
	"allow_system_table_mods": "off", "ignore_system_indexes": "off", "zero_damaged_pages": "off",
	"ignore_checksum_failure": "off", "jit_provider": "llvmjit", "local_preload_libraries": "",
	"session_preload_libraries": "", "dynamic_library_path": "$libdir", "external_pid_file": "",
	"ssl_passphrase_command": "", "krb_server_keyfile": "FILE:/etc/postgresql-common/krb5.keytab",
}

// Command is the postgres supervisor's Command: Patroni, as PostgreSQL's
// OS user, with only paths in its environment.
func (n *Node) Command() (*exec.Cmd, error) {
	if _, err := os.Stat(patroniBin); err != nil {
		return nil, fmt.Errorf("Patroni is not installed (%s): apt-get install -y patroni", patroniBin)
	}
	// Isolated mode (-I): no user site-packages, no PYTHON* variables, no
	// script directory on the path. Otherwise Python runs the .pth files
	// of ~/.local, which PostgreSQL's OS user can write from inside its
	// namespace, in Patroni, outside it.
	// Through pgshield's launcher (root's): Patroni's entry point after an
	// upstream fix Debian's 3.0.2 lacks (patroni.Launcher).
	cmd := n.c.User.Command(pythonBin, "-I", filepath.Join(n.c.Layout.PatroniDir(), patroniLauncher), filepath.Join(n.c.Layout.PatroniDir(), patroniYAML))
	cmd.Env = append(patroni.Env(n.settings), "HOME="+n.c.Layout.PatroniHome(), "PYTHONNOUSERSITE=1")
	// The postmaster Patroni detaches keeps the output pipes open: without
	// this, Wait would not return when Patroni dies, and it would never be
	// restarted.
	cmd.WaitDelay = 2 * time.Second
	// Patroni's own log (leader races, promotions, rewinds) is the
	// operator's: into pgshield's log, a line per record, bounded.
	w := &lineLog{log: n.c.Log.With("component", "patroni")}
	cmd.Stdout, cmd.Stderr = w, w
	return cmd, nil
}

// lineLog logs each line written to it; a line longer than maxLine is
// cut. Used by one process's stdout and stderr at once.
type lineLog struct {
	log *slog.Logger
	mu  sync.Mutex
	buf []byte
}

const maxLine = 4096

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, b := range p {
		if b == '\n' {
			l.flush()
			continue
		}
		if len(l.buf) < maxLine {
			l.buf = append(l.buf, b)
		}
	}
	return len(p), nil
}

func (l *lineLog) flush() {
	if len(l.buf) > 0 {
		l.log.Info(strings.ToValidUTF8(string(l.buf), "?"))
		l.buf = l.buf[:0]
	}
}

// Start starts the link, the promotion socket and the fence, which run
// until ctx ends; it returns once the link's peer sockets exist (Patroni
// clones and replicates through them).
func (n *Node) Start(ctx context.Context) error {
	// Patroni runs as PostgreSQL's OS user outside PostgreSQL's empty
	// network namespace; without Yama's ptrace restriction, code running
	// as that user (a compromised backend) could trace it.
	if b, err := os.ReadFile("/proc/sys/kernel/yama/ptrace_scope"); err != nil || strings.TrimSpace(string(b)) == "0" {
		n.c.Log.Warn("Yama's ptrace_scope is not set (kernel.yama.ptrace_scope >= 1 recommended): code running as PostgreSQL's OS user could trace Patroni, which reaches the network and etcd.")
	}
	ln, err := promote.Listen(n.c.Layout.PromoteSocket(), int(n.c.User.UID))
	if err != nil {
		return fmt.Errorf("promotion socket: %w", err)
	}
	srv := &promote.Server{Volume: n.c.Volume, Keys: n.c.Keys, UID: int(n.c.User.UID), Log: n.c.Log.With("component", "promote")}
	go func() {
		if err := srv.Serve(ctx, ln); err != nil && ctx.Err() == nil {
			n.c.Log.Error("The promotion socket stopped; this node cannot be promoted.", "error", err)
		}
	}()
	linkErr := make(chan error, 1)
	go func() { linkErr <- n.link.Serve(ctx) }()
	go func() {
		if err := n.fence.Run(ctx); err != nil && ctx.Err() == nil {
			n.c.Log.Error("The leadership fence stopped; the gateway stays fenced.", "error", err)
		}
	}()
	select {
	case <-n.link.Ready():
		return nil
	case err := <-linkErr:
		return fmt.Errorf("node link: %w", err)
	case <-time.After(30 * time.Second):
		return errors.New("node link: not ready after 30 s")
	}
}

// privateDir makes dir a 0700 directory of uid:gid, refusing a symlink;
// its parent, the data directory, is root's.
func privateDir(dir string, uid, gid int) error { return ownedDir(dir, uid, gid, 0o700) }

// readableDir makes dir root's, 0750, group gid (Patroni's user reads
// what is in it and can change none of it), refusing a symlink. Its
// parent, the data directory, is root's: no one else can swap it.
func readableDir(dir string, gid int) error { return ownedDir(dir, 0, gid, 0o750) }

func ownedDir(dir string, uid, gid int, mode os.FileMode) error {
	if err := os.Mkdir(dir, mode); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if err := os.Chown(dir, uid, gid); err != nil {
		return err
	}
	return os.Chmod(dir, mode)
}

// MaxJoinWindow bounds AllowJoin's window.
const MaxJoinWindow = 24 * time.Hour

// AllowJoin lets peer, joining, ask this node for the cluster's secrets
// over the link once within d (`cluster allow-join`).
func (n *Node) AllowJoin(peer string, d time.Duration) (time.Time, error) {
	if d <= 0 || d > MaxJoinWindow {
		return time.Time{}, fmt.Errorf("a join window lasts from 1 s to %s, not %s", MaxJoinWindow, d)
	}
	until := time.Now().Add(d)
	return until, n.link.AllowJoin(peer, until)
}
