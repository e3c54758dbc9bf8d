package config

import (
	"slices"
	"strings"
	"testing"
)

func TestAllowedExtensionsParam(t *testing.T) {
	p, err := ResolveParams(nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"btree_gist", "citext", "hstore", "pg_stat_statements", "pg_trgm", "pgaudit", "pgcrypto", "uuid-ossp"}
	if !slices.Equal(p.AllowedExtensions, want) {
		t.Errorf("default AllowedExtensions = %v; want %v", p.AllowedExtensions, want)
	}
	for _, tc := range []struct {
		in, want, err string
	}{
		{in: " PGCrypto , citext,pgcrypto,, ", want: "citext,pgcrypto"},
		{in: "uuid-ossp", want: "uuid-ossp"},
		{in: "", want: ""},
		{in: "../../tmp/evil", err: "not an extension name"},
		{in: "pgcrypto,a b", err: "not an extension name"},
		{in: "pgcrypto;drop", err: "not an extension name"},
		{in: "x'", err: "not an extension name"},
		{in: strings.Repeat("a", 64), err: "not an extension name"},
	} {
		p, err := ResolveParams(map[string]string{"pgshield.allowed_extensions": tc.in})
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ResolveParams(%q) error = %v; want %q", tc.in, err, tc.err)
			}
		case err != nil:
			t.Errorf("ResolveParams(%q) error = %v", tc.in, err)
		case p.Values["pgshield.allowed_extensions"] != tc.want || strings.Join(p.AllowedExtensions, ",") != tc.want:
			t.Errorf("ResolveParams(%q) = %q %v; want %q", tc.in, p.Values["pgshield.allowed_extensions"], p.AllowedExtensions, tc.want)
		}
	}
}
