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
				if info.ModeOverrides != "" {
					fmt.Fprintf(tw, "mode overrides: %s\n", info.ModeOverrides)
				}
				fmt.Fprintln(tw, "ROLE\tDATABASE\tMODE\tCLIENTS\tACTIVE\tIDLE\tWAITING\tWAITS")
				for _, p := range info.Pools {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\n", p.Role, p.Database, p.Mode, p.Clients, p.Active, p.Idle, p.Waiting, p.Waits)
				}
			})
		}}
	cmd.AddCommand(show)
	return cmd
}
