package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// ErrNotInitialized means the data directory holds no pgshield server yet.
var ErrNotInitialized = errors.New("no pgshield server in this data directory (run 'pgshield init')")

// Config is what `init` decides and later commands read. Parameters holds
// only values set explicitly; defaults come from the parameter table.
type Config struct {
	Version     int               `json:"version"`
	Listen      string            `json:"listen"`
	AdminUser   string            `json:"admin_user"`
	ServiceRole string            `json:"service_role"`
	PGBinDir    string            `json:"pg_bin_dir"`
	PGPort      int               `json:"pg_port"`
	PGOSUser    string            `json:"pg_os_user"`
	TLSCertFile string            `json:"tls_cert_file"`
	TLSKeyFile  string            `json:"tls_key_file"`
	CAFile      string            `json:"ca_file,omitempty"`
	Parameters  map[string]string `json:"parameters,omitempty"`
	// ServerID names this server's system-managed key-encryption key.
	ServerID string `json:"server_id,omitempty"`
	// KeyURI is the key-encryption key wrapping the volume's data key.
	KeyURI string `json:"key_uri,omitempty"`
	// StorageSize is the volume's size in bytes.
	StorageSize int64 `json:"storage_size,omitempty"`
	// Storage is the encryption backend: "fscrypt" (empty means it) or
	// "gocryptfs".
	Storage string `json:"storage,omitempty"`
	// StoragePath, for fscrypt, is a directory on an existing ext4
	// filesystem with the encrypt feature that holds the volume instead of
	// an image pgshield makes.
	StoragePath string `json:"storage_path,omitempty"`
	// BackupPath is the pgBackRest repository; empty means
	// Layout.DefaultBackupRepo. See BackupRepo.
	BackupPath string `json:"backup_path,omitempty"`
	// AdminPrincipals are token principals made with --admin: like
	// AdminUser, roles they create may not take them over.
	AdminPrincipals []string `json:"admin_principals,omitempty"`
	// Cluster is set on a high-availability node (config/cluster.go).
	Cluster *Cluster `json:"cluster,omitempty"`
}

// BackupRepo is where this server's backups go: BackupPath, or
// <data-dir>/backups by default.
func (c *Config) BackupRepo(l Layout) string {
	if c.BackupPath != "" {
		return c.BackupPath
	}
	return l.DefaultBackupRepo()
}

// Storage backends (Config.Storage).
const (
	StorageFscrypt   = "fscrypt"
	StorageGocryptfs = "gocryptfs"
)

// StorageBackend is Storage with the default filled in.
func (c *Config) StorageBackend() string {
	if c.Storage == "" {
		return StorageFscrypt
	}
	return c.Storage
}

// Reserved PostgreSQL roles that never log in through the gateway.
const (
	SuperuserRole      = "postgres"
	DefaultServiceRole = "pgshield_service"
	DefaultAdminUser   = "pgadmin"
	// LookupRole is the least-privileged role the gateway's login lookups
	// run as: it may only call pgshield.login_role (a SECURITY DEFINER
	// function owned by a superuser, with a pinned search_path), so a
	// statement someone redirects later still cannot act as a superuser.
	LookupRole = "pgshield_auth"
	// ReplicationRole and RewindRole are a cluster node's (Patroni's):
	// they log in only over the node link, never through the gateway.
	ReplicationRole = "pgshield_replication"
	RewindRole      = "pgshield_rewind"
)

// CheckAndSetDefaults validates the config and fills in defaults.
func (c *Config) CheckAndSetDefaults() error {
	if c.Version == 0 {
		c.Version = 1
	}
	if c.Version != 1 {
		return fmt.Errorf("config version %d is not supported", c.Version)
	}
	if c.Listen == "" {
		c.Listen = "127.0.0.1:5432"
	}
	if c.AdminUser == "" {
		c.AdminUser = DefaultAdminUser
	}
	if c.ServiceRole == "" {
		c.ServiceRole = DefaultServiceRole
	}
	if c.PGBinDir == "" {
		c.PGBinDir = "/usr/lib/postgresql/15/bin"
	}
	if c.PGPort == 0 {
		c.PGPort = 5432
	}
	if c.PGOSUser == "" {
		c.PGOSUser = "postgres"
	}
	if c.TLSCertFile == "" || c.TLSKeyFile == "" {
		return errors.New("config: tls_cert_file and tls_key_file are required")
	}
	if c.Parameters == nil {
		c.Parameters = map[string]string{}
	}
	switch c.Storage {
	case "", StorageFscrypt:
	case StorageGocryptfs:
		if c.StoragePath != "" {
			return errors.New("config: storage_path is for the fscrypt backend only")
		}
	default:
		return fmt.Errorf("config: storage %q is not fscrypt or gocryptfs", c.Storage)
	}
	if c.StoragePath != "" && !filepath.IsAbs(c.StoragePath) {
		return errors.New("config: storage_path must be absolute")
	}
	if _, err := ResolveParams(c.Parameters); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if c.Cluster != nil {
		return c.Cluster.Check()
	}
	return nil
}

// IsReserved reports whether role may never log in through the gateway.
func (c *Config) IsReserved(role string) bool {
	return role == SuperuserRole || role == c.ServiceRole || role == LookupRole ||
		role == ReplicationRole || role == RewindRole
}

// ReservedRoles lists the roles only superusers may alter, grant or become.
func (c *Config) ReservedRoles() []string {
	r := []string{SuperuserRole, c.ServiceRole, LookupRole}
	if c.Cluster != nil {
		// REPLICATION reads every byte of the cluster; the rewind role
		// runs pg_read_binary_file. Neither is the administrator's.
		r = append(r, ReplicationRole, RewindRole)
	}
	return r
}

// Load reads and strictly decodes the config of a data directory.
func Load(l Layout) (*Config, error) {
	b, err := os.ReadFile(l.ConfigFile())
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNotInitialized, l.Root)
	}
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	return Decode(b)
}

// Decode parses a config; unknown fields are an error.
func Decode(b []byte) (*Config, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("decoding config: %w", err)
	}
	// dec.More() would miss a stray '}' or ']' after the object.
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("decoding config: trailing data")
	}
	if err := c.CheckAndSetDefaults(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Save writes the config atomically with mode 0600.
func Save(l Layout, c *Config) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	return WriteFileAtomic(l.ConfigFile(), append(b, '\n'), 0o600)
}

// WriteKeyPair writes a private key and its certificate, each atomically
// and 0600, making their directories 0700 (and narrowing them to 0700 if
// they exist).
func WriteKeyPair(certPath, keyPath string, certPEM, keyPEM []byte) error {
	for _, d := range []string{filepath.Dir(certPath), filepath.Dir(keyPath)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
		if err := os.Chmod(d, 0o700); err != nil {
			return err
		}
	}
	if err := WriteFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return err
	}
	return WriteFileAtomic(certPath, certPEM, 0o600)
}

// WriteFileAtomic writes to a temp file in the same directory, syncs it and
// renames it over name, so readers see the old or the new file, never a part.
func WriteFileAtomic(name string, data []byte, perm os.FileMode) error {
	return WriteFileAtomicOwned(name, data, perm, -1, -1)
}

// WriteFileAtomicOwned is WriteFileAtomic giving the file to uid:gid
// (unless uid < 0) through its descriptor, before it has its name: in a
// directory another user owns, a chown by path could be sent elsewhere
// by a symlink put in its place.
func WriteFileAtomicOwned(name string, data []byte, perm os.FileMode, uid, gid int) error {
	dir := filepath.Dir(name)
	f, err := os.CreateTemp(dir, "."+filepath.Base(name)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if uid >= 0 {
		if err := f.Chown(uid, gid); err != nil {
			f.Close()
			return err
		}
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, name)
}
