package deptest

import (
	"slices"
	"testing"
)

func TestFind(t *testing.T) {
	goTool := goTool()
	if goTool == "" {
		t.Skip("the go tool is not installed")
	}
	for _, tt := range []struct {
		desc string
		c    DepChecker
		want string // one of the violations; none if empty
	}{
		{"a dependency", DepChecker{Pkg: "net/http", BadPrefixes: []string{"crypto/tls", "nosuch"}},
			"crypto/tls (forbidden: crypto/tls)"},
		{"a prefix is a path, not a string prefix", DepChecker{Pkg: "strings", BadPrefixes: []string{"unicode/utf"}}, ""},
	} {
		t.Run(tt.desc, func(t *testing.T) {
			got, err := tt.c.find(goTool)
			if err != nil {
				t.Fatal(err)
			}
			if tt.want == "" && len(got) > 0 || tt.want != "" && !slices.Contains(got, tt.want) {
				t.Errorf("find(%s) = %q; want %q", tt.c.Pkg, got, tt.want)
			}
		})
	}
}
