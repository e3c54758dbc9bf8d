package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/pgshield/pgshield/internal/apitype"
)

func newNetwork(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "network", Short: "Network mode: public access (firewall rules) or private access (network security rules)"}
	show := func(cmd *cobra.Command, ni apitype.NetworkInfo) error {
		return emit(cmd.OutOrStdout(), g, ni, func(tw *tabwriter.Writer) {
			fmt.Fprintf(tw, "mode\t%s\nlisten\t%s\n", ni.Mode, ni.Listen)
		})
	}
	cmd.AddCommand(&cobra.Command{Use: "show", Short: "Show the network mode", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ni, err := g.client().Network(cmd.Context())
			if err != nil {
				return err
			}
			return show(cmd, *ni)
		}})
	var mode string
	set := &cobra.Command{Use: "set", Short: "Switch the network mode (rules of both modes are kept)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireRoot(); err != nil {
				return err
			}
			ni, err := g.client().SetNetworkMode(cmd.Context(), mode)
			if err != nil {
				return err
			}
			return show(cmd, *ni)
		}}
	set.Flags().StringVar(&mode, "mode", "", "public or private")
	_ = set.MarkFlagRequired("mode")
	cmd.AddCommand(set)
	return cmd
}
