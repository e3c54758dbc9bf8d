package patroni

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	yaml "go.yaml.in/yaml/v3"
)

func settings(t *testing.T) Settings {
	dir := t.TempDir()
	return Settings{
		Scope: "prod", Node: "node1",
		DataDir: "/var/lib/pgshield/volume/pgdata", BinDir: "/usr/lib/postgresql/15/bin",
		SocketDir: "/run/pgshield/pg", Port: 5432,
		LinkPort: 5501, PeerSocketDir: "/run/pgshield/peers", RestPort: 8101,
		PgpassFile:   filepath.Join(dir, "pgpass"),
		RESTPassword: "rest-Pa55:word'x",
		Managed: map[string]string{
			"listen_addresses": "", "shared_preload_libraries": "pgshield_guard,pgaudit",
			"logging_collector": "on", "archive_command": `pgbackrest --config='/x y' archive-push %p`,
		},
		HBA: []string{"local all all trust"},
		Etcd: EtcdClient{
			Endpoints: []string{"10.77.0.11:2379", "10.77.0.12:2379", "10.77.0.13:2379"},
			CACert:    "/etc/pgshield/etcd/ca.crt", ClientCert: "/etc/pgshield/etcd/client.crt", ClientKey: "/etc/pgshield/etcd/client.key",
		},
		Timings: TestTimings,
	}
}

type doc struct {
	Scope   string `yaml:"scope"`
	Name    string `yaml:"name"`
	Restapi struct {
		Listen         string `yaml:"listen"`
		ConnectAddress string `yaml:"connect_address"`
	} `yaml:"restapi"`
	Etcd3 struct {
		Hosts    []string `yaml:"hosts"`
		Protocol string   `yaml:"protocol"`
		CACert   string   `yaml:"cacert"`
		Cert     string   `yaml:"cert"`
		Key      string   `yaml:"key"`
	} `yaml:"etcd3"`
	Bootstrap struct {
		DCS struct {
			TTL          int   `yaml:"ttl"`
			LoopWait     int   `yaml:"loop_wait"`
			RetryTimeout int   `yaml:"retry_timeout"`
			Sync         *bool `yaml:"synchronous_mode"`
			Strict       *bool `yaml:"synchronous_mode_strict"`
			Failsafe     *bool `yaml:"failsafe_mode"`
		} `yaml:"dcs"`
		Initdb []any    `yaml:"initdb"`
		PgHBA  []string `yaml:"pg_hba"`
	} `yaml:"bootstrap"`
	Postgresql struct {
		Listen            string                       `yaml:"listen"`
		ConnectAddress    string                       `yaml:"connect_address"`
		UseUnixSocket     bool                         `yaml:"use_unix_socket"`
		UseUnixSocketRepl bool                         `yaml:"use_unix_socket_repl"`
		Pgpass            string                       `yaml:"pgpass"`
		Authentication    map[string]map[string]string `yaml:"authentication"`
		Parameters        map[string]string            `yaml:"parameters"`
		PgHBA             []string                     `yaml:"pg_hba"`
		Basebackup        []map[string]string          `yaml:"basebackup"`
	} `yaml:"postgresql"`
}

func parse(t *testing.T, b []byte) doc {
	t.Helper()
	var d doc
	if err := yaml.Unmarshal(b, &d); err != nil {
		t.Fatalf("the generated YAML does not parse: %v\n%s", err, b)
	}
	return d
}

func TestGenerate(t *testing.T) {
	s := settings(t)
	b, err := Generate(s)
	if err != nil {
		t.Fatal(err)
	}
	d := parse(t, b)
	if d.Scope != "prod" || d.Name != "node1" || d.Restapi.Listen != "127.0.0.1:8101" || d.Restapi.ConnectAddress != "127.0.0.1:8101" {
		t.Errorf("scope/name/restapi: %+v", d)
	}
	e := d.Etcd3
	if e.Protocol != "https" || len(e.Hosts) != 3 || e.CACert != s.Etcd.CACert || e.Cert != s.Etcd.ClientCert || e.Key != s.Etcd.ClientKey {
		t.Errorf("etcd3: %+v", e)
	}
	dcs := d.Bootstrap.DCS
	if dcs.TTL != 10 || dcs.LoopWait != 2 || dcs.RetryTimeout != 4 {
		t.Errorf("timings %d/%d/%d, want 10/2/4", dcs.TTL, dcs.LoopWait, dcs.RetryTimeout)
	}
	if dcs.Sync == nil || !*dcs.Sync || dcs.Strict == nil || !*dcs.Strict || dcs.Failsafe == nil || *dcs.Failsafe {
		t.Errorf("synchronous_mode, _strict, failsafe_mode: %v %v %v", dcs.Sync, dcs.Strict, dcs.Failsafe)
	}
	pg := d.Postgresql
	// No host in connect_address: other nodes connect to the peer socket
	// for port 5501 that PGHOST names (netns.go).
	if pg.Listen != ":5432" || pg.ConnectAddress != ":5501" || !pg.UseUnixSocket || !pg.UseUnixSocketRepl || pg.Pgpass != s.PgpassFile {
		t.Errorf("postgresql: %+v", pg)
	}
	if len(pg.Basebackup) != 1 || pg.Basebackup[0]["checkpoint"] != "fast" {
		t.Errorf("basebackup = %v; want checkpoint: fast", pg.Basebackup)
	}
	p := pg.Parameters
	want := map[string]string{
		"listen_addresses": "", "port": "5432", "unix_socket_directories": "/run/pgshield/pg",
		"password_encryption": "scram-sha-256", "shared_preload_libraries": "pgshield_guard,pgaudit",
		"logging_collector": "on", "archive_command": `pgbackrest --config='/x y' archive-push %p`,
	}
	for k, v := range want {
		if got, ok := p[k]; !ok || got != v {
			t.Errorf("parameter %s = %q (present %v), want %q", k, got, ok, v)
		}
	}
	if got := pg.Authentication["replication"]["username"]; got != ReplicationRole {
		t.Errorf("replication user %q", got)
	}
	if got := pg.Authentication["rewind"]["username"]; got != RewindRole {
		t.Errorf("rewind user %q", got)
	}
	for role, a := range pg.Authentication {
		if _, ok := a["password"]; ok {
			t.Errorf("a password for %s in the YAML", role)
		}
	}
	// SCRAM lines first: pgshield's "local all all trust" must not admit
	// the replication role before them.
	if len(pg.PgHBA) < 4 || pg.PgHBA[0] != "local replication "+ReplicationRole+" scram-sha-256" || pg.PgHBA[len(pg.PgHBA)-1] != "local all all trust" {
		t.Errorf("pg_hba: %q", pg.PgHBA)
	}
	if strings.Join(d.Bootstrap.PgHBA, "\n") != strings.Join(pg.PgHBA, "\n") {
		t.Errorf("bootstrap.pg_hba %q differs from postgresql.pg_hba", d.Bootstrap.PgHBA)
	}
	if !strings.Contains(fmt.Sprint(d.Bootstrap.Initdb), "auth-host:reject") {
		t.Errorf("bootstrap.initdb: %v", d.Bootstrap.Initdb)
	}
	for _, l := range pg.PgHBA {
		if strings.HasPrefix(l, "host") {
			t.Errorf("a TCP line in pg_hba: %q", l)
		}
	}

	s.AsyncWhenAlone = true
	s.Timings = DefaultTimings
	b, err = Generate(s)
	if err != nil {
		t.Fatal(err)
	}
	d = parse(t, b)
	if dcs := d.Bootstrap.DCS; *dcs.Strict || !*dcs.Sync || dcs.TTL != 30 || dcs.LoopWait != 10 || dcs.RetryTimeout != 10 {
		t.Errorf("AsyncWhenAlone with default timings: %+v", dcs)
	}
}

// An administrator's value smuggled into the managed settings (or a bug)
// must not open a TCP port or move the socket on a cluster node.
func TestGenerateRefusesOverride(t *testing.T) {
	for k, v := range map[string]string{"listen_addresses": "*", "port": "5433", "unix_socket_directories": "/tmp", "ssl": "on", "PASSWORD_ENCRYPTION": "md5"} {
		s := settings(t)
		s.Managed[k] = v
		if _, err := Generate(s); err == nil || !strings.Contains(err.Error(), strings.ToLower(k)) {
			t.Errorf("%s = %s: %v", k, v, err)
		}
	}
}

func TestGenerateRefusesBadSettings(t *testing.T) {
	cases := map[string]func(*Settings){
		"no scope":               func(s *Settings) { s.Scope = "" },
		"relative path":          func(s *Settings) { s.DataDir = "pgdata" },
		"no etcd":                func(s *Settings) { s.Etcd.Endpoints = nil },
		"bad endpoint":           func(s *Settings) { s.Etcd.Endpoints = []string{"https://a"} },
		"port":                   func(s *Settings) { s.Port = 0 },
		"ttl too short":          func(s *Settings) { s.Timings = Timings{TTL: 10, LoopWait: 5, RetryTimeout: 4} },
		"no etcd cert":           func(s *Settings) { s.Etcd.ClientKey = "" },
		"no REST port":           func(s *Settings) { s.RestPort = 0 },
		"link port":              func(s *Settings) { s.LinkPort = 70000 },
		"no peer socket dir":     func(s *Settings) { s.PeerSocketDir = "" },
		"relative peer dir":      func(s *Settings) { s.PeerSocketDir = "peers" },
		"peer dir is socket dir": func(s *Settings) { s.PeerSocketDir = s.SocketDir + "/" },
	}
	for name, f := range cases {
		s := settings(t)
		f(&s)
		if _, err := Generate(s); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestNoSecretInYAML(t *testing.T) {
	s := settings(t)
	pw := Passwords{Replication: "repl-S3cret:with\\colon", Rewind: "rewind-Sec'ret"}
	if err := os.Chmod(filepath.Dir(s.PgpassFile), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := WritePgpass(s.PgpassFile, s, pw); err != nil {
		t.Fatal(err)
	}
	b, err := Generate(s)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{pw.Replication, pw.Rewind, "S3cret", "Sec'ret"} {
		if strings.Contains(string(b), secret) {
			t.Errorf("%q is in the YAML", secret)
		}
	}
	fi, err := os.Stat(s.PgpassFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("pgpass mode %04o", fi.Mode().Perm())
	}
	got, _ := os.ReadFile(s.PgpassFile)
	want := "*:*:*:" + ReplicationRole + `:repl-S3cret\:with\\colon` + "\n*:*:*:" + RewindRole + ":rewind-Sec'ret\n"
	if string(got) != want {
		t.Errorf("pgpass:\n%s\nwant:\n%s", got, want)
	}
	// A directory others can enter is refused.
	if err := os.Chmod(filepath.Dir(s.PgpassFile), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := WritePgpass(s.PgpassFile, s, pw); err == nil {
		t.Error("pgpass written into a 0755 directory")
	}
	if err := WritePgpass(s.PgpassFile, s, Passwords{Replication: "x"}); err == nil {
		t.Error("an empty password accepted")
	}
}

func TestParseConf(t *testing.T) {
	got, err := ParseConf(`# comment
listen_addresses = ''
port = 5432
unix_socket_directories = '/run/pg sock'   # trailing comment
archive_command = 'a ''quoted'' \\ b'
Log_Destination = 'jsonlog'
wal_init_zero = off
port = 5433
`)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"listen_addresses": "", "port": "5433", "unix_socket_directories": "/run/pg sock",
		"archive_command": `a 'quoted' \ b`, "log_destination": "jsonlog", "wal_init_zero": "off"}
	if len(got) != len(want) {
		t.Errorf("got %v", got)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	for _, bad := range []string{"x", "a = 'unterminated", "a = 'x' y", "a = b c", "= 1", "a b = 1"} {
		if _, err := ParseConf(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// The REST API password is the YAML's one secret: Generate refuses to run
// without it, it appears once, under restapi.authentication, and
// WriteConfig writes the file 0600 for Patroni's user only, in a 0700
// directory, never through a symlink.
func TestWriteConfigRESTPassword(t *testing.T) {
	s := settings(t)
	none := s
	none.RESTPassword = ""
	if _, err := Generate(none); err == nil {
		t.Error("Generate without a REST API password: no error")
	}
	b, err := Generate(s)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), "Pa55"); n != 1 {
		t.Errorf("the REST password is in the YAML %d times, want once", n)
	}
	var d struct {
		Restapi struct {
			Authentication map[string]string `yaml:"authentication"`
		} `yaml:"restapi"`
	}
	if err := yaml.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	if a := d.Restapi.Authentication; a["username"] != RESTUser || a["password"] != s.RESTPassword || len(a) != 2 {
		t.Errorf("restapi.authentication = %v", a)
	}
	for _, e := range Env(s) {
		if strings.Contains(e, "Pa55") {
			t.Errorf("the REST password is in Patroni's environment: %q", e)
		}
	}

	uid, gid := os.Getuid(), os.Getgid()
	if os.Geteuid() == 0 {
		uid, gid = 4242, 4242
	}
	dir := filepath.Join(t.TempDir(), "conf")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "patroni.yml")
	if err := WriteConfig(path, s, uid, gid); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode() != 0o600 || int(st.Uid) != uid || int(st.Gid) != gid {
		t.Errorf("patroni.yml: %v %d:%d, want -rw------- %d:%d", fi.Mode(), st.Uid, st.Gid, uid, gid)
	}
	if got, _ := os.ReadFile(path); string(got) != string(b) {
		t.Error("patroni.yml is not Generate's YAML")
	}

	// A directory others can enter, and a symlink to a 0700 directory.
	wide := filepath.Join(t.TempDir(), "wide")
	if err := os.Mkdir(wide, 0o755); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(wide, 0o755)
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join(wide, "patroni.yml"), filepath.Join(link, "patroni.yml")} {
		if err := WriteConfig(p, s, uid, gid); err == nil {
			t.Errorf("WriteConfig(%q): no error", p)
		}
	}
}

// Replication slots cannot keep WAL without bound: the default, an
// administrator's own bound, and unlimited (-1) refused.
func TestMaxSlotWALKeepSize(t *testing.T) {
	for _, tc := range []struct {
		managed, want string
		ok            bool
	}{
		{"", DefaultMaxSlotWALKeepSize, true},
		{"2GB", "2GB", true},
		{"-1", "", false},
		{" -1", "", false},
	} {
		s := settings(t)
		if tc.managed != "" {
			s.Managed["max_slot_wal_keep_size"] = tc.managed
		}
		b, err := Generate(s)
		if (err == nil) != tc.ok {
			t.Errorf("Generate(max_slot_wal_keep_size=%q) error = %v; want ok %v", tc.managed, err, tc.ok)
			continue
		}
		if err != nil {
			continue
		}
		var d struct {
			PG struct {
				Parameters map[string]string `yaml:"parameters"`
			} `yaml:"postgresql"`
		}
		if err := yaml.Unmarshal(b, &d); err != nil {
			t.Fatal(err)
		}
		if got := d.PG.Parameters["max_slot_wal_keep_size"]; got != tc.want {
			t.Errorf("max_slot_wal_keep_size = %q, want %q", got, tc.want)
		}
	}
}
