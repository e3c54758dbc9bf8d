package cli

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgshield/pgshield/internal/auth/scram"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/daemon"
	"github.com/pgshield/pgshield/internal/netpolicy"
	"github.com/pgshield/pgshield/internal/postgres"
	"github.com/pgshield/pgshield/internal/tlsconf"
)

func newInit(g *globals) *cobra.Command {
	var adminUser, pwFile, listen, tlsCert, tlsKey, pgBinDir, network, keyURI, backupPath string
	var storageBackend, storagePath string
	storageSize := byteSize{bytes: 20 << 30}
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create a new server: PostgreSQL cluster, administrator, certificates",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) (retErr error) {
			if err := requireRoot(); err != nil {
				return err
			}
			if (tlsCert == "") != (tlsKey == "") {
				return usageError{errors.New("--tls-cert and --tls-key go together")}
			}
			host, err := checkListen(listen)
			if err != nil {
				return err
			}
			mode, err := netpolicy.ParseMode(network)
			if err != nil {
				return usageError{fmt.Errorf("invalid --network: %v", err)}
			}
			policy, err := daemon.InitialPolicy(mode, listen)
			if err != nil {
				return usageError{err}
			}
			l := g.layout()
			if backupPath, err = checkBackupPath(l, backupPath); err != nil {
				return err
			}
			if storagePath, err = checkStorageFlags(cmd, l, storageBackend, storagePath); err != nil {
				return err
			}
			cfg := &config.Config{Listen: listen, AdminUser: adminUser, PGBinDir: pgBinDir,
				TLSCertFile: l.ServerCert(), TLSKeyFile: l.ServerKey(), CAFile: l.CACert(), BackupPath: backupPath}
			if tlsCert != "" {
				cfg.TLSCertFile, cfg.TLSKeyFile, cfg.CAFile = abs(tlsCert), abs(tlsKey), ""
			}
			if err := cfg.CheckAndSetDefaults(); err != nil {
				return err
			}
			if err := postgres.CheckAdminName(cfg, adminUser); err != nil {
				return usageError{err}
			}
			if _, err := os.Stat(filepath.Join(cfg.PGBinDir, "postgres")); err != nil {
				return fmt.Errorf("PostgreSQL 15 is not installed (%s): apt-get install -y postgresql-15", cfg.PGBinDir)
			}
			if _, err := os.Stat(l.ConfigFile()); err == nil {
				return fmt.Errorf("a pgshield server already exists in %s", l.Root)
			}
			password, generated := "", false
			if pwFile != "" {
				if password, err = readSecretFile(pwFile); err != nil {
					return err
				}
				if len(password) < 8 || len(password) > 128 {
					return usageError{errors.New("the administrator password must be 8 to 128 characters")}
				}
			} else {
				b := make([]byte, 18)
				if _, err := rand.Read(b); err != nil {
					return err
				}
				password, generated = base64.RawURLEncoding.EncodeToString(b), true
			}
			u, err := postgres.LookupOSUser(cfg.PGOSUser)
			if err != nil {
				return err
			}
			if _, err := os.Stat(l.Root); errors.Is(err, os.ErrNotExist) {
				// A failed init leaves nothing behind, so it can simply be rerun.
				defer func() {
					if retErr != nil {
						os.RemoveAll(l.Root)
					}
				}()
			}
			if err := createLayout(l, cfg, host, tlsCert == ""); err != nil {
				return err
			}
			idb := make([]byte, 8)
			if _, err := rand.Read(idb); err != nil {
				return err
			}
			cfg.ServerID, cfg.KeyURI, cfg.StorageSize = hex.EncodeToString(idb), keyURI, storageSize.bytes
			cfg.Storage, cfg.StoragePath = storageBackend, storagePath
			if storageBackend != config.StorageFscrypt || storagePath != "" {
				cfg.StorageSize = 0 // no image
			}
			fmt.Fprintln(cmd.OutOrStdout(), "Creating the encrypted volume...")
			atRest := &daemon.AtRest{Layout: l, Cfg: cfg}
			systemKey := keyURI == ""
			// Runs before the data directory is removed on failure (defers
			// are last in, first out): unmount first, then delete.
			defer func() {
				if err := atRest.Close(context.Background()); err != nil && retErr == nil {
					retErr = fmt.Errorf("closing the encrypted volume: %w", err)
				}
				if retErr != nil && systemKey {
					os.Remove(daemon.SystemKEKPath(cfg.ServerID))
				}
				if retErr != nil && storagePath != "" {
					removeStoragePathData(storagePath)
				}
			}()
			if err := atRest.Create(cmd.Context()); err != nil {
				return err
			}
			cluster := &postgres.Cluster{Layout: l, Cfg: cfg, User: u, Guard: atRest.Guard}
			if err := cluster.PrepareDirs(); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "Creating the PostgreSQL cluster...")
			if err := cluster.InitDB(cmd.Context()); err != nil {
				return err
			}
			salt := make([]byte, 16)
			if _, err := rand.Read(salt); err != nil {
				return err
			}
			verifier, err := scram.Verifier(cfg.AdminUser, password, salt, scram.DefaultIterations)
			if err != nil {
				return err
			}
			if err := postgres.Bootstrap(cmd.Context(), cluster, verifier); err != nil {
				return err
			}
			if err := daemon.SavePolicy(l, policy); err != nil {
				return err
			}
			if err := config.Save(l, cfg); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "Created a pgshield server in %s (administrator %q, gateway %s).\n", l.Root, cfg.AdminUser, cfg.Listen)
			if generated {
				// Shown once on the terminal, never logged or stored in clear.
				fmt.Fprintf(out, "Administrator password (shown only now): %s\n", password)
			}
			fmt.Fprintln(out, "Start it with: pgshield up"+dataDirFlag(g))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&adminUser, "admin-user", config.DefaultAdminUser, "name of the administrator role")
	f.StringVar(&pwFile, "admin-password-file", "", "file holding the administrator password (default: generate one and show it once)")
	f.StringVar(&listen, "listen", "127.0.0.1:5432", "gateway address ADDR:PORT")
	f.StringVar(&tlsCert, "tls-cert", "", "server certificate chain (PEM) to use instead of a private CA")
	f.StringVar(&tlsKey, "tls-key", "", "server private key (PEM) for --tls-cert")
	f.StringVar(&keyURI, "key-uri", "", "customer-managed key-encryption key (awskms://, azurekeyvault://, gcpkms://, hashivault://); default: system-managed")
	f.StringVar(&backupPath, "backup-path", "", "backup repository directory (default <data-dir>/backups; its contents are encrypted)")
	f.Var(&storageSize, "storage-size", "size of the encrypted volume (e.g. 20GiB; the image is sparse)")
	f.StringVar(&storageBackend, "storage", config.StorageFscrypt, "encryption at rest: fscrypt (kernel, ext4 volume) or gocryptfs (FUSE, for kernels without fscrypt)")
	f.StringVar(&storagePath, "storage-path", "", "with fscrypt: a directory on an existing ext4 filesystem with the encrypt feature, used instead of an image")
	f.StringVar(&network, "network", "public", "public (firewall rules) or private (private address, network security rules)")
	f.StringVar(&pgBinDir, "pg-bin-dir", "/usr/lib/postgresql/15/bin", "PostgreSQL 15 programs")
	return cmd
}

func abs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	return a
}

func dataDirFlag(g *globals) string {
	if g.dataDir != "" {
		return " --data-dir " + g.dataDir
	}
	return ""
}

// createLayout makes the data directory and, unless the user brought a
// certificate, a private CA and a server certificate for the listen host.
func createLayout(l config.Layout, cfg *config.Config, host string, makeCerts bool) error {
	if err := os.MkdirAll(l.Root, 0o700); err != nil {
		return err
	}
	for _, d := range []string{l.TLSDir(), l.SecretsDir(), filepath.Dir(l.DaemonLog())} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	if !makeCerts {
		if _, err := tlsconf.LoadCert(cfg.TLSCertFile, cfg.TLSKeyFile); err != nil {
			return err
		}
		return nil
	}
	if err := tlsconf.GenerateCA(l.CACert(), l.CAKey(), "pgshield CA "+time.Now().UTC().Format("2006-01-02")); err != nil {
		return fmt.Errorf("creating CA: %w", err)
	}
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	if host != "" && host != "0.0.0.0" && host != "::" {
		hosts = append([]string{host}, hosts...)
	} else if h, err := os.Hostname(); err == nil {
		hosts = append(hosts, h)
	}
	if err := tlsconf.GenerateServer(l.CACert(), l.CAKey(), l.ServerCert(), l.ServerKey(), hosts); err != nil {
		return fmt.Errorf("creating server certificate: %w", err)
	}
	return nil
}

// byteSize is a flag value like 20GiB, 512MiB or a plain number of bytes.
type byteSize struct{ bytes int64 }

func (b *byteSize) String() string { return fmt.Sprintf("%dMiB", b.bytes>>20) }
func (b *byteSize) Type() string   { return "size" }

func (b *byteSize) Set(s string) error {
	units := []struct {
		suffix string
		mult   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"B", 1}, {"", 1}}
	for _, u := range units {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			n, err := strconv.ParseInt(num, 10, 64)
			if err != nil || n <= 0 || n > (1<<50)/u.mult {
				return fmt.Errorf("invalid size %q: use a number with GiB, MiB or TiB", s)
			}
			b.bytes = n * u.mult
			return nil
		}
	}
	return fmt.Errorf("invalid size %q", s)
}

// checkListen validates a --listen address (an IP address or localhost, and
// a port) and returns its host.
func checkListen(listen string) (string, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", usageError{fmt.Errorf("invalid --listen %q: %v", listen, err)}
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return "", usageError{fmt.Errorf("invalid --listen %q: bad port", listen)}
	}
	if host != "" && host != "localhost" && net.ParseIP(host) == nil {
		return "", usageError{fmt.Errorf("invalid --listen %q: the host must be an IP address", listen)}
	}
	return host, nil
}
