package cli

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgshield/pgshield/internal/cluster/etcd"
	"github.com/pgshield/pgshield/internal/cluster/material"
	"github.com/pgshield/pgshield/internal/cluster/patroni"
)

// newClusterInit is `pgshield cluster init`: the material of a new
// cluster, one directory per machine (internal/cluster/material).
func newClusterInit(_ *globals) *cobra.Command {
	var (
		scope, out       string
		nodes, members   []string
		ttl, loop, retry int
		asyncWhenAlone   bool
	)
	c := &cobra.Command{
		Use:   "init --scope NAME --node NAME=IP... --etcd NAME=IP... --out DIR",
		Short: "Make a new cluster's CAs, certificates, secrets and node settings, one directory per machine",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if scope == "" || out == "" {
				return usageError{errors.New("--scope and --out are required")}
			}
			spec := material.Spec{Scope: scope, AsyncWhenAlone: asyncWhenAlone,
				Timings: patroni.Timings{TTL: ttl, LoopWait: loop, RetryTimeout: retry}}
			var err error
			if spec.Nodes, err = hosts("--node", nodes); err != nil {
				return err
			}
			if spec.Etcd, err = hosts("--etcd", members); err != nil {
				return err
			}
			if (ttl != 0 || loop != 0 || retry != 0) && (loop <= 0 || retry <= 0 || ttl < loop+retry) {
				return usageError{errors.New("--ttl, --loop-wait and --retry-timeout go together, with ttl ≥ loop-wait + retry-timeout")}
			}
			if os.Geteuid() != 0 {
				return errNotRoot
			}
			if err := material.Make(out, spec, time.Now()); err != nil {
				return err
			}
			b, err := os.ReadFile(filepath.Join(out, material.ReadmeFile))
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(b)
			return err
		}}
	f := c.Flags()
	f.StringVar(&scope, "scope", "", "the cluster's name (Patroni's scope)")
	f.StringArrayVar(&nodes, "node", nil, "a pgshield node, NAME=IP (2 or 3; the first bootstraps)")
	f.StringArrayVar(&members, "etcd", nil, "an etcd member, NAME=IP (3)")
	f.StringVar(&out, "out", "", "the directory to make (must not exist)")
	f.IntVar(&ttl, "ttl", 0, "Patroni's leader key TTL in seconds (0: Patroni's default, 30)")
	f.IntVar(&loop, "loop-wait", 0, "Patroni's loop_wait in seconds (0: 10)")
	f.IntVar(&retry, "retry-timeout", 0, "Patroni's retry_timeout in seconds (0: 10)")
	f.BoolVar(&asyncWhenAlone, "async-when-alone", false, "let a lone primary take writes without its synchronous standby (two nodes)")
	return c
}

// hosts parses NAME=IP flags.
func hosts(flag string, vals []string) ([]material.Host, error) {
	var out []material.Host
	for _, v := range vals {
		name, ip, ok := strings.Cut(v, "=")
		addr := net.ParseIP(ip)
		if !ok || name == "" || addr == nil {
			return nil, usageError{fmt.Errorf("%s %q: want NAME=IP", flag, v)}
		}
		out = append(out, material.Host{Name: name, IP: addr})
	}
	return out, nil
}

// newClusterEtcd is `pgshield cluster etcd`: one etcd member, from the
// directory `cluster init` made for it, run in the foreground until
// SIGINT or SIGTERM and started again if it exits.
func newClusterEtcd(_ *globals) *cobra.Command {
	var dir, dataDir string
	c := &cobra.Command{
		Use:   "etcd --dir DIR --data-dir DIR",
		Short: "Run one etcd member of the cluster from its `cluster init` directory (foreground)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" || dataDir == "" {
				return usageError{errors.New("--dir and --data-dir are required")}
			}
			// etcd runs with its data directory as working directory.
			var err error
			if dir, err = filepath.Abs(dir); err != nil {
				return err
			}
			if dataDir, err = filepath.Abs(dataDir); err != nil {
				return err
			}
			if os.Geteuid() != 0 {
				return errNotRoot
			}
			// As Debian's etcd user, never root: etcd listens on the
			// network. Its member's files stay root's, readable by its group.
			u, err := user.Lookup("etcd")
			if err != nil {
				return fmt.Errorf("no etcd user to run etcd as (Debian's etcd-server makes it): %w", err)
			}
			uid, uerr := strconv.Atoi(u.Uid)
			gid, gerr := strconv.Atoi(u.Gid)
			if uerr != nil || gerr != nil || uid == 0 || gid == 0 {
				return fmt.Errorf("the etcd user is uid %s gid %s: refusing to run etcd as root", u.Uid, u.Gid)
			}
			c, name, err := material.ReadEtcdMember(dir)
			if err != nil {
				return err
			}
			if err := material.ShareMember(dir, name, gid); err != nil {
				return err
			}
			if err := material.DataDir(dataDir, uid, gid); err != nil {
				return err
			}
			bin := etcd.Installed()
			if bin == "" {
				return errors.New("etcd is not installed (Debian's etcd-server)")
			}
			args, err := etcd.Args(c, name, etcd.PKI{Dir: dir}, dataDir)
			if err != nil {
				return err
			}
			cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			fmt.Fprintf(cmd.ErrOrStderr(), "etcd member %s of %s, on %s\n", name, c.Token, etcd.ClientURL(mustMember(c, name)))
			s := &etcd.Supervisor{Bin: bin, Args: args, Dir: dataDir, Log: cmd.ErrOrStderr(), Credential: cred}
			if err := s.Run(ctx); err != nil && !errors.Is(err, ctx.Err()) {
				return err
			}
			return nil
		}}
	c.Flags().StringVar(&dir, "dir", "", "the member's directory from `cluster init` (etcd-member-NAME)")
	c.Flags().StringVar(&dataDir, "data-dir", "", "etcd's data directory (made 0700)")
	return c
}

func mustMember(c etcd.Cluster, name string) etcd.Member {
	m, _ := c.Member(name)
	return m
}

// newClusterAllowJoin is `pgshield cluster allow-join NODE`: on a node
// already up, let NODE (a peer it lists), while it runs `init --ha`
// without secrets.json, receive the cluster's secrets over the link, once.
func newClusterAllowJoin(g *globals) *cobra.Command {
	var d time.Duration
	c := &cobra.Command{
		Use:   "allow-join NODE [--for 15m]",
		Short: "Let a joining node receive the cluster's secrets from this node over the link, once",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if d < time.Second {
				return usageError{errors.New("--for must be at least 1s")}
			}
			w, err := g.client().ClusterAllowJoin(cmd.Context(), args[0], d)
			if err != nil {
				return err
			}
			return emit(cmd.OutOrStdout(), g, w, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "%s may receive the cluster's secrets from this node once, until %s\n", cell(w.Node), w.Until.UTC().Format(time.RFC3339))
			})
		}}
	c.Flags().DurationVar(&d, "for", 15*time.Minute, "how long the window stays open")
	return c
}
