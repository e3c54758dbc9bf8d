package cli

import (
	"errors"

	"github.com/spf13/cobra"

	"github.com/pgshield/pgshield/internal/cluster/promote"
)

// newCluster is `pgshield cluster`. Only the hook Patroni runs exists yet;
// init, join, show, switchover, failover and remove are issue #18's.
func newCluster(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "cluster",
		Short: "High availability (issue #18; only Patroni's pre_promote hook so far)",
		Args:  cobra.NoArgs,
	}
	c.AddCommand(newClusterPrePromote(g))
	return c
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
			// TODO(#18): the daemon does not serve this socket yet
			// (promote.Server over volume.AtRest and the keys controller,
			// started in cluster mode), so today the hook always refuses.
			return promote.Ask(cmd.Context(), socket)
		},
	}
	c.Flags().StringVar(&socket, "socket", "", "the daemon's promotion socket")
	return c
}
