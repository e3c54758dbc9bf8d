package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/provision"
)

func newInit(g *globals) *cobra.Command {
	var o provision.InitOptions
	var haFile string
	storageSize := byteSize{bytes: provision.DefaultStorageSize}
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create a new server: PostgreSQL cluster, administrator, certificates",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireRoot(); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			o.Layout = g.layout()
			// Only a size asked for is passed on: it is refused with
			// gocryptfs or --storage-path, where the default is not.
			if cmd.Flags().Changed("storage-size") {
				o.StorageSize = storageSize.bytes
			}
			if haFile != "" {
				ha, err := readClusterFile(haFile)
				if err != nil {
					return usageError{err}
				}
				o.HA = ha
			}
			o.Report = func(e provision.Event) {
				if e.Kind == provision.StepStarted && e.Message != "" {
					fmt.Fprintln(out, e.Message)
				}
			}
			res, err := provision.Init(cmd.Context(), o)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "Created a pgshield server in %s (administrator %q, gateway %s).\n", res.DataDir, res.AdminUser, res.Listen)
			if res.AdminPassword != "" {
				// Shown once on the terminal, never logged or stored in clear.
				fmt.Fprintf(out, "Administrator password (shown only now): %s\n", res.AdminPassword)
			}
			fmt.Fprintln(out, "Start it with: pgshield up"+dataDirFlag(g))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.AdminUser, "admin-user", config.DefaultAdminUser, "name of the administrator role")
	f.StringVar(&o.AdminPasswordFile, "admin-password-file", "", "file holding the administrator password (default: generate one and show it once)")
	f.StringVar(&o.Listen, "listen", "127.0.0.1:5432", "gateway address ADDR:PORT")
	f.StringVar(&o.TLSCert, "tls-cert", "", "server certificate chain (PEM) to use instead of a private CA")
	f.StringVar(&o.TLSKey, "tls-key", "", "server private key (PEM) for --tls-cert")
	f.StringVar(&o.KeyURI, "key-uri", "", "customer-managed key-encryption key (awskms://, azurekeyvault://, gcpkms://, hashivault://); default: system-managed")
	f.StringVar(&o.BackupPath, "backup-path", "", "backup repository directory (default <data-dir>/backups; its contents are encrypted)")
	f.Var(&storageSize, "storage-size", "size of the encrypted volume (e.g. 20GiB; the image is sparse)")
	f.StringVar(&o.Storage, "storage", config.StorageFscrypt, "encryption at rest: fscrypt (kernel, ext4 volume) or gocryptfs (FUSE, for kernels without fscrypt)")
	f.StringVar(&o.StoragePath, "storage-path", "", "with fscrypt: a directory on an existing ext4 filesystem with the encrypt feature, used instead of an image")
	f.StringVar(&o.Network, "network", "public", "public (firewall rules) or private (private address, network security rules)")
	f.StringVar(&haFile, "ha", "", "make a high-availability node: this node's cluster section (JSON; see README \"High availability\")")
	f.StringVar(&o.HAFiles, "ha-files", "", "with --ha: directory of the node's certificates and the cluster's secrets")
	f.StringVar(&o.PGBinDir, "pg-bin-dir", "/usr/lib/postgresql/15/bin", "PostgreSQL 15 programs")
	return cmd
}

// readClusterFile strictly decodes a cluster section.
func readClusterFile(path string) (*config.Cluster, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--ha: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var c config.Cluster
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("--ha %s: %w", path, err)
	}
	if err := c.Check(); err != nil {
		return nil, fmt.Errorf("--ha %s: %w", path, err)
	}
	return &c, nil
}

func dataDirFlag(g *globals) string {
	if g.dataDir != "" {
		return " --data-dir " + g.dataDir
	}
	return ""
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
