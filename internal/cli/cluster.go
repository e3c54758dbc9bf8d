package cli

import (
	"errors"
	"fmt"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/cluster/promote"
)

// newCluster is `pgshield cluster`: a new cluster's material (init) and
// its etcd members (etcd), show, switchover and failover, and the hook
// Patroni runs. A node is made with `init --ha`.
func newCluster(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "cluster",
		Short: "High availability: a new cluster's material and etcd members, this node's view of its cluster",
		Args:  cobra.NoArgs,
	}
	c.AddCommand(newClusterShow(g), newClusterManual(g, "switchover"), newClusterManual(g, "failover"), newClusterPrePromote(g),
		newClusterInit(g), newClusterEtcd(g), newClusterAllowJoin(g))
	return c
}

func newClusterShow(g *globals) *cobra.Command {
	return &cobra.Command{Use: "show", Short: "Members, roles, lag and timeline (Patroni), this node's leadership, etcd health", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			info, err := g.client().Cluster(cmd.Context())
			if err != nil {
				return err
			}
			return emit(cmd.OutOrStdout(), g, info, func(tw *tabwriter.Writer) { clusterTable(tw, info) })
		}}
}

// newClusterManual is cluster switchover [--to NODE] and cluster failover
// --to NODE, run by Patroni.
func newClusterManual(g *globals, action string) *cobra.Command {
	var to string
	short := "Hand the primary role to NODE (default: the synchronous standby), the current primary stepping down"
	use := "switchover [--to NODE]"
	if action == "failover" {
		short = "Promote NODE when the primary is gone (Patroni refuses a node that could lose acknowledged commits)"
		use = "failover --to NODE"
	}
	c := &cobra.Command{Use: use, Short: short, Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if action == "failover" && to == "" {
				return usageError{errors.New("--to is required")}
			}
			call := g.client().ClusterSwitchover
			if action == "failover" {
				call = g.client().ClusterFailover
			}
			res, err := call(cmd.Context(), to)
			if err != nil {
				return err
			}
			return emit(cmd.OutOrStdout(), g, res, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "%s to %s: %s\n", res.Action, cell(res.To), cell(res.Message))
			})
		}}
	c.Flags().StringVar(&to, "to", "", "the node to promote")
	return c
}

func clusterTable(tw *tabwriter.Writer, info *apitype.ClusterInfo) {
	ld := info.Leadership
	fmt.Fprintf(tw, "cluster %s, node %s: %s", cell(info.Scope), cell(info.Node), cell(ld.State))
	if ld.MayWrite {
		fmt.Fprint(tw, " (read-write sessions allowed)")
	} else {
		fmt.Fprint(tw, " (logins refused: not the confirmed primary)")
	}
	fmt.Fprintln(tw)
	if ld.LastError != "" {
		fmt.Fprintf(tw, "last fence error: %s\n", cell(ld.LastError))
	}
	fmt.Fprintln(tw, "MEMBER\tROLE\tSTATE\tTIMELINE\tLAG")
	for _, m := range info.Members {
		lag := "unknown"
		if m.LagBytes != nil {
			lag = strconv.FormatInt(*m.LagBytes, 10) + " B"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", cell(m.Name), cell(m.Role), cell(m.State), m.Timeline, lag)
	}
	if info.PatroniError != "" {
		fmt.Fprintf(tw, "Patroni: %s\n", cell(info.PatroniError))
	}
	fmt.Fprintln(tw, "ETCD\tHEALTHY\tERROR")
	for _, e := range info.Etcd {
		fmt.Fprintf(tw, "%s\t%v\t%s\n", cell(e.Endpoint), e.Healthy, cell(e.Error))
	}
}

// newClusterPrePromote is Patroni's postgresql.pre_promote hook. It runs
// as postgres and asks the daemon, which runs as root, over the promotion
// socket: exit 0 only when the daemon says this node's volume is unlocked
// and its key unwraps. Any other outcome exits non-zero, and Patroni does
// not promote.
func newClusterPrePromote(_ *globals) *cobra.Command {
	var socket string
	c := &cobra.Command{
		Use:    "pre-promote --socket PATH",
		Short:  "Patroni's pre_promote hook: exit 0 only if this node may be promoted",
		Hidden: true, // Patroni's, not the operator's
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if socket == "" {
				return usageError{errors.New("--socket is required")}
			}
			return promote.Ask(cmd.Context(), socket)
		},
	}
	c.Flags().StringVar(&socket, "socket", "", "the daemon's promotion socket")
	return c
}
