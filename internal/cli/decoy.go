package cli

import (
	"errors"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/pgshield/pgshield/internal/apitype"
)

func newDecoy(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "decoy", Short: "Decoy roles and tables: any login as one, or any read of one, raises a High alert"}
	table := func(tw *tabwriter.Writer, ds []apitype.Decoy) {
		fmt.Fprintln(tw, "KIND\tNAME\tDATABASE\tCREATED\tSTATE")
		for _, d := range ds {
			db := "-"
			if d.Database != "" {
				db = shown(d.Database)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", d.Kind, shown(d.Name), db, fmtTime(&d.CreatedAt), d.State)
		}
	}
	var createDB, deleteDB string
	create := &cobra.Command{Use: "create role|table NAME",
		Short: "Create a decoy role (a name no one uses) or table ([SCHEMA.]TABLE, in database postgres or --database)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireRoot(); err != nil {
				return err
			}
			if createDB != "" && args[0] != apitype.DecoyTable {
				return usageError{errors.New("--database is for a decoy table")}
			}
			d, err := g.client().CreateDecoy(cmd.Context(), args[0], args[1], createDB)
			if err != nil {
				return err
			}
			return emit(cmd.OutOrStdout(), g, d, func(tw *tabwriter.Writer) { table(tw, []apitype.Decoy{*d}) })
		}}
	list := &cobra.Command{Use: "list", Short: "List the decoys and what the last check found", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ds, err := g.client().Decoys(cmd.Context())
			if err != nil {
				return err
			}
			if ds == nil {
				ds = []apitype.Decoy{}
			}
			return emit(cmd.OutOrStdout(), g, ds, func(tw *tabwriter.Writer) { table(tw, ds) })
		}}
	del := &cobra.Command{Use: "delete NAME", Short: "Delete a decoy (the role or table too)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireRoot(); err != nil {
				return err
			}
			d, err := g.client().DeleteDecoy(cmd.Context(), args[0], deleteDB)
			if err != nil {
				return err
			}
			return emit(cmd.OutOrStdout(), g, d, func(tw *tabwriter.Writer) { table(tw, []apitype.Decoy{*d}) })
		}}
	create.Flags().StringVar(&createDB, "database", "", "database of a decoy table (default postgres)")
	del.Flags().StringVar(&deleteDB, "database", "", "database of the decoy table, when tables of that name are decoys in several")
	cmd.AddCommand(create, list, del)
	return cmd
}
