package config

import (
	"crypto/tls"
	"fmt"
	"sort"
	"strings"
)

// Param describes a parameter that pgshield itself owns (not PostgreSQL's).
type Param struct {
	Name        string
	Default     string
	Description string
	// Allowed lists the accepted values; normalize maps input onto them.
	Allowed []string
}

// gatewayParams are the Azure-named parameters the gateway enforces.
var gatewayParams = []Param{
	{Name: "require_secure_transport", Default: "on", Allowed: []string{"on", "off"},
		Description: "Refuse connections that do not use TLS."},
	{Name: "ssl_min_protocol_version", Default: "TLSv1.2", Allowed: []string{"TLSv1.2", "TLSv1.3"},
		Description: "Lowest TLS version the gateway accepts."},
	{Name: "ssl_max_protocol_version", Default: "", Allowed: []string{"", "TLSv1.2", "TLSv1.3"},
		Description: "Highest TLS version the gateway accepts; empty means no maximum."},
	{Name: "accepted_password_auth_method", Default: "scram-sha-256", Allowed: []string{"scram-sha-256"},
		Description: "Password authentication methods the gateway accepts."},
}

// GatewayParams returns the table of pgshield-owned parameters, sorted.
func GatewayParams() []Param {
	out := append([]Param(nil), gatewayParams...)
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// LookupParam finds a pgshield-owned parameter by name (case-insensitive).
func LookupParam(name string) (Param, bool) {
	for _, p := range gatewayParams {
		if strings.EqualFold(p.Name, name) {
			return p, true
		}
	}
	return Param{}, false
}

// NormalizeParam validates value for p and returns its canonical spelling.
func NormalizeParam(p Param, value string) (string, error) {
	v := strings.TrimSpace(value)
	switch p.Name {
	case "require_secure_transport":
		switch strings.ToLower(v) {
		case "on", "true", "yes", "1":
			return "on", nil
		case "off", "false", "no", "0":
			return "off", nil
		}
	default:
		for _, a := range p.Allowed {
			if strings.EqualFold(a, v) {
				return a, nil
			}
		}
	}
	allowed := make([]string, 0, len(p.Allowed))
	for _, a := range p.Allowed {
		if a == "" {
			a = `"" (none)`
		}
		allowed = append(allowed, a)
	}
	return "", fmt.Errorf("invalid value for parameter %q: %q (allowed: %s)", p.Name, value, strings.Join(allowed, ", "))
}

// Params is the resolved view of the gateway parameters.
type Params struct {
	RequireSecureTransport bool
	MinTLS                 uint16
	MaxTLS                 uint16 // 0: no maximum
	Values                 map[string]string
}

var tlsVersions = map[string]uint16{"TLSv1.2": tls.VersionTLS12, "TLSv1.3": tls.VersionTLS13}

// ResolveParams applies defaults to the explicitly set values, validates
// each and the combination, and returns the typed view.
func ResolveParams(set map[string]string) (Params, error) {
	vals := map[string]string{}
	for _, p := range gatewayParams {
		vals[p.Name] = p.Default
	}
	seen := map[string]bool{}
	for k, v := range set {
		p, ok := LookupParam(k)
		if !ok {
			return Params{}, fmt.Errorf("unrecognized parameter %q", k)
		}
		// Names match case-insensitively: two spellings of one parameter
		// would make the result depend on map order.
		if seen[p.Name] {
			return Params{}, fmt.Errorf("parameter %q is set more than once", p.Name)
		}
		seen[p.Name] = true
		nv, err := NormalizeParam(p, v)
		if err != nil {
			return Params{}, err
		}
		vals[p.Name] = nv
	}
	out := Params{Values: vals}
	out.RequireSecureTransport = vals["require_secure_transport"] == "on"
	out.MinTLS = tlsVersions[vals["ssl_min_protocol_version"]]
	if mx := vals["ssl_max_protocol_version"]; mx != "" {
		out.MaxTLS = tlsVersions[mx]
		if out.MaxTLS < out.MinTLS {
			return Params{}, fmt.Errorf("invalid value for parameter \"ssl_max_protocol_version\": %q is lower than ssl_min_protocol_version %q",
				mx, vals["ssl_min_protocol_version"])
		}
	}
	return out, nil
}
