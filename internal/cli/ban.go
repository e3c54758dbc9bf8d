package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/pgshield/pgshield/internal/apitype"
)

func newBan(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "ban", Short: "Sources banned after repeated failed logins (closed at accept, before TLS)"}
	table := func(tw *tabwriter.Writer, bs []apitype.Ban) {
		fmt.Fprintln(tw, "SOURCE\tBANNED AT\tUNTIL\tCOUNT")
		for _, b := range bs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", b.Source, fmtTime(&b.BannedAt), fmtTime(&b.Until), b.Count)
		}
	}
	list := &cobra.Command{Use: "list", Short: "List the bans in force", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			bs, err := g.client().Bans(cmd.Context())
			if err != nil {
				return err
			}
			if bs == nil {
				bs = []apitype.Ban{}
			}
			return emit(cmd.OutOrStdout(), g, bs, func(tw *tabwriter.Writer) { table(tw, bs) })
		}}
	del := &cobra.Command{Use: "delete SOURCE", Short: "Lift a ban (SOURCE: an address, or the IPv4 /32 or IPv6 /64 ban list shows)",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireRoot(); err != nil {
				return err
			}
			b, err := g.client().Unban(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return emit(cmd.OutOrStdout(), g, b, func(tw *tabwriter.Writer) { table(tw, []apitype.Ban{*b}) })
		}}
	cmd.AddCommand(list, del)
	return cmd
}
