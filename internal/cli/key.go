package cli

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgshield/pgshield/internal/daemon"
)

func newKey(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "key", Short: "Data encryption key: show, lock, unlock"}
	show := func(cmd *cobra.Command, ki daemon.KeyInfo) error {
		return emit(cmd.OutOrStdout(), g, ki, func(tw *tabwriter.Writer) {
			fmt.Fprintf(tw, "state\t%s since %s\n", ki.State, ki.Since.Local().Format(time.RFC3339))
			if ki.Reason != "" {
				fmt.Fprintf(tw, "reason\t%s\n", ki.Reason)
			}
			fmt.Fprintf(tw, "backend\t%s\n", ki.Backend)
			fmt.Fprintf(tw, "key source\t%s\n", ki.KeySource)
			fmt.Fprintf(tw, "key uri\t%s\n", ki.KeyURI)
			if ki.LastValidated != nil {
				fmt.Fprintf(tw, "last validated\t%s\n", ki.LastValidated.Local().Format(time.RFC3339))
			}
			if ki.GraceSince != nil {
				fmt.Fprintf(tw, "ALERT\tkey unreachable since %s (%s)\n", ki.GraceSince.Local().Format(time.RFC3339), ki.LastError)
			}
			if ki.TotalBytes > 0 {
				fmt.Fprintf(tw, "volume\t%d MiB, %d MiB free\n", ki.TotalBytes>>20, ki.FreeBytes>>20)
			}
		})
	}
	for _, c := range []struct{ use, short, method, route string }{
		{"show", "Show the key's state, source and backend", "GET", "/v1/key"},
		{"lock", "End sessions, stop PostgreSQL, remove the key from the kernel", "POST", "/v1/key/lock"},
		{"unlock", "Unwrap the key, unlock the volume, start PostgreSQL", "POST", "/v1/key/unlock"},
		{"revalidate", "Prove now that the key-encryption key still unwraps the data key", "POST", "/v1/key/revalidate"},
	} {
		c := c
		cmd.AddCommand(&cobra.Command{Use: c.use, Short: c.short, Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				if c.method != "GET" {
					if err := requireRoot(); err != nil {
						return err
					}
				}
				var ki daemon.KeyInfo
				if err := g.client().Do(cmd.Context(), c.method, c.route, nil, &ki); err != nil {
					return err
				}
				return show(cmd, ki)
			}})
	}
	cmd.AddCommand(newKeyChange(g, "set", "Put the data key under another key-encryption key, online", "/v1/key/set", true),
		newKeyChange(g, "rotate", "Re-wrap the data key with the key's newest version (or --key-uri), online", "/v1/key/rotate", false))
	return cmd
}

func newKeyChange(g *globals, use, short, route string, requireURI bool) *cobra.Command {
	var uri string
	c := &cobra.Command{Use: use, Short: short, Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireRoot(); err != nil {
				return err
			}
			var ki daemon.KeyInfo
			if err := g.client().Do(cmd.Context(), "POST", route, daemon.KeyChangeRequest{KeyURI: uri}, &ki); err != nil {
				return err
			}
			return emit(cmd.OutOrStdout(), g, ki, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "state\t%s\nkey source\t%s\nkey uri\t%s\n", ki.State, ki.KeySource, ki.KeyURI)
			})
		}}
	c.Flags().StringVar(&uri, "key-uri", "", "key-encryption key URI (awskms://, azurekeyvault://, gcpkms://, hashivault://)")
	if requireURI {
		_ = c.MarkFlagRequired("key-uri")
	}
	return c
}
