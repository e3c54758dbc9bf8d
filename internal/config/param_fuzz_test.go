package config

import (
	"strings"
	"testing"
)

// FuzzNormalizeParam feeds every pgshield parameter arbitrary values and
// checks the validator's contract: never a panic; what it accepts is
// canonical (normalizing it again changes nothing), within Allowed when the
// parameter has a list, free of the surrounding space it trims, and accepted
// by ResolveParams as exactly that value, which is what `parameter set` and
// pgshield.json loading rely on; what it refuses comes with an error that
// names the parameter.
func FuzzNormalizeParam(f *testing.F) {
	params := GatewayParams()
	for i, p := range params {
		f.Add(uint8(i), p.Default)
		f.Add(uint8(i), " "+strings.ToUpper(p.Default)+"\t")
	}
	for _, v := range []string{"", "on", "TRUE", "0", "-1", "1000001", "1h", "0.5s", "169h", "https://issuer.example/",
		"http://x", "https://u:p@x/", "10.0.0.0/8, ::1", "10.1.0.0/8", "udp://127.0.0.1:514", "a\x00b",
		"pgcrypto, PGCRYPTO ,citext", "../x", "127.0.0.1:0", "[::1]:9187", "/etc/ca.pem", "rel/ca.pem", "TLSv1.3"} {
		f.Add(uint8(0), v)
	}
	f.Fuzz(func(t *testing.T, idx uint8, value string) {
		for _, p := range params {
			// The fuzzed index picks one parameter to try first; every
			// parameter sees the value, so no input is wasted.
			if idx != 255 && p.Name != params[int(idx)%len(params)].Name {
				continue
			}
			checkNormalize(t, p, value)
		}
	})
}

func checkNormalize(t *testing.T, p Param, value string) {
	t.Helper()
	nv, err := NormalizeParam(p, value)
	if err != nil {
		if nv != "" {
			t.Fatalf("NormalizeParam(%s, %q) = %q with error %v", p.Name, value, nv, err)
		}
		if !strings.Contains(err.Error(), p.Name) {
			t.Fatalf("NormalizeParam(%s, %q) error %q does not name the parameter", p.Name, value, err)
		}
		return
	}
	again, err := NormalizeParam(p, nv)
	if err != nil || again != nv {
		t.Fatalf("NormalizeParam(%s, %q) = %q, which normalizes to %q, %v; want itself", p.Name, value, nv, again, err)
	}
	if strings.TrimSpace(nv) != nv {
		t.Fatalf("NormalizeParam(%s, %q) = %q keeps surrounding space", p.Name, value, nv)
	}
	if p.Allowed != nil {
		ok := false
		for _, a := range p.Allowed {
			ok = ok || a == nv
		}
		if !ok {
			t.Fatalf("NormalizeParam(%s, %q) = %q; not one of %q", p.Name, value, nv, p.Allowed)
		}
	}
	res, err := ResolveParams(map[string]string{strings.ToUpper(p.Name): nv})
	if err != nil {
		// A rule across parameters (a maximum TLS version below the
		// default minimum, a limit below a reserve) may refuse a value
		// that is valid alone; its error names the other parameter.
		for _, o := range GatewayParams() {
			if o.Name != p.Name && strings.Contains(err.Error(), o.Name) {
				return
			}
		}
		t.Fatalf("ResolveParams(%s=%q) error = %v; NormalizeParam accepted it", p.Name, nv, err)
	}
	if res.Values[p.Name] != nv {
		t.Fatalf("ResolveParams(%s=%q).Values[%s] = %q", p.Name, nv, p.Name, res.Values[p.Name])
	}
}
