package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/pgshield/pgshield/internal/apitype"
)

func newPrincipal(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "principal", Short: "Token principals: roles that log in with an OIDC access token as the password"}
	table := func(tw *tabwriter.Writer, ps []apitype.Principal) {
		fmt.Fprintln(tw, "NAME\tTYPE\tOBJECT ID\tADMIN\tCREATED")
		for _, p := range ps {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\n", shown(p.Name), p.Kind, cell(p.ObjectID), p.Admin, fmtTime(&p.CreatedAt))
		}
	}
	var req apitype.PrincipalRequest
	create := &cobra.Command{Use: "create", Short: "Create a role for a user, group or service principal of the identity provider", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireRoot(); err != nil {
				return err
			}
			p, err := g.client().CreatePrincipal(cmd.Context(), req)
			if err != nil {
				return err
			}
			return emit(cmd.OutOrStdout(), g, p, func(tw *tabwriter.Writer) { table(tw, []apitype.Principal{*p}) })
		}}
	create.Flags().StringVar(&req.Name, "name", "", "role name the principal logs in as (e.g. alice@contoso.com, or the group's name)")
	create.Flags().StringVar(&req.ObjectID, "object-id", "", "the principal's object ID in the identity provider (matched against the token; never the display name)")
	create.Flags().StringVar(&req.Type, "type", "user", "user, group or service")
	create.Flags().BoolVar(&req.Admin, "admin", false, "give the role the administrator's rights (CREATEROLE, CREATEDB, monitoring roles)")
	_ = create.MarkFlagRequired("name")
	_ = create.MarkFlagRequired("object-id")
	list := &cobra.Command{Use: "list", Short: "List the token principals", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ps, err := g.client().Principals(cmd.Context())
			if err != nil {
				return err
			}
			if ps == nil {
				ps = []apitype.Principal{}
			}
			return emit(cmd.OutOrStdout(), g, ps, func(tw *tabwriter.Writer) { table(tw, ps) })
		}}
	var name string
	del := &cobra.Command{Use: "delete", Short: "Drop a token principal's role (refused while it owns objects)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireRoot(); err != nil {
				return err
			}
			if _, err := g.client().DeletePrincipal(cmd.Context(), name); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Deleted %s.\n", name)
			return nil
		}}
	del.Flags().StringVar(&name, "name", "", "principal (role) name")
	_ = del.MarkFlagRequired("name")
	cmd.AddCommand(create, list, del)
	return cmd
}
