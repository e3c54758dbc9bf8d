package provision

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/ctl/network"
	"github.com/pgshield/pgshield/internal/ctl/volume"
	"github.com/pgshield/pgshield/internal/netpolicy"
	"github.com/pgshield/pgshield/internal/postgres"
	"github.com/pgshield/pgshield/internal/storage"
	"github.com/pgshield/pgshield/internal/tlsconf"
)

// server is the new server both plans make; their steps fill it in.
type server struct {
	l       config.Layout
	cfg     *config.Config
	atRest  *volume.AtRest
	cluster *postgres.Cluster
	// volumeName is how messages name the volume ("the encrypted volume").
	volumeName string
}

func newServer(l config.Layout, cfg *config.Config, u postgres.OSUser, volumeName string) *server {
	s := &server{l: l, cfg: cfg, atRest: &volume.AtRest{Layout: l, Cfg: cfg}, volumeName: volumeName}
	s.cluster = &postgres.Cluster{Layout: l, Cfg: cfg, User: u, Guard: s.atRest.Guard}
	return s
}

// idStep gives the server a new random id, which names its system-managed
// key-encryption key.
func (s *server) idStep() Step {
	return Step{Name: "server id", Do: func(context.Context) error {
		b := make([]byte, 8)
		if _, err := rand.Read(b); err != nil {
			return err
		}
		s.cfg.ServerID = hex.EncodeToString(b)
		return nil
	}}
}

// layoutStep makes the data directory, and a private CA and server
// certificate unless the user brought one (makeCerts false). Undone, it
// removes the directory if the step made it, and the parents it made if
// they are empty. With ownsEntries (the
// directory was checked to be empty) it otherwise removes what is in it.
func (s *server) layoutStep(host string, makeCerts, ownsEntries bool) Step {
	// made are the directories this step made, the data directory and its
	// missing parents, innermost first.
	var made []string
	return Step{Name: "data directory",
		Do: func(context.Context) error {
			root, err := filepath.Abs(s.l.Root)
			if err != nil {
				return err
			}
			made = nil
			for d := root; ; d = filepath.Dir(d) {
				if _, err := os.Lstat(d); !errors.Is(err, fs.ErrNotExist) || d == filepath.Dir(d) {
					break
				}
				made = append(made, d)
			}
			if err := makeParents(root); err != nil {
				return err
			}
			return createLayout(s.l, s.cfg, host, makeCerts)
		},
		Undo: func(context.Context) error {
			if len(made) > 0 {
				// The data directory is this run's; its parents may since
				// hold what a concurrent run put there: each goes only
				// when empty.
				if err := os.RemoveAll(made[0]); err != nil {
					return err
				}
				for _, d := range made[1:] {
					if err := os.Remove(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
						break // not empty: it and its parents stay
					}
				}
				return nil
			}
			if !ownsEntries {
				return nil
			}
			entries, err := os.ReadDir(s.l.Root)
			if err != nil {
				return err
			}
			var errs []error
			for _, e := range entries {
				errs = append(errs, os.RemoveAll(filepath.Join(s.l.Root, e.Name())))
			}
			return errors.Join(errs...)
		}}
}

// makeParents makes the missing parents of dir searchable by all (0755,
// as mkdir -p with the usual umask): PostgreSQL runs as its own user and
// must reach the data directory through them.
func makeParents(dir string) error {
	parent := filepath.Dir(dir)
	if _, err := os.Stat(parent); err == nil {
		return nil
	}
	if err := makeParents(parent); err != nil {
		return err
	}
	if err := os.Mkdir(parent, 0o755); err != nil {
		return err
	}
	return os.Chmod(parent, 0o755) // whatever the umask
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

// volumeStep makes the keys and the encrypted volume: a new data key,
// wrapped by the customer-managed key in Cfg.KeyURI or, when that is
// empty, by a new system-managed key; the volume is left open. Undone, it
// closes the volume (before the data directory is removed) and removes
// the system-managed key and what the volume put on a --storage-path.
func (s *server) volumeStep() Step {
	systemKey := false
	// claimed: this run wrote the storage path's owner mark; madeVolume:
	// and found no volume there, so what is there after is its own.
	claimed, madeVolume := false, false
	return Step{Name: "encrypted volume", Say: "Creating " + s.volumeName + "...",
		Do: func(ctx context.Context) error {
			if p := s.cfg.StoragePath; p != "" {
				if err := claimStoragePath(p, s.cfg.ServerID); err != nil {
					return err
				}
				claimed = true
				if _, err := os.Lstat(filepath.Join(p, storage.DataDirName)); !errors.Is(err, fs.ErrNotExist) {
					return fmt.Errorf("the storage path %s already holds %s (another server's volume?); give an empty directory", p, storage.DataDirName)
				}
				madeVolume = true
			}
			systemKey = s.cfg.KeyURI == ""
			if systemKey {
				// Written first: a key file never lacks its owner.
				if err := writeOwner(s.cfg.ServerID, s.l.Root); err != nil {
					return err
				}
			}
			return s.atRest.Create(ctx)
		},
		Undo: func(ctx context.Context) error {
			var errs []error
			if s.cfg.StoragePath == "" || madeVolume {
				errs = append(errs, s.atRest.Close(ctx))
			}
			if systemKey {
				if err := os.Remove(volume.SystemKEKPath(s.cfg.ServerID)); err != nil && !errors.Is(err, fs.ErrNotExist) {
					errs = append(errs, err)
				}
				errs = append(errs, removeOwner(volume.SystemKeyDir, s.cfg.ServerID))
			}
			if p := s.cfg.StoragePath; p != "" && madeVolume {
				errs = append(errs, os.RemoveAll(filepath.Join(p, storage.DataDirName)))
			}
			if claimed {
				errs = append(errs, removeSynced(filepath.Join(s.cfg.StoragePath, storageOwnerName)))
			}
			return errors.Join(errs...)
		}}
}

// clusterDirsStep makes PostgreSQL's directories on the volume.
func (s *server) clusterDirsStep() Step {
	return Step{Name: "cluster directories", Do: func(context.Context) error { return s.cluster.PrepareDirs() }}
}

// networkStep saves the network rules that policy returns.
func (s *server) networkStep(policy func() (*netpolicy.Policy, error)) Step {
	return Step{Name: "network rules", Do: func(context.Context) error {
		p, err := policy()
		if err != nil {
			return err
		}
		return network.SavePolicy(s.l, p)
	}}
}

// configStep saves the configuration: from then on the data directory is
// a server.
func (s *server) configStep() Step {
	return Step{Name: "configuration", Do: func(context.Context) error { return config.Save(s.l, s.cfg) }}
}

// closeStep closes the volume at the end of a run: the server is left
// stopped, its volume locked until `up`. A failure here still fails the
// run (and removes the server), as a volume that does not close cleanly
// is no server to hand over.
func (s *server) closeStep() Step {
	return Step{Name: "closing the volume", Do: func(ctx context.Context) error {
		// Closing is not cut short by a cancellation that comes this late.
		if err := s.atRest.Close(context.WithoutCancel(ctx)); err != nil {
			return fmt.Errorf("closing %s: %w", s.volumeName, err)
		}
		return nil
	}}
}
