package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const minimal = `{"tls_cert_file": "/d/tls/server.crt", "tls_key_file": "/d/tls/server.key"}`

func TestDecode(t *testing.T) {
	full := `{
  "version": 1,
  "listen": "0.0.0.0:6432",
  "admin_user": "boss",
  "service_role": "svc",
  "pg_bin_dir": "/opt/pg/bin",
  "pg_port": 6543,
  "pg_os_user": "pg",
  "tls_cert_file": "/c",
  "tls_key_file": "/k",
  "ca_file": "/ca",
  "parameters": {"require_secure_transport": "off"}
}
`
	tests := []struct {
		name    string
		in      string
		wantErr string // substring; "" means success
		want    *Config
	}{
		{name: "minimal gets defaults", in: minimal, want: &Config{Version: 1, Listen: "127.0.0.1:5432",
			AdminUser: "pgadmin", ServiceRole: "pgshield_service", PGBinDir: "/usr/lib/postgresql/15/bin",
			PGPort: 5432, PGOSUser: "postgres", TLSCertFile: "/d/tls/server.crt", TLSKeyFile: "/d/tls/server.key",
			Parameters: map[string]string{}}},
		{name: "full", in: full, want: &Config{Version: 1, Listen: "0.0.0.0:6432", AdminUser: "boss",
			ServiceRole: "svc", PGBinDir: "/opt/pg/bin", PGPort: 6543, PGOSUser: "pg", TLSCertFile: "/c",
			TLSKeyFile: "/k", CAFile: "/ca", Parameters: map[string]string{"require_secure_transport": "off"}}},
		{name: "surrounding whitespace", in: "\n\t " + minimal + " \n\n"},
		{name: "unknown field", in: `{"tls_cert_file": "c", "tls_key_file": "k", "tls_ciphers": "ALL"}`,
			wantErr: `unknown field "tls_ciphers"`},
		{name: "unknown nested field type", in: `{"tls_cert_file": "c", "tls_key_file": "k", "parameters": {"x": 1}}`,
			wantErr: "decoding config"},
		{name: "trailing object", in: minimal + `{}`, wantErr: "trailing data"},
		{name: "trailing garbage", in: minimal + ` x`, wantErr: "trailing data"},
		{name: "trailing brace", in: minimal + `}`, wantErr: "trailing data"},
		{name: "trailing bracket", in: minimal + "\n]", wantErr: "trailing data"},
		{name: "trailing number", in: minimal + ` 1`, wantErr: "trailing data"},
		{name: "truncated", in: minimal[:len(minimal)-1], wantErr: "decoding config"},
		{name: "empty", in: "", wantErr: "decoding config"},
		{name: "array", in: `[]`, wantErr: "decoding config"},
		{name: "null", in: `null`, wantErr: "tls_cert_file and tls_key_file are required"},
		{name: "missing key file", in: `{"tls_cert_file": "c"}`, wantErr: "tls_cert_file and tls_key_file are required"},
		{name: "version 2", in: `{"version": 2, "tls_cert_file": "c", "tls_key_file": "k"}`,
			wantErr: "config version 2 is not supported"},
		{name: "negative version", in: `{"version": -1, "tls_cert_file": "c", "tls_key_file": "k"}`,
			wantErr: "not supported"},
		{name: "port as string", in: `{"pg_port": "5432", "tls_cert_file": "c", "tls_key_file": "k"}`,
			wantErr: "decoding config"},
		{name: "bad parameter value", in: `{"tls_cert_file": "c", "tls_key_file": "k", "parameters": {"require_secure_transport": "maybe"}}`,
			wantErr: "config: invalid value"},
		{name: "unknown parameter", in: `{"tls_cert_file": "c", "tls_key_file": "k", "parameters": {"work_mem": "1MB"}}`,
			wantErr: "unrecognized parameter"},
		{name: "inconsistent TLS bounds", in: `{"tls_cert_file": "c", "tls_key_file": "k", "parameters": {"ssl_min_protocol_version": "TLSv1.3", "ssl_max_protocol_version": "TLSv1.2"}}`,
			wantErr: "lower than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Decode([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Decode(%q) error = %v; want one containing %q", tt.in, err, tt.wantErr)
				}
				if c != nil {
					t.Errorf("Decode(%q) = %+v with an error; want nil", tt.in, c)
				}
				return
			}
			if err != nil {
				t.Fatalf("Decode(%q) error = %v; want nil", tt.in, err)
			}
			if tt.want != nil && !reflect.DeepEqual(c, tt.want) {
				t.Errorf("Decode(%q) = %+v; want %+v", tt.in, c, tt.want)
			}
		})
	}
}

func TestIsReserved(t *testing.T) {
	c := &Config{ServiceRole: "svc"}
	tests := []struct {
		name string
		role string
		want bool
	}{
		{name: "superuser", role: "postgres", want: true},
		{name: "service role", role: "svc", want: true},
		{name: "default service role not configured", role: "pgshield_service", want: false},
		{name: "admin", role: "pgadmin", want: false},
		{name: "case matters as in PostgreSQL", role: "Postgres", want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := c.IsReserved(tt.role); got != tt.want {
				t.Errorf("IsReserved(%q) = %v; want %v", tt.role, got, tt.want)
			}
		})
	}
}

func fileMode(t *testing.T, name string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(name)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode()
}

func TestSaveLoadRoundTrip(t *testing.T) {
	l := Layout{Root: t.TempDir()}
	c, err := Decode([]byte(`{"listen": "0.0.0.0:5433", "tls_cert_file": "/c", "tls_key_file": "/k",
		"parameters": {"ssl_min_protocol_version": "TLSv1.3", "require_secure_transport": "off"}}`))
	if err != nil {
		t.Fatal(err)
	}
	// A config left 0644 by hand must come back 0600 after Save.
	if err := os.WriteFile(l.ConfigFile(), []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Save(l, c); err != nil {
		t.Fatalf("Save() error = %v", err)
	}
	if m := fileMode(t, l.ConfigFile()); m != 0o600 {
		t.Errorf("Save() left %s with mode %v; want 0600", l.ConfigFile(), m)
	}
	raw, err := os.ReadFile(l.ConfigFile())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(string(raw), "}\n") || !strings.Contains(string(raw), "\n  \"listen\"") {
		t.Errorf("Save() wrote %q; want indented JSON ending in a newline", raw)
	}
	got, err := Load(l)
	if err != nil {
		t.Fatalf("Load() error = %v", err)
	}
	if !reflect.DeepEqual(got, c) {
		t.Errorf("Load() = %+v; want the saved %+v", got, c)
	}
	entries, err := os.ReadDir(l.Root)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "pgshield.json" {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("data directory holds %v after Save; want only pgshield.json", names)
	}
}

func TestLoad(t *testing.T) {
	t.Run("not initialized", func(t *testing.T) {
		l := Layout{Root: filepath.Join(t.TempDir(), "nothing-here")}
		_, err := Load(l)
		if !errors.Is(err, ErrNotInitialized) || !strings.Contains(err.Error(), l.Root) {
			t.Errorf("Load(%s) error = %v; want ErrNotInitialized naming the directory", l.Root, err)
		}
	})
	t.Run("unreadable is not 'not initialized'", func(t *testing.T) {
		l := Layout{Root: t.TempDir()}
		if err := os.Mkdir(l.ConfigFile(), 0o700); err != nil { // a directory cannot be read as a file
			t.Fatal(err)
		}
		_, err := Load(l)
		if err == nil || errors.Is(err, ErrNotInitialized) {
			t.Errorf("Load() error = %v; want a read error", err)
		}
	})
	t.Run("strict", func(t *testing.T) {
		l := Layout{Root: t.TempDir()}
		if err := os.WriteFile(l.ConfigFile(), []byte(minimal+"}"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(l); err == nil || !strings.Contains(err.Error(), "trailing data") {
			t.Errorf("Load() error = %v; want trailing data", err)
		}
	})
}

func TestWriteFileAtomic(t *testing.T) {
	tests := []struct {
		name     string
		existing []byte // nil: no file before
		data     []byte
		perm     os.FileMode
	}{
		{name: "new file 0600", data: []byte("secret\n"), perm: 0o600},
		{name: "new file 0644", data: []byte("public"), perm: 0o644},
		{name: "replace longer file", existing: []byte(strings.Repeat("old ", 100)), data: []byte("new"), perm: 0o600},
		{name: "empty data", existing: []byte("x"), data: nil, perm: 0o640},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			name := filepath.Join(dir, "f.json")
			if tt.existing != nil {
				if err := os.WriteFile(name, tt.existing, 0o666); err != nil {
					t.Fatal(err)
				}
			}
			if err := WriteFileAtomic(name, tt.data, tt.perm); err != nil {
				t.Fatalf("WriteFileAtomic(%s) error = %v", name, err)
			}
			got, err := os.ReadFile(name)
			if err != nil || string(got) != string(tt.data) {
				t.Errorf("after WriteFileAtomic the file holds %q, %v; want %q", got, err, tt.data)
			}
			if m := fileMode(t, name); m != tt.perm {
				t.Errorf("WriteFileAtomic(%s, %v) mode = %v; want %v", name, tt.perm, m, tt.perm)
			}
			entries, _ := os.ReadDir(dir)
			if len(entries) != 1 {
				t.Errorf("directory holds %d entries; want only the file (no temporary left)", len(entries))
			}
		})
	}
	t.Run("missing directory", func(t *testing.T) {
		name := filepath.Join(t.TempDir(), "no", "such", "f.json")
		if err := WriteFileAtomic(name, []byte("x"), 0o600); err == nil {
			t.Errorf("WriteFileAtomic(%s) error = nil; want an error", name)
		}
	})
	t.Run("target is a directory", func(t *testing.T) {
		dir := t.TempDir()
		name := filepath.Join(dir, "d")
		if err := os.Mkdir(name, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(name, "keep"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := WriteFileAtomic(name, []byte("x"), 0o600); err == nil {
			t.Errorf("WriteFileAtomic over a non-empty directory error = nil; want an error")
		}
		entries, _ := os.ReadDir(dir)
		if len(entries) != 1 {
			t.Errorf("a failed WriteFileAtomic left %d entries; want the temporary removed", len(entries))
		}
	})
}

func TestLayout(t *testing.T) {
	l := Layout{Root: "/srv/pg"}
	tests := []struct {
		name string
		got  string
		want string
	}{
		{name: "config", got: l.ConfigFile(), want: "/srv/pg/pgshield.json"},
		{name: "pgdata under the encrypted dir", got: l.PGData(), want: "/srv/pg/volume/data/pgdata"},
		{name: "pg log under the encrypted dir", got: l.PGLogDir(), want: "/srv/pg/volume/data/log"},
		{name: "socket dir", got: l.SocketDir(), want: "/srv/pg/run/pg"},
		{name: "api socket", got: l.APISocket(), want: "/srv/pg/run/api.sock"},
		{name: "pid file", got: l.PIDFile(), want: "/srv/pg/run/pgshield.pid"},
		{name: "daemon log", got: l.DaemonLog(), want: "/srv/pg/log/pgshield.log"},
		{name: "CA cert", got: l.CACert(), want: "/srv/pg/tls/ca.crt"},
		{name: "CA key", got: l.CAKey(), want: "/srv/pg/tls/ca.key"},
		{name: "server cert", got: l.ServerCert(), want: "/srv/pg/tls/server.crt"},
		{name: "server key", got: l.ServerKey(), want: "/srv/pg/tls/server.key"},
		{name: "mock auth key", got: l.MockAuthKey(), want: "/srv/pg/secrets/mock-auth.key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("Layout{%q}.%s = %q; want %q", l.Root, tt.name, tt.got, tt.want)
			}
		})
	}
}

func TestDataDirFromEnv(t *testing.T) {
	tests := []struct {
		name string
		flag string
		env  string
		want string
	}{
		{name: "flag wins", flag: "/flag", env: "/env", want: "/flag"},
		{name: "environment", env: "/env", want: "/env"},
		{name: "default", want: DefaultDataDir},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("PGSHIELD_DATA_DIR", tt.env)
			if got := DataDirFromEnv(tt.flag); got != tt.want {
				t.Errorf("DataDirFromEnv(%q) with PGSHIELD_DATA_DIR=%q = %q; want %q", tt.flag, tt.env, got, tt.want)
			}
		})
	}
}
