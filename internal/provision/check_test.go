package provision

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pgshield/pgshield/internal/config"
)

func TestParseTargetTime(t *testing.T) {
	utc := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for in, want := range map[string]time.Time{
		"2026-11-25T14:36:36Z":           utc("2026-11-25T14:36:36Z"),
		"2026-11-25T16:36:36.5+02:00":    utc("2026-11-25T14:36:36.5Z"),
		"2026-11-25 14:36:36.25765+00":   utc("2026-11-25T14:36:36.25765Z"), // psql's clock_timestamp()
		"2026-11-25 14:36:36+05:30":      utc("2026-11-25T09:06:36Z"),
		" 2026-11-25 14:36:36.123Z ":     utc("2026-11-25T14:36:36.123Z"),
		"2026-11-25 14:36:36.123456789Z": utc("2026-11-25T14:36:36.123456789Z"),
	} {
		got, err := parseTargetTime(in)
		if err != nil || !got.Equal(want) {
			t.Errorf("parseTargetTime(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	local, err := parseTargetTime("2026-11-25 14:36")
	if err != nil || !local.Equal(time.Date(2026, 11, 25, 14, 36, 0, 0, time.Local)) {
		t.Errorf("parseTargetTime(no zone) = %v, %v; want local time", local, err)
	}
	for _, bad := range []string{"", "yesterday", "2026-13-01 00:00:00Z", "1795617383", "2026-11-25"} {
		if got, err := parseTargetTime(bad); err == nil {
			t.Errorf("parseTargetTime(%q) = %v; want an error", bad, got)
		}
	}
}

func TestWithin(t *testing.T) {
	for _, tc := range []struct {
		p, dir string
		want   bool
	}{
		{"/a/b", "/a", true}, {"/a", "/a", true}, {"/ab", "/a", false}, {"/a/../c", "/a", false},
		{"/", "/a", false}, {"/a/b/c", "/a/b", true}, {"/a/..b", "/a", true},
	} {
		if got := within(filepath.Clean(tc.p), tc.dir); got != tc.want {
			t.Errorf("within(%q, %q) = %v; want %v", tc.p, tc.dir, got, tc.want)
		}
	}
}

func TestCheckBackupPath(t *testing.T) {
	root := t.TempDir()
	l := config.Layout{Root: filepath.Join(root, "data")}
	nonEmpty := filepath.Join(root, "full")
	if err := os.MkdirAll(nonEmpty, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(nonEmpty, "x"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for p, ok := range map[string]bool{
		"":                                   true,
		filepath.Join(root, "repo"):          true,
		filepath.Join(root, "repo") + "/":    true,
		"relative/repo":                      false,
		l.Root:                               false,
		filepath.Join(l.Root, "volume", "x"): false,
		root:                                 false, // would contain the data directory
		nonEmpty:                             false,
		filepath.Join(root, "a\nb"):          false,
	} {
		got, err := checkBackupPath(l, p)
		if (err == nil) != ok {
			t.Errorf("checkBackupPath(%q) = %q, %v; want ok=%v", p, got, err, ok)
		}
	}
}
