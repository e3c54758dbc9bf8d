package config

import (
	"os"
	"path/filepath"
)

// DefaultDataDir is where all of a server's state lives unless --data-dir or
// PGSHIELD_DATA_DIR says otherwise.
const DefaultDataDir = "/var/lib/pgshield"

// Layout names every path under one data directory. Everything PostgreSQL
// writes sits below VolumeDir so that an encrypted volume can later be mounted
// there without moving anything else.
type Layout struct {
	Root string
}

// ConfigFile is pgshield's own persisted configuration (0600).
func (l Layout) ConfigFile() string { return filepath.Join(l.Root, "pgshield.json") }

// VolumeMount is where the encrypted volume is mounted.
func (l Layout) VolumeMount() string { return filepath.Join(l.Root, "volume") }

// VolumeDir holds all customer data (the cluster, its logs): the
// fscrypt-encrypted directory at the root of the mounted volume.
func (l Layout) VolumeDir() string { return filepath.Join(l.VolumeMount(), "data") }

// StorageDir holds the volume's backing image (0700).
func (l Layout) StorageDir() string { return filepath.Join(l.Root, "storage") }

// VolumeImage is the sparse ext4 image behind the volume.
func (l Layout) VolumeImage() string { return filepath.Join(l.StorageDir(), "volume.img") }

// GocryptfsDir is the gocryptfs backend's cipher directory (0711 in the
// 0700 StorageDir): the ciphertext of everything under VolumeMount.
func (l Layout) GocryptfsDir() string { return filepath.Join(l.StorageDir(), "gocryptfs") }

// WrappedDataKey is the volume's data key, wrapped by the key-encryption key (0600).
func (l Layout) WrappedDataKey() string { return filepath.Join(l.SecretsDir(), "volume-key.json") }

// PGData is the PostgreSQL data directory.
func (l Layout) PGData() string { return filepath.Join(l.VolumeDir(), "pgdata") }

// PGLogDir is where PostgreSQL's logging collector writes.
func (l Layout) PGLogDir() string { return filepath.Join(l.VolumeDir(), "log") }

// RunDir holds the runtime sockets and the pid file.
func (l Layout) RunDir() string { return filepath.Join(l.Root, "run") }

// SocketDir is PostgreSQL's private Unix socket directory (0700, owned by the
// postgres OS user): only root (the gateway) and postgres can reach it.
func (l Layout) SocketDir() string { return filepath.Join(l.RunDir(), "pg") }

// APISocket is the management API's root-only Unix socket.
func (l Layout) APISocket() string { return filepath.Join(l.RunDir(), "api.sock") }

// PIDFile records the daemon's pid while it runs.
func (l Layout) PIDFile() string { return filepath.Join(l.RunDir(), "pgshield.pid") }

// DaemonLog is the daemon's own log when it runs in the background.
func (l Layout) DaemonLog() string { return filepath.Join(l.Root, "log", "pgshield.log") }

// TLSDir holds the private CA and the server certificate.
func (l Layout) TLSDir() string { return filepath.Join(l.Root, "tls") }

// CACert is the private CA certificate clients use as sslrootcert.
func (l Layout) CACert() string { return filepath.Join(l.TLSDir(), "ca.crt") }

// CAKey is the private CA key (0600).
func (l Layout) CAKey() string { return filepath.Join(l.TLSDir(), "ca.key") }

// ServerCert is the gateway's certificate chain.
func (l Layout) ServerCert() string { return filepath.Join(l.TLSDir(), "server.crt") }

// ServerKey is the gateway's private key (0600).
func (l Layout) ServerKey() string { return filepath.Join(l.TLSDir(), "server.key") }

// DataDirFromEnv returns the data directory from a flag value, then
// PGSHIELD_DATA_DIR, then the default (flag, then environment, then default).
func DataDirFromEnv(flag string) string {
	if flag != "" {
		return flag
	}
	if v := os.Getenv("PGSHIELD_DATA_DIR"); v != "" {
		return v
	}
	return DefaultDataDir
}

// SecretsDir holds pgshield's own secrets (0700).
func (l Layout) SecretsDir() string { return filepath.Join(l.Root, "secrets") }

// MockAuthKey keys the fake SCRAM salts shown for unknown roles (0600).
func (l Layout) MockAuthKey() string { return filepath.Join(l.SecretsDir(), "mock-auth.key") }

// NetworkFile holds the network policy: mode, firewall and network rules (0600).
func (l Layout) NetworkFile() string { return filepath.Join(l.Root, "network.json") }

// AuditDir holds the tamper-evident audit log (0700), on the encrypted
// volume with everything else that may say something about the data.
func (l Layout) AuditDir() string { return filepath.Join(l.VolumeDir(), "audit") }

// LegacyAuditDir is where servers made before the audit log moved onto the
// volume kept it (the daemon moves it over), and where audit events that
// could not be written before the daemon stopped with the volume locked
// wait for the next start (0700, root).
func (l Layout) LegacyAuditDir() string { return filepath.Join(l.Root, "audit") }

// WrappedBackupKey is the backup repository's cipher passphrase, wrapped by
// the key-encryption key like the data key (0600).
func (l Layout) WrappedBackupKey() string { return filepath.Join(l.SecretsDir(), "backup-key.json") }

// DefaultBackupRepo is the pgBackRest repository unless init chose another:
// outside the volume, so that a lost volume leaves the backups (whose
// contents pgBackRest encrypts).
func (l Layout) DefaultBackupRepo() string { return filepath.Join(l.Root, "backups") }

// BackupWorkDir, on the encrypted volume and owned by the postgres OS user
// (0700), holds pgBackRest's configuration (it carries the repository
// passphrase), its lock files, logs and spool (WAL being fetched for a
// restore is plaintext there).
func (l Layout) BackupWorkDir() string { return filepath.Join(l.VolumeDir(), "backup") }

// BackupConfig is pgBackRest's configuration file (0600, postgres).
func (l Layout) BackupConfig() string { return filepath.Join(l.BackupWorkDir(), "pgbackrest.conf") }

// BackupRestoreConfig names the source repository of a point-in-time
// restore until the restored cluster has finished recovery (0600, postgres).
func (l Layout) BackupRestoreConfig() string { return filepath.Join(l.BackupWorkDir(), "restore.conf") }
