package config

import (
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzDecode checks that Decode never panics, accepts only exactly one JSON
// object, always returns a usable config, and that what it accepts survives
// the Save encoding unchanged. Seeds are in testdata/fuzz/FuzzDecode.
func FuzzDecode(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Decode(b)
		if err != nil {
			if c != nil {
				t.Fatalf("Decode(%q) = %+v with error %v", b, c, err)
			}
			return
		}
		if !json.Valid(b) {
			t.Fatalf("Decode(%q) accepted input that is not exactly one JSON value", b)
		}
		if c.Version != 1 || c.TLSCertFile == "" || c.TLSKeyFile == "" || c.Listen == "" || c.PGPort == 0 ||
			c.Parameters == nil {
			t.Fatalf("Decode(%q) = %+v; want a complete config", b, c)
		}
		if _, err := ResolveParams(c.Parameters); err != nil {
			t.Fatalf("Decode(%q) accepted parameters ResolveParams refuses: %v", b, err)
		}
		out, err := json.MarshalIndent(c, "", "  ")
		if err != nil {
			t.Fatalf("json.MarshalIndent(%+v) error = %v", c, err)
		}
		c2, err := Decode(append(out, '\n'))
		if err != nil {
			t.Fatalf("Decode(saved %q) error = %v; want the saved config to load", out, err)
		}
		if !reflect.DeepEqual(c, c2) {
			t.Fatalf("Decode(saved) = %+v; want %+v", c2, c)
		}
	})
}
