// Package cli implements pgshield's command line: the daemon's `up` and the
// commands that talk to it over the management API.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/pgshield/pgshield/internal/apiclient"
	"github.com/pgshield/pgshield/internal/config"
)

type globals struct {
	dataDir string
	output  string
}

func (g *globals) layout() config.Layout {
	return config.Layout{Root: config.DataDirFromEnv(g.dataDir)}
}

func (g *globals) client() *apiclient.Client { return apiclient.New(g.layout().APISocket()) }

// Execute runs the command line and returns the process exit code.
func Execute(args []string) int {
	root := newRoot()
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	var logged loggedError
	if err != nil && !errors.As(err, &logged) {
		fmt.Fprintln(os.Stderr, "pgshield: "+err.Error())
	}
	return exitCode(err)
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "pgshield",
		Short:         "A self-hosted PostgreSQL with a managed database's security model",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if g.output != "table" && g.output != "json" {
				return usageError{fmt.Errorf("invalid output format %q: use json or table", g.output)}
			}
			return nil
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.PersistentFlags().StringVar(&g.dataDir, "data-dir", "", "data directory (env PGSHIELD_DATA_DIR, default "+config.DefaultDataDir+")")
	root.PersistentFlags().StringVarP(&g.output, "output", "o", "table", "output format: json or table")
	root.AddCommand(newInit(g), newUp(g), newDown(g), newStatus(g), newConnectionString(g), newParameter(g),
		newFirewallRule(g), newNetworkRule(g), newNetwork(g), newKey(g), newAudit(g), newPrincipal(g), newMetrics(g))
	root.AddCommand(newBackup(g))
	root.AddCommand(newStorage(g))
	root.AddCommand(newBan(g))
	root.AddCommand(newPool(g))
	root.AddCommand(newAlert(g), newDecoy(g))
	root.AddCommand(newDebug(g))
	root.AddCommand(newDelete(g))
	root.AddCommand(newCertificate(g))
	root.AddCommand(newRestart(g), newService(g))
	root.AddCommand(newCluster(g))
	for _, c := range root.Commands() {
		wrapArgs(c)
	}
	return root
}

// wrapArgs marks argument-count errors as usage errors, recursively.
func wrapArgs(c *cobra.Command) {
	if c.Args != nil {
		inner := c.Args
		c.Args = func(cmd *cobra.Command, args []string) error {
			if err := inner(cmd, args); err != nil {
				return usageError{err}
			}
			return nil
		}
	}
	for _, sub := range c.Commands() {
		wrapArgs(sub)
	}
}

func requireRoot() error {
	if os.Geteuid() != 0 {
		return errNotRoot
	}
	return nil
}

// emit prints v as JSON, or calls table to print it for people.
func emit(w io.Writer, g *globals, v any, table func(tw *tabwriter.Writer)) error {
	if g.output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

// namedRuleCmd is a subcommand that acts on the rule --name N.
func namedRuleCmd(use, short string, run func(cmd *cobra.Command, name string) error) *cobra.Command {
	var name string
	c := &cobra.Command{Use: use, Short: short, Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return run(cmd, name) }}
	c.Flags().StringVar(&name, "name", "", "rule name")
	_ = c.MarkFlagRequired("name")
	return c
}

// deleteRuleCmd is `delete --name N`, which takes root; del deletes the rule.
func deleteRuleCmd(del func(ctx context.Context, name string) error) *cobra.Command {
	return namedRuleCmd("delete", "Delete a rule (sessions it allowed are ended)", func(cmd *cobra.Command, name string) error {
		if err := requireRoot(); err != nil {
			return err
		}
		if err := del(cmd.Context(), name); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "Deleted %s.\n", name)
		return nil
	})
}
