package provision

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/pgshield/pgshield/internal/auth/scram"
	"github.com/pgshield/pgshield/internal/backup"
	"github.com/pgshield/pgshield/internal/cluster/link"
	"github.com/pgshield/pgshield/internal/cluster/node"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/ctl/network"
	"github.com/pgshield/pgshield/internal/netpolicy"
	"github.com/pgshield/pgshield/internal/postgres"
	"github.com/pgshield/pgshield/internal/tlsconf"
)

// DefaultStorageSize is the size of a new fscrypt volume image (sparse).
const DefaultStorageSize int64 = 20 << 30

// InitOptions are what `pgshield init` is given.
type InitOptions struct {
	// Layout is the new server's data directory.
	Layout    config.Layout
	AdminUser string
	// AdminPasswordFile holds the administrator's password; when empty, one
	// is generated and returned in Result.AdminPassword.
	AdminPasswordFile string
	// Listen is the gateway's address, ADDR:PORT.
	Listen string
	// TLSCert and TLSKey are the user's certificate chain and key; when
	// empty, a private CA and a server certificate are made.
	TLSCert, TLSKey string
	PGBinDir        string
	// Network is "public" or "private".
	Network string
	// KeyURI is a customer-managed key-encryption key; empty means a
	// system-managed one, made for this server.
	KeyURI     string
	BackupPath string
	// Storage is the encryption backend; StoragePath a directory on an
	// ext4 filesystem used instead of an image (fscrypt).
	Storage, StoragePath string
	// StorageSize is the image's size; 0 means DefaultStorageSize (and
	// that no size was asked for).
	StorageSize int64
	// HA, when set, makes a high-availability node (issue #18): its
	// cluster section, and HAFiles the directory holding the files of
	// node.Files (certificates, keys, the cluster's secrets). With
	// HA.Join the node is left empty for Patroni to clone the primary
	// into: no PostgreSQL cluster or administrator is made here.
	HA      *config.Cluster
	HAFiles string
	// Report, when set, receives progress (step starts).
	Report func(Event)
}

// Result describes the new server.
type Result struct {
	DataDir   string
	ServerID  string
	Listen    string
	AdminUser string
	// AdminPassword is the administrator's password when Init generated
	// it, to be shown once and never stored or logged; empty otherwise.
	AdminPassword string
	// KeyURI is the key-encryption key, not redacted.
	KeyURI string
	// Restore is what Restore restored; nil for Init.
	Restore *backup.Plan
}

// Init checks the options, then creates a new server in o.Layout: TLS
// material, keys and encrypted volume, the PostgreSQL cluster with its
// administrator, network rules and configuration. A failed Init leaves
// nothing behind, so it can simply be run again.
func Init(ctx context.Context, o InitOptions) (Result, error) {
	if (o.TLSCert == "") != (o.TLSKey == "") {
		return Result{}, &OptionError{errors.New("--tls-cert and --tls-key go together")}
	}
	if o.TLSKey != "" {
		// The key file's checks up and SIGHUP make, before anything is created.
		if err := tlsconf.CheckKeyFile(abs(o.TLSKey)); err != nil {
			return Result{}, &OptionError{err}
		}
	}
	host, err := checkListen(o.Listen)
	if err != nil {
		return Result{}, err
	}
	mode, err := netpolicy.ParseMode(o.Network)
	if err != nil {
		return Result{}, optionErrorf("invalid --network: %v", err)
	}
	policy, err := network.InitialPolicy(mode, o.Listen)
	if err != nil {
		return Result{}, &OptionError{err}
	}
	l := o.Layout
	backupPath, err := checkBackupPath(l, o.BackupPath)
	if err != nil {
		return Result{}, err
	}
	storagePath, err := checkStorage(l, o.Storage, o.StoragePath, o.StorageSize != 0)
	if err != nil {
		return Result{}, err
	}
	cfg := &config.Config{Listen: o.Listen, AdminUser: o.AdminUser, PGBinDir: o.PGBinDir,
		TLSCertFile: l.ServerCert(), TLSKeyFile: l.ServerKey(), CAFile: l.CACert(), BackupPath: backupPath}
	if o.TLSCert != "" {
		cfg.TLSCertFile, cfg.TLSKeyFile, cfg.CAFile = abs(o.TLSCert), abs(o.TLSKey), ""
	}
	var haSecrets node.Secrets
	var haSecretsBundle []byte // fetched from a peer (join); nil: secrets.json
	if o.HA != nil {
		cfg.Cluster = o.HA
		if o.HAFiles == "" {
			return Result{}, optionErrorf("--ha needs --ha-files: the directory of %s", strings.Join(node.Files, ", "))
		}
		for _, f := range node.Files {
			if _, err := os.Stat(filepath.Join(o.HAFiles, f)); err != nil && (f != node.FileSecrets || !o.HA.Join) {
				return Result{}, &OptionError{fmt.Errorf("--ha-files: %w", err)}
			}
		}
		secretsFile := filepath.Join(o.HAFiles, node.FileSecrets)
		if _, err := os.Stat(secretsFile); err == nil || !o.HA.Join {
			if haSecrets, err = node.ReadSecrets(secretsFile); err != nil {
				return Result{}, &OptionError{err}
			}
		} else if haSecretsBundle, err = fetchSecrets(ctx, o.HA, o.HAFiles); err != nil {
			// A joining node without secrets.json asks a peer for them.
			return Result{}, err
		}
		if _, err := os.Stat("/usr/bin/patroni"); err != nil {
			return Result{}, errors.New("Patroni is not installed (/usr/bin/patroni): apt-get install -y patroni")
		}
	}
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return Result{}, err
	}
	if err := postgres.CheckAdminName(cfg, o.AdminUser); err != nil {
		return Result{}, &OptionError{err}
	}
	if _, err := os.Stat(filepath.Join(cfg.PGBinDir, "postgres")); err != nil {
		return Result{}, fmt.Errorf("PostgreSQL 15 is not installed (%s): apt-get install -y postgresql-15", cfg.PGBinDir)
	}
	if _, err := os.Stat(l.ConfigFile()); err == nil {
		return Result{}, fmt.Errorf("a pgshield server already exists in %s", l.Root)
	}
	password, generated := "", false
	if o.AdminPasswordFile != "" {
		if password, err = readSecretFile(o.AdminPasswordFile); err != nil {
			return Result{}, err
		}
		if len(password) < 8 || len(password) > 128 {
			return Result{}, &OptionError{errors.New("the administrator password must be 8 to 128 characters")}
		}
	} else {
		b := make([]byte, 18)
		if _, err := rand.Read(b); err != nil {
			return Result{}, err
		}
		password, generated = base64.RawURLEncoding.EncodeToString(b), true
	}
	u, err := postgres.LookupOSUser(cfg.PGOSUser)
	if err != nil {
		return Result{}, err
	}
	cfg.KeyURI, cfg.StorageSize = o.KeyURI, o.StorageSize
	if cfg.StorageSize == 0 {
		cfg.StorageSize = DefaultStorageSize
	}
	cfg.Storage, cfg.StoragePath = o.Storage, storagePath
	if o.Storage != config.StorageFscrypt || storagePath != "" {
		cfg.StorageSize = 0 // no image
	}

	root, err := filepath.Abs(l.Root)
	if err != nil {
		return Result{}, err
	}
	if perr := realHost.check(hostCheck{Root: root, StoragePath: storagePath, BackupPath: backupPath,
		Storage: o.Storage, ImageSize: cfg.StorageSize, SizeAsked: o.StorageSize != 0,
		Listen: o.Listen, PGBinDir: cfg.PGBinDir, User: u}); perr != nil {
		return Result{}, perr.asClientError()
	}

	s := newServer(l, cfg, u, "the encrypted volume")
	steps := []Step{
		s.idStep(),
		// The directory was checked to be new or empty: all it holds after
		// a failure is this run's.
		s.layoutStep(host, o.TLSCert == "", true),
		s.volumeStep(),
		s.clusterDirsStep(),
	}
	if o.HA != nil {
		steps = append(steps, Step{Name: "cluster files", Do: func(context.Context) error { return copyClusterFiles(o.HAFiles, l.ClusterDir(), haSecretsBundle) }})
	}
	if o.HA == nil || !o.HA.Join {
		steps = append(steps, Step{Name: "PostgreSQL cluster", Say: "Creating the PostgreSQL cluster...", Do: s.cluster.InitDB},
			Step{Name: "administrator", Do: func(ctx context.Context) error {
				// The password reaches PostgreSQL only as a SCRAM verifier.
				salt := make([]byte, 16)
				if _, err := rand.Read(salt); err != nil {
					return err
				}
				verifier, err := scram.Verifier(cfg.AdminUser, password, salt, scram.DefaultIterations)
				if err != nil {
					return err
				}
				var extra []string
				if o.HA != nil {
					if extra, err = node.RoleStatements(haSecrets); err != nil {
						return err
					}
				}
				return postgres.Bootstrap(ctx, s.cluster, verifier, extra...)
			}})
	}
	steps = append(steps,
		s.networkStep(func() (*netpolicy.Policy, error) { return policy, nil }),
		s.configStep(),
		s.closeStep())
	plan := &Plan{Report: o.Report, Steps: steps}
	if testFault != nil {
		plan.Steps = withFault(plan.Steps, s)
	}
	if err := plan.Run(ctx); err != nil {
		return Result{}, err
	}
	res := Result{DataDir: l.Root, ServerID: cfg.ServerID, Listen: cfg.Listen, AdminUser: cfg.AdminUser, KeyURI: cfg.KeyURI}
	if generated {
		res.AdminPassword = password
	}
	return res, nil
}

// copyClusterFiles copies node.Files from src into dst (made 0700), each
// 0600: certificates, keys and the cluster's secrets, root's only.
func copyClusterFiles(src, dst string, secrets []byte) error {
	if err := os.MkdirAll(dst, 0o700); err != nil {
		return err
	}
	if err := os.Chmod(dst, 0o700); err != nil {
		return err
	}
	for _, f := range node.Files {
		if f == node.FileSecrets && secrets != nil {
			if err := config.WriteFileAtomic(filepath.Join(dst, f), secrets, 0o600); err != nil {
				return err
			}
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			return err
		}
		if err := config.WriteFileAtomic(filepath.Join(dst, f), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// fetchSecrets asks the joining node's peers, in turn, for the cluster's
// secrets over the link (mutual TLS with the node's certificate from
// dir): they need not be copied to a joining node by hand.
func fetchSecrets(ctx context.Context, cl *config.Cluster, dir string) ([]byte, error) {
	id, err := link.LoadIdentity(cl.Node, filepath.Join(dir, node.FileCA), filepath.Join(dir, node.FileNodeCert), filepath.Join(dir, node.FileNodeKey))
	if err != nil {
		return nil, &OptionError{fmt.Errorf("--ha-files: %w", err)}
	}
	var errs []error
	for _, p := range cl.Peers {
		b, err := link.FetchSecrets(ctx, id, p.Name, p.Addr)
		if err == nil {
			var s node.Secrets
			if s, err = node.ParseSecrets(b); err == nil {
				// What was checked, not the peer's bytes.
				return json.Marshal(s)
			}
			err = fmt.Errorf("node %s: %w", p.Name, err)
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("no %s in --ha-files, and no peer gave the cluster's secrets (run `pgshield cluster allow-join %s` on a node already up): %w",
		node.FileSecrets, cl.Node, errors.Join(errs...))
}
