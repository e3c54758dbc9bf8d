package cli

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
)

// printHealth adds the overall health and one line per condition to the
// status table.
func printHealth(tw *tabwriter.Writer, h *apitype.Health) {
	if h == nil {
		return
	}
	fmt.Fprintf(tw, "health\t%s\n", h.State)
	for _, c := range h.Conditions {
		fmt.Fprintf(tw, "  %s\t%s since %s: %s\n", c.Name, c.Severity, c.Since.UTC().Format(time.RFC3339), cell(c.Message))
	}
}
