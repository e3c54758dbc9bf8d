package cli

import (
	"fmt"
	"strconv"
	"text/tabwriter"

	"github.com/pgshield/pgshield/internal/apitype"
)

// cell is a value from SQL or the wire as a table shows it: as it is when
// every character is printable (spaces included), else Go-quoted whole, so
// that a role named "x\rpgadmin\t..." cannot forge a row, a column or a
// terminal escape on the operator's screen. shown (alert.go) also quotes
// on a space, for single-word columns.
func cell(s string) string {
	for _, r := range s {
		if !strconv.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

// poolTable is pool show's table.
func poolTable(tw *tabwriter.Writer, info *apitype.PoolInfo) {
	auto := ""
	if info.MaxTotalAuto {
		auto = " (auto: PostgreSQL's max_connections)"
	}
	fmt.Fprintf(tw, "mode %s, pool_size %d, pool_max_total %d%s\n", cell(info.Mode), info.Size, info.MaxTotal, auto)
	if info.ModeOverrides != "" {
		fmt.Fprintf(tw, "mode overrides: %s\n", cell(info.ModeOverrides))
	}
	fmt.Fprintln(tw, "ROLE\tDATABASE\tMODE\tCLIENTS\tACTIVE\tIDLE\tWAITING\tWAITS")
	for _, p := range info.Pools {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\n", shown(p.Role), shown(p.Database), cell(p.Mode), p.Clients, p.Active, p.Idle, p.Waiting, p.Waits)
	}
}
