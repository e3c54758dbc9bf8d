package cli

import (
	"fmt"
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
			return emit(cmd.OutOrStdout(), g, info, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "mode %s, pool_size %d, pool_max_total %d\n", info.Mode, info.Size, info.MaxTotal)
				fmt.Fprintln(tw, "ROLE\tDATABASE\tCLIENTS\tACTIVE\tIDLE\tWAITING\tWAITS")
				for _, p := range info.Pools {
					fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\n", p.Role, p.Database, p.Clients, p.Active, p.Idle, p.Waiting, p.Waits)
				}
			})
		}}
	cmd.AddCommand(show)
	return cmd
}
