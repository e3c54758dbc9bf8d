package cli

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/keys"
)

// serviceCapabilities is the unit's capability bounding set: what the
// daemon, running as root, needs and nothing else (README "Running as a
// service" gives the reason for each; e2e/service_test.go runs the daemon
// with exactly these).
var serviceCapabilities = []string{
	"CAP_CHOWN",        // directories and files handed to the postgres user
	"CAP_DAC_OVERRIDE", // root reading and writing in postgres-owned 0700 directories (pgdata, the socket directory)
	"CAP_FOWNER",       // chmod of files the postgres user owns
	"CAP_KILL",         // signalling PostgreSQL (another uid): fast shutdown, reload, stale postmasters
	"CAP_SETUID",       // starting PostgreSQL and pgBackRest as postgres
	"CAP_SETGID",       // ... and with its group
	"CAP_NET_ADMIN",    // nftables (kernel firewall, outbound tproxy), the outbound veth and routes
	"CAP_SYS_ADMIN",    // loop devices, mount and umount, fscrypt key add and remove, FUSE, PostgreSQL's empty network namespace
}

// serviceUnitSpec is what the unit is written for.
type serviceUnitSpec struct {
	Binary  string
	DataDir string
	// ReadWrite are the paths the daemon writes outside the read-only
	// system: the data directory, the key-encryption keys, a storage
	// path and a backup repository outside the data directory.
	ReadWrite []string
}

// unitPathOK refuses what a unit file cannot carry as a plain word:
// specifiers (%), variables ($), quoting and whitespace.
func unitPathOK(p string) error {
	if !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return fmt.Errorf("%q is not a clean absolute path", p)
	}
	if strings.ContainsAny(p, "%$\\\"' \t\n\r;") {
		return fmt.Errorf("%q holds a character a systemd unit would interpret (%%, $, quotes, \\, ;, whitespace)", p)
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%q holds a control character", p)
		}
	}
	return nil
}

// under reports whether p is dir or inside it.
func under(p, dir string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }

// serviceUnit writes the systemd unit for spec.
func serviceUnit(spec serviceUnitSpec) (string, error) {
	for _, p := range append([]string{spec.Binary, spec.DataDir}, spec.ReadWrite...) {
		if err := unitPathOK(p); err != nil {
			return "", err
		}
	}
	protectHome := "yes"
	for _, p := range append([]string{spec.Binary, spec.DataDir}, spec.ReadWrite...) {
		// PrivateTmp gives the service a /tmp of its own: the server's
		// files would not be there.
		if under(p, "/tmp") || under(p, "/var/tmp") {
			return "", fmt.Errorf("%s is under /tmp or /var/tmp, which the service sees empty (PrivateTmp=yes): keep the server elsewhere, e.g. under /var/lib", p)
		}
		if under(p, "/home") || under(p, "/root") || under(p, "/run/user") {
			protectHome = "read-only" // the paths below are made writable again
		}
	}
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("# Written by 'pgshield service install' for %s.", spec.DataDir)
	w("# Why each setting is here: README, \"Running as a service\".")
	w("[Unit]")
	w("Description=pgshield: PostgreSQL behind the pgshield gateway (%s)", spec.DataDir)
	w("Documentation=https://github.com/pgshield/pgshield#running-as-a-service")
	w("Wants=network-online.target")
	w("After=network-online.target local-fs.target")
	w("")
	w("[Service]")
	w("Type=notify")
	w("NotifyAccess=main")
	w("ExecStart=%s up --foreground --data-dir %s", spec.Binary, spec.DataDir)
	w("# SIGHUP reads pgshield.json and the certificate files again.")
	w("ExecReload=/bin/kill -HUP $MAINPID")
	w("# SIGTERM reaches pgshield alone: it drains the sessions (pgshield.shutdown_grace), stops")
	w("# PostgreSQL with a shutdown checkpoint and locks the volume. PostgreSQL must not get it too.")
	w("KillMode=mixed")
	w("# pgshield asks for the grace on top of this (EXTEND_TIMEOUT_USEC) when it stops.")
	w("TimeoutStopSec=3min")
	w("TimeoutStartSec=5min")
	w("Restart=on-failure")
	w("RestartSec=5s")
	w("NoNewPrivileges=yes")
	w("CapabilityBoundingSet=%s", strings.Join(serviceCapabilities, " "))
	w("AmbientCapabilities=")
	w("ProtectSystem=strict")
	w("ReadWritePaths=%s", strings.Join(spec.ReadWrite, " "))
	w("PrivateTmp=yes")
	w("ProtectHome=%s", protectHome)
	w("ProtectKernelTunables=yes")
	w("ProtectKernelLogs=yes")
	w("ProtectControlGroups=yes")
	w("UMask=0077")
	w("")
	w("[Install]")
	w("WantedBy=multi-user.target")
	return b.String(), nil
}

// serviceSpec is the unit's spec for the server in l.
func serviceSpec(l config.Layout, binary string) (serviceUnitSpec, error) {
	cfg, err := config.Load(l)
	if err != nil {
		return serviceUnitSpec{}, err
	}
	root, err := filepath.Abs(l.Root)
	if err != nil {
		return serviceUnitSpec{}, err
	}
	if binary == "" {
		if binary, err = os.Executable(); err != nil {
			return serviceUnitSpec{}, err
		}
	}
	if binary, err = filepath.Abs(binary); err != nil {
		return serviceUnitSpec{}, err
	}
	spec := serviceUnitSpec{Binary: binary, DataDir: root, ReadWrite: []string{root, keys.DefaultSystemKeyDir}}
	for _, p := range []string{cfg.StoragePath, cfg.BackupRepo(l)} {
		if p != "" && !under(p, root) {
			spec.ReadWrite = append(spec.ReadWrite, filepath.Clean(p))
		}
	}
	return spec, nil
}

func newService(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "service", Short: "Run the server as a hardened systemd service: unit, install"}
	var binary string
	unit := &cobra.Command{Use: "unit", Short: "Print the systemd unit for this data directory", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			text, err := unitFor(g, binary)
			if err != nil {
				return err
			}
			_, err = fmt.Fprint(cmd.OutOrStdout(), text)
			return err
		}}
	unit.Flags().StringVar(&binary, "binary", "", "pgshield binary the unit runs (default: this one)")
	var unitDir, name string
	install := &cobra.Command{Use: "install", Short: "Write the systemd unit for this data directory (then: systemctl enable --now NAME)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireRoot(); err != nil {
				return err
			}
			if err := unitPathOK(unitDir); err != nil || strings.ContainsAny(name, "/@") || name == "" {
				return clienterr.New(apitype.CodeInvalid, "invalid --unit-dir %q or --name %q", unitDir, name)
			}
			text, err := unitFor(g, binary)
			if err != nil {
				return err
			}
			// systemd runs ExecStart as root at every start.
			if spec, err := serviceSpec(g.layout(), binary); err != nil {
				return err
			} else if err := checkRootOnly(spec.Binary); err != nil {
				return clienterr.New(apitype.CodeInvalid, "binary %s: %v (install it root-owned, e.g. in /usr/local/bin)", spec.Binary, err)
			}
			path := filepath.Join(unitDir, name+".service")
			if err := os.MkdirAll(unitDir, 0o755); err != nil {
				return err
			}
			// A unit is not secret; systemd wants it readable.
			if err := config.WriteFileAtomic(path, []byte(text), 0o644); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "Wrote %s.\n", path)
			if _, err := os.Stat("/run/systemd/system"); err == nil {
				if b, err := exec.Command("systemctl", "daemon-reload").CombinedOutput(); err != nil {
					return fmt.Errorf("systemctl daemon-reload: %v: %s", err, strings.TrimSpace(string(b)))
				}
				fmt.Fprintf(out, "Stop a pgshield started by hand first ('pgshield down'), then:\n  systemctl enable --now %s\n", name)
			} else {
				fmt.Fprintln(out, "systemd is not running on this machine (PID 1 is something else): the unit is written but nothing loads it.")
			}
			return nil
		}}
	install.Flags().StringVar(&binary, "binary", "", "pgshield binary the unit runs (default: this one)")
	install.Flags().StringVar(&unitDir, "unit-dir", "/etc/systemd/system", "directory the unit is written to")
	install.Flags().StringVar(&name, "name", "pgshield", "unit name, without .service")
	cmd.AddCommand(unit, install)
	return cmd
}

func unitFor(g *globals, binary string) (string, error) {
	spec, err := serviceSpec(g.layout(), binary)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(spec.Binary); err != nil {
		return "", clienterr.New(apitype.CodeInvalid, "binary %s: %v", spec.Binary, errors.Unwrap(err))
	}
	text, err := serviceUnit(spec)
	if err != nil {
		return "", clienterr.New(apitype.CodeInvalid, "%v", err)
	}
	return text, nil
}
