package cli

import (
	"context"
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgshield/pgshield/internal/apitype"
)

func fmtTime(t *time.Time) string {
	if t == nil || t.IsZero() {
		return "-"
	}
	return t.Local().Format(time.RFC3339)
}

// expiryFlags adds --expires-in/--expires-at to a create or update command.
func expiryFlags(cmd *cobra.Command, req *apitype.RuleRequest, at *string) {
	cmd.Flags().StringVar(&req.ExpiresIn, "expires-in", "", "remove the rule automatically after this long (e.g. 2h)")
	cmd.Flags().StringVar(at, "expires-at", "", "remove the rule automatically at this time (RFC 3339)")
}

func parseExpiry(req *apitype.RuleRequest, at string) error {
	if req.ExpiresIn != "" && at != "" {
		return usageError{errors.New("--expires-in and --expires-at exclude each other")}
	}
	if req.ExpiresIn != "" {
		d, err := time.ParseDuration(req.ExpiresIn)
		if err != nil || d <= 0 {
			return usageError{fmt.Errorf("invalid --expires-in %q: use a positive duration such as 90m or 2h", req.ExpiresIn)}
		}
	}
	if at != "" {
		t, err := time.Parse(time.RFC3339, at)
		if err != nil {
			return usageError{fmt.Errorf("invalid --expires-at %q: use RFC 3339, e.g. 2026-12-01T18:00:00Z", at)}
		}
		req.ExpiresAt = &t
	}
	return nil
}

func newFirewallRule(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "firewall-rule", Short: "Public access: IP ranges allowed to connect (everything else is refused)"}
	table := func(tw *tabwriter.Writer, rs []apitype.FirewallRule) {
		fmt.Fprintln(tw, "NAME\tSTART IP\tEND IP\tEXPIRES\tHITS\tLAST USED")
		for _, r := range rs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", shown(r.Name), r.StartIPAddress, r.EndIPAddress, fmtTime(r.ExpiresAt), r.Hits, fmtTime(r.LastUsed))
		}
	}
	write := func(use, short string, create bool) *cobra.Command {
		var req apitype.RuleRequest
		var at string
		c := &cobra.Command{Use: use, Short: short, Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				if err := requireRoot(); err != nil {
					return err
				}
				if err := parseExpiry(&req, at); err != nil {
					return err
				}
				c := g.client()
				call := c.UpdateFirewallRule
				if create {
					call = c.CreateFirewallRule
				}
				r, err := call(cmd.Context(), req)
				if err != nil {
					return err
				}
				return emit(cmd.OutOrStdout(), g, r, func(tw *tabwriter.Writer) { table(tw, []apitype.FirewallRule{*r}) })
			}}
		c.Flags().StringVar(&req.Name, "name", "", "rule name (letters, digits, - and _)")
		c.Flags().StringVar(&req.StartIPAddress, "start-ip-address", "", "first allowed address (IPv4 or IPv6)")
		c.Flags().StringVar(&req.EndIPAddress, "end-ip-address", "", "last allowed address, same family")
		expiryFlags(c, &req, &at)
		_ = c.MarkFlagRequired("name")
		if create {
			_ = c.MarkFlagRequired("start-ip-address")
			_ = c.MarkFlagRequired("end-ip-address")
		}
		return c
	}
	cmd.AddCommand(write("create", "Allow an IP range", true), write("update", "Change a rule", false))
	cmd.AddCommand(&cobra.Command{Use: "list", Short: "List the rules with their hits", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rs, err := g.client().FirewallRules(cmd.Context())
			if err != nil {
				return err
			}
			if rs == nil {
				rs = []apitype.FirewallRule{}
			}
			return emit(cmd.OutOrStdout(), g, rs, func(tw *tabwriter.Writer) { table(tw, rs) })
		}})
	cmd.AddCommand(namedRuleCmd("show", "Show a rule", func(cmd *cobra.Command, name string) error {
		r, err := g.client().FirewallRule(cmd.Context(), name)
		if err != nil {
			return err
		}
		return emit(cmd.OutOrStdout(), g, r, func(tw *tabwriter.Writer) { table(tw, []apitype.FirewallRule{*r}) })
	}))
	cmd.AddCommand(deleteRuleCmd(func(ctx context.Context, name string) error { return g.client().DeleteFirewallRule(ctx, name) }))
	return cmd
}

func newNetworkRule(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "network-rule", Short: "Private access: network security rules (lowest priority number first, default deny)"}
	table := func(tw *tabwriter.Writer, rs []apitype.NetworkRule) {
		fmt.Fprintln(tw, "PRIORITY\tNAME\tDIRECTION\tACCESS\tSOURCE\tDESTINATION\tPORTS\tEXPIRES\tHITS\tLAST USED")
		for _, r := range rs {
			dst := r.DestinationAddressPrefix
			if dst == "" {
				dst = "*"
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", r.Priority, shown(r.Name), r.Direction, r.Access,
				r.SourceAddressPrefix, dst, r.DestinationPortRange, fmtTime(r.ExpiresAt), r.Hits, fmtTime(r.LastUsed))
		}
	}
	var req apitype.RuleRequest
	var at string
	create := &cobra.Command{Use: "create", Short: "Add a rule", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireRoot(); err != nil {
				return err
			}
			if err := parseExpiry(&req, at); err != nil {
				return err
			}
			r, err := g.client().CreateNetworkRule(cmd.Context(), req)
			if err != nil {
				return err
			}
			return emit(cmd.OutOrStdout(), g, r, func(tw *tabwriter.Writer) { table(tw, []apitype.NetworkRule{*r}) })
		}}
	f := create.Flags()
	f.StringVar(&req.Name, "name", "", "rule name")
	f.IntVar(&req.Priority, "priority", 0, "100 to 4096, unique; lower wins")
	f.StringVar(&req.Access, "access", "", "Allow or Deny")
	f.StringVar(&req.Direction, "direction", "Inbound", "Inbound or Outbound")
	f.StringVar(&req.SourceAddressPrefix, "source-address-prefix", "*", "CIDR or *")
	f.StringVar(&req.DestinationAddressPrefix, "destination-address-prefix", "*", "CIDR or * (Outbound rules)")
	f.StringVar(&req.DestinationPortRange, "destination-port-range", "*", "port, range (5000-6000), list, or *")
	expiryFlags(create, &req, &at)
	for _, n := range []string{"name", "priority", "access"} {
		_ = create.MarkFlagRequired(n)
	}
	cmd.AddCommand(create)
	cmd.AddCommand(&cobra.Command{Use: "list", Short: "List the rules by priority", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rs, err := g.client().NetworkRules(cmd.Context())
			if err != nil {
				return err
			}
			if rs == nil {
				rs = []apitype.NetworkRule{}
			}
			return emit(cmd.OutOrStdout(), g, rs, func(tw *tabwriter.Writer) { table(tw, rs) })
		}})
	cmd.AddCommand(namedRuleCmd("show", "Show a rule", func(cmd *cobra.Command, name string) error {
		r, err := g.client().NetworkRule(cmd.Context(), name)
		if err != nil {
			return err
		}
		return emit(cmd.OutOrStdout(), g, r, func(tw *tabwriter.Writer) { table(tw, []apitype.NetworkRule{*r}) })
	}))
	cmd.AddCommand(deleteRuleCmd(func(ctx context.Context, name string) error { return g.client().DeleteNetworkRule(ctx, name) }))
	return cmd
}
