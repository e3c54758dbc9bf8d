package cli

import (
	"github.com/spf13/cobra"
)

func newMetrics(g *globals) *cobra.Command {
	return &cobra.Command{Use: "metrics", Short: "Print the daemon's Prometheus metrics (key state and transitions, audit events, connections)",
		Long: "Prints the metrics in Prometheus' text format, as the management socket serves them at /v1/metrics.\n" +
			"Set pgshield.metrics_listen (e.g. 127.0.0.1:9187) to have Prometheus scrape them over HTTP at /metrics.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := g.client().Metrics(cmd.Context())
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(b)
			return err
		}}
}
