package cli

import (
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func newPool(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "pool", Short: "The gateway's backend pools (pgshield.pool_mode)"}
	show := &cobra.Command{Use: "show", Short: "Clients, active and idle backends and waits per role and database", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			info, err := g.client().Pool(cmd.Context())
			if err != nil {
				return err
			}
			return emit(cmd.OutOrStdout(), g, info, func(tw *tabwriter.Writer) { poolTable(tw, info) })
		}}
	cmd.AddCommand(show)
	return cmd
}
