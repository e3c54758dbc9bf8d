package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/pgshield/pgshield/internal/apitype"
)

func newParameter(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "parameter", Short: "List, show and set server parameters"}
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List pgshield's and PostgreSQL's parameters",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ps, err := g.client().Parameters(cmd.Context())
			if err != nil {
				return err
			}
			return emit(cmd.OutOrStdout(), g, ps, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "NAME\tVALUE\tUNIT\tSOURCE\tCONTEXT\tPENDING RESTART")
				for _, p := range ps {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%v\n", cell(p.Name), cell(p.Value), cell(p.Unit), cell(p.Source), cell(p.Context), p.PendingRestart)
				}
			})
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "show NAME",
		Short: "Show one parameter",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := g.client().Parameter(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return emitParam(cmd, g, *p)
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "set NAME VALUE",
		Short: "Set a parameter; it persists and applies to new connections",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireRoot(); err != nil {
				return err
			}
			p, err := g.client().SetParameter(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			return emitParam(cmd, g, *p)
		},
	})
	return cmd
}

func emitParam(cmd *cobra.Command, g *globals, p apitype.ParameterValue) error {
	return emit(cmd.OutOrStdout(), g, p, func(tw *tabwriter.Writer) {
		fmt.Fprintf(tw, "name\t%s\n", p.Name)
		fmt.Fprintf(tw, "value\t%s\n", cell(p.Value))
		if p.Unit != "" {
			fmt.Fprintf(tw, "unit\t%s\n", p.Unit)
		}
		fmt.Fprintf(tw, "source\t%s\n", p.Source)
		fmt.Fprintf(tw, "context\t%s\n", p.Context)
		fmt.Fprintf(tw, "pending restart\t%v\n", p.PendingRestart)
		if p.Description != "" {
			fmt.Fprintf(tw, "description\t%s\n", cell(p.Description))
		}
	})
}
