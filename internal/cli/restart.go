package cli

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgshield/pgshield/internal/config"
)

func newRestart(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "restart",
		Short: "Restart PostgreSQL (parameters pending restart take effect); the volume stays unlocked",
		Long: "Restart PostgreSQL behind the running daemon: new connections are refused with 57P03, open\n" +
			"sessions get pgshield.shutdown_grace to finish and are then ended with 57P01, PostgreSQL stops\n" +
			"(fast shutdown) and starts again. The daemon, the gateway and the encrypted volume stay up.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := requireRoot(); err != nil {
				return err
			}
			cfg, err := config.Load(g.layout())
			if err != nil {
				return err
			}
			// The answer comes after the grace, a stop and a start.
			wait := 5 * time.Minute
			if p, err := config.ResolveParams(cfg.Parameters); err == nil {
				wait += p.ShutdownGrace()
			}
			res, err := g.client().Restart(cmd.Context(), wait)
			if err != nil {
				return err
			}
			return emit(cmd.OutOrStdout(), g, res, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "result\t%s\n", res.Result)
				fmt.Fprintf(tw, "postgresql pid\t%d\n", res.PostgresPID)
				fmt.Fprintf(tw, "sessions terminated\t%d\n", res.SessionsTerminated)
				fmt.Fprintf(tw, "seconds\t%.1f\n", res.Seconds)
			})
		},
	}
}
