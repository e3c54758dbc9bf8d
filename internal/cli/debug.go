package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// profileNames maps the --profile flag to the daemon's pprof route names.
var profileNames = map[string]string{
	"cpu": "profile", "trace": "trace", "heap": "heap", "allocs": "allocs", "goroutine": "goroutine",
	"block": "block", "mutex": "mutex", "threadcreate": "threadcreate",
}

func newDebug(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "debug", Short: "Diagnose the running daemon"}
	var profile, out string
	var seconds int
	pp := &cobra.Command{Use: "pprof", Short: "Save a Go profile of the daemon (CPU, heap, goroutines, ...) for go tool pprof",
		Long: "Fetches a profile from the daemon over the management socket (GET /debug/pprof/NAME) and writes it to --file.\n" +
			"cpu and trace run for --seconds; heap, allocs and the others are taken at once (a delta over --seconds if given).\n" +
			"Read it with: go tool pprof -top FILE (or go tool trace FILE).",
		Example: "  pgshield debug pprof --profile cpu --seconds 10 -f cpu.pprof",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			name, ok := profileNames[profile]
			if !ok {
				return usageError{fmt.Errorf("unknown profile %q: use cpu, trace, heap, allocs, goroutine, block, mutex or threadcreate", profile)}
			}
			if seconds < 0 || seconds > 3600 {
				return usageError{fmt.Errorf("--seconds must be between 0 and 3600, got %d", seconds)}
			}
			if (name == "profile" || name == "trace") && seconds == 0 {
				seconds = 30
			}
			if err := requireRoot(); err != nil {
				return err
			}
			b, err := g.client().Profile(cmd.Context(), name, seconds)
			if err != nil {
				return err
			}
			if err := os.WriteFile(out, b, 0o600); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "Wrote the %s profile (%d bytes) to %s.\n", profile, len(b), out)
			return nil
		}}
	pp.Flags().StringVar(&profile, "profile", "cpu", "cpu, trace, heap, allocs, goroutine, block, mutex or threadcreate")
	pp.Flags().IntVar(&seconds, "seconds", 0, "how long cpu and trace run (default 30), or a delta's interval")
	pp.Flags().StringVarP(&out, "file", "f", "", "the file to write (mode 0600)")
	_ = pp.MarkFlagRequired("file")
	c.AddCommand(pp)
	return c
}
