package cli

import (
	"bytes"
	"strings"
	"testing"
	"text/tabwriter"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
)

// A role or database name is chosen by the (hostile) database
// administrator: printed raw, a carriage return, newline or tab in it
// forges rows and columns on the operator's terminal.
func TestTablesQuoteNamesFromSQL(t *testing.T) {
	forged := "x\r\npgadmin\tpostgres\tsession\t0\t0\t0\t0\t0"
	esc := "evil\x1b]0;owned\x07\u202e"
	var b bytes.Buffer
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	poolTable(tw, &apitype.PoolInfo{Mode: "session", Pools: []apitype.PoolEntry{
		{Role: forged, Database: esc, Mode: "session", Clients: 1},
		{Role: "alice", Database: "app db", Mode: "session"},
	}})
	tw.Flush()
	out := b.String()
	if strings.ContainsAny(out, "\r\x1b\x07\u202e") {
		t.Fatalf("control characters reached the terminal: %q", out)
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != 4 { // header line, column header, two pools
		t.Fatalf("%d lines, want 4 (a name forged a row):\n%s", len(lines), out)
	}
	if !strings.Contains(lines[2], `"x\r\npgadmin\tpostgres`) || !strings.Contains(lines[2], `"evil\x1b]0;owned\a\u202e"`) {
		t.Fatalf("names not quoted: %q", lines[2])
	}
	if !strings.HasPrefix(lines[3], "alice") || !strings.Contains(lines[3], `"app db"`) {
		t.Fatalf("plain names changed: %q", lines[3])
	}

	// The audit table's detail: a database and reason from the wire, and
	// JSON fields (JSON leaves DEL, C1 and bidi controls as they are).
	d := detail(audit.Record{Event: audit.Event{Database: "d\nb", Reason: "r\x7fx", Fields: map[string]any{"role": "a\u009bb"}}})
	if strings.ContainsAny(d, "\n\x7f\u009b") {
		t.Fatalf("detail holds control characters: %q", d)
	}
	if cell("plain text, with spaces") != "plain text, with spaces" || cell("") != "" {
		t.Fatal("cell changed printable text")
	}
}
