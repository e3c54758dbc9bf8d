package cli

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/pgshield/pgshield/internal/apitype"
)

// shown quotes a name from the wire for a table: a newline or tab in a
// role name must not forge a row or a column.
func shown(s string) string {
	if s == "" {
		return "-"
	}
	q := strconv.Quote(s)
	if q[1:len(q)-1] == s && !strings.ContainsAny(s, " ") {
		return s
	}
	return q
}

func newAlert(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "alert", Short: "Security alerts: brute force, harmful applications, new principals and sources, privilege changes, decoys"}
	var all bool
	list := &cobra.Command{Use: "list", Short: "List alerts, newest first (dismissed ones with --all)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			as, err := g.client().Alerts(cmd.Context())
			if err != nil {
				return err
			}
			out := []apitype.Alert{}
			for _, a := range as {
				if all || !a.Dismissed {
					out = append(out, a)
				}
			}
			return emit(cmd.OutOrStdout(), g, out, func(tw *tabwriter.Writer) {
				fmt.Fprintln(tw, "ID\tSEVERITY\tTYPE\tLAST SEEN\tCOUNT\tCLIENT\tUSER\tDISMISSED")
				for _, a := range out {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%v\n", a.ID, a.Severity, cell(a.Type), fmtTime(&a.LastSeen),
						a.Count, shown(a.Client), shown(a.User), a.Dismissed)
				}
			})
		}}
	list.Flags().BoolVar(&all, "all", false, "include dismissed alerts")
	show := &cobra.Command{Use: "show ID", Short: "Show one alert with its details and evidence", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			a, err := g.client().Alert(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return emitAlert(cmd, g, a)
		}}
	dismiss := &cobra.Command{Use: "dismiss ID", Short: "Dismiss an alert (it stays listed with --all; a repeat raises a new one)",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := requireRoot(); err != nil {
				return err
			}
			a, err := g.client().DismissAlert(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return emitAlert(cmd, g, a)
		}}
	cmd.AddCommand(list, show, dismiss)
	return cmd
}

func emitAlert(cmd *cobra.Command, g *globals, a *apitype.Alert) error {
	return emit(cmd.OutOrStdout(), g, a, func(tw *tabwriter.Writer) {
		fmt.Fprintf(tw, "id\t%s\n", a.ID)
		fmt.Fprintf(tw, "type\t%s\n", a.Type)
		fmt.Fprintf(tw, "severity\t%s\n", a.Severity)
		fmt.Fprintf(tw, "title\t%s\n", cell(a.Title))
		fmt.Fprintf(tw, "first seen\t%s\n", fmtTime(&a.FirstSeen))
		fmt.Fprintf(tw, "last seen\t%s\n", fmtTime(&a.LastSeen))
		fmt.Fprintf(tw, "count\t%d\n", a.Count)
		fmt.Fprintf(tw, "client\t%s\n", shown(a.Client))
		fmt.Fprintf(tw, "user\t%s\n", shown(a.User))
		fmt.Fprintf(tw, "database\t%s\n", shown(a.Database))
		fmt.Fprintf(tw, "application\t%s\n", shown(a.Application))
		for _, m := range []struct {
			prefix string
			kv     map[string]string
		}{{"", a.Details}, {"evidence ", a.Evidence}} {
			keys := make([]string, 0, len(m.kv))
			for k := range m.kv {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				fmt.Fprintf(tw, "%s%s\t%s\n", m.prefix, k, shown(m.kv[k]))
			}
		}
		fmt.Fprintf(tw, "dismissed\t%v\n", a.Dismissed)
	})
}
