package cli

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgshield/pgshield/internal/apiclient"
	"github.com/pgshield/pgshield/internal/apitype"
)

func newKey(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "key", Short: "Data encryption key: show, lock, unlock"}
	show := func(cmd *cobra.Command, ki apitype.KeyInfo) error {
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
	for _, c := range []struct {
		use, short string
		write      bool
		call       func(*apiclient.Client, context.Context) (*apitype.KeyInfo, error)
	}{
		{"show", "Show the key's state, source and backend", false, (*apiclient.Client).Key},
		{"lock", "End sessions, stop PostgreSQL, remove the key from the kernel", true, (*apiclient.Client).LockKey},
		{"unlock", "Unwrap the key, unlock the volume, start PostgreSQL", true, (*apiclient.Client).UnlockKey},
		{"revalidate", "Prove now that the key-encryption key still unwraps the data key", true, (*apiclient.Client).RevalidateKey},
	} {
		cmd.AddCommand(&cobra.Command{Use: c.use, Short: c.short, Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				if c.write {
					if err := requireRoot(); err != nil {
						return err
					}
				}
				ki, err := c.call(g.client(), cmd.Context())
				if err != nil {
					return err
				}
				return show(cmd, *ki)
			}})
	}
	cmd.AddCommand(newKeyChange(g, "set", "Put the data key under another key-encryption key, online", (*apiclient.Client).SetKey, true),
		newKeyChange(g, "rotate", "Re-wrap the data key with the key's newest version (or --key-uri), online", (*apiclient.Client).RotateKey, false))
	return cmd
}

func newKeyChange(g *globals, use, short string, call func(*apiclient.Client, context.Context, string) (*apitype.KeyInfo, error),
	requireURI bool) *cobra.Command {
	var uri string
	c := &cobra.Command{Use: use, Short: short, Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireRoot(); err != nil {
				return err
			}
			ki, err := call(g.client(), cmd.Context(), uri)
			if err != nil {
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
