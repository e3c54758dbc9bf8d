package config

import (
	"crypto/tls"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestResolveParamsDefaults(t *testing.T) {
	for _, set := range []map[string]string{nil, {}} {
		p, err := ResolveParams(set)
		if err != nil {
			t.Fatalf("ResolveParams(%v) error = %v; want nil", set, err)
		}
		if !p.RequireSecureTransport || p.MinTLS != tls.VersionTLS12 || p.MaxTLS != 0 {
			t.Errorf("ResolveParams(%v) = %+v; want require_secure_transport on, TLS 1.2 minimum, no maximum", set, p)
		}
		want := map[string]string{
			"require_secure_transport":            "on",
			"ssl_min_protocol_version":            "TLSv1.2",
			"ssl_max_protocol_version":            "",
			"accepted_password_auth_method":       "scram-sha-256",
			"pgshield.max_connection_rate_per_ip": "200",
			"pgshield.kernel_firewall":            "off",
			"pgshield.key_revalidation_interval":  "1m0s",
			"pgshield.key_unavailable_grace":      "30m0s",
			"pgshield.trusted_proxies":            "",
			"pgshield.password_auth":              "on",
			"pgshield.oidc_issuer":                "",
			"pgshield.oidc_principal_claim":       "oid",
			"pgshield.oidc_groups_claim":          "groups",
			"pgshield.oidc_enforce_expiry":        "off",
		}
		// Other parameters may exist; these defaults must hold.
		for k, v := range want {
			if got, ok := p.Values[k]; !ok || got != v {
				t.Errorf("ResolveParams(%v).Values[%q] = %q, %v; want %q", set, k, got, ok, v)
			}
		}
		if !p.PasswordAuth || p.OIDC.PrincipalClaim != "oid" || p.OIDC.GroupsClaim != "groups" || p.OIDC.JWKSRefresh != time.Minute {
			t.Errorf("ResolveParams(%v) = %+v; want password auth on, oid/groups claims, 1m JWKS refresh", set, p)
		}
	}
}

func TestResolveParams(t *testing.T) {
	tests := []struct {
		name       string
		set        map[string]string
		wantErr    string // substring; "" means success
		wantSecure bool
		wantMin    uint16
		wantMax    uint16
		wantValues map[string]string // checked entries only
	}{
		{name: "require_secure_transport off", set: map[string]string{"require_secure_transport": "off"},
			wantSecure: false, wantMin: tls.VersionTLS12},
		{name: "require_secure_transport on", set: map[string]string{"require_secure_transport": "on"},
			wantSecure: true, wantMin: tls.VersionTLS12},
		{name: "require_secure_transport false", set: map[string]string{"require_secure_transport": "false"},
			wantSecure: false, wantMin: tls.VersionTLS12,
			wantValues: map[string]string{"require_secure_transport": "off"}},
		{name: "require_secure_transport TRUE", set: map[string]string{"require_secure_transport": "TRUE"},
			wantSecure: true, wantMin: tls.VersionTLS12,
			wantValues: map[string]string{"require_secure_transport": "on"}},
		{name: "require_secure_transport 0 with spaces", set: map[string]string{"require_secure_transport": "  0 "},
			wantSecure: false, wantMin: tls.VersionTLS12,
			wantValues: map[string]string{"require_secure_transport": "off"}},
		{name: "require_secure_transport yes", set: map[string]string{"require_secure_transport": "Yes"},
			wantSecure: true, wantMin: tls.VersionTLS12},
		{name: "require_secure_transport bad", set: map[string]string{"require_secure_transport": "maybe"},
			wantErr: `invalid value for parameter "require_secure_transport": "maybe"`},
		{name: "require_secure_transport empty", set: map[string]string{"require_secure_transport": ""},
			wantErr: "invalid value"},
		{name: "TLS 1.3 minimum", set: map[string]string{"ssl_min_protocol_version": "TLSv1.3"},
			wantSecure: true, wantMin: tls.VersionTLS13},
		{name: "TLS 1.3 minimum lower case", set: map[string]string{"ssl_min_protocol_version": "tlsv1.3"},
			wantSecure: true, wantMin: tls.VersionTLS13,
			wantValues: map[string]string{"ssl_min_protocol_version": "TLSv1.3"}},
		{name: "TLS 1.2 maximum", set: map[string]string{"ssl_max_protocol_version": "TLSV1.2"},
			wantSecure: true, wantMin: tls.VersionTLS12, wantMax: tls.VersionTLS12,
			wantValues: map[string]string{"ssl_max_protocol_version": "TLSv1.2"}},
		{name: "TLS 1.3 only", set: map[string]string{"ssl_min_protocol_version": "TLSv1.3",
			"ssl_max_protocol_version": "TLSv1.3"}, wantSecure: true, wantMin: tls.VersionTLS13, wantMax: tls.VersionTLS13},
		{name: "empty maximum means none", set: map[string]string{"ssl_max_protocol_version": ""},
			wantSecure: true, wantMin: tls.VersionTLS12, wantMax: 0},
		{name: "TLS 1.3 minimum with TLS 1.2 maximum", set: map[string]string{"ssl_min_protocol_version": "TLSv1.3",
			"ssl_max_protocol_version": "TLSv1.2"}, wantErr: "is lower than ssl_min_protocol_version"},
		{name: "TLS 1.1 minimum", set: map[string]string{"ssl_min_protocol_version": "TLSv1.1"},
			wantErr: `invalid value for parameter "ssl_min_protocol_version": "TLSv1.1" (allowed: TLSv1.2, TLSv1.3)`},
		{name: "empty minimum", set: map[string]string{"ssl_min_protocol_version": ""}, wantErr: "invalid value"},
		{name: "TLS 1.0 maximum", set: map[string]string{"ssl_max_protocol_version": "TLSv1"},
			wantErr: `(allowed: "" (none), TLSv1.2, TLSv1.3)`},
		{name: "rate per IP", set: map[string]string{"pgshield.max_connection_rate_per_ip": " 50 "},
			wantSecure: true, wantMin: tls.VersionTLS12,
			wantValues: map[string]string{"pgshield.max_connection_rate_per_ip": "50"}},
		{name: "negative rate refused", set: map[string]string{"pgshield.max_connection_rate_per_ip": "-1"}, wantErr: "invalid value"},
		{name: "rate not a number", set: map[string]string{"pgshield.max_connection_rate_per_ip": "fast"}, wantErr: "invalid value"},
		{name: "trusted proxies", set: map[string]string{"pgshield.trusted_proxies": "10.0.0.0/8"},
			wantSecure: true, wantMin: tls.VersionTLS12,
			wantValues: map[string]string{"pgshield.trusted_proxies": "10.0.0.0/8"}},
		{name: "trusted proxies bad CIDR", set: map[string]string{"pgshield.trusted_proxies": "10.0.0.0/33"}, wantErr: "invalid value"},
		{name: "md5 refused", set: map[string]string{"accepted_password_auth_method": "md5"}, wantErr: "invalid value"},
		{name: "SCRAM upper case", set: map[string]string{"accepted_password_auth_method": "SCRAM-SHA-256"},
			wantSecure: true, wantMin: tls.VersionTLS12,
			wantValues: map[string]string{"accepted_password_auth_method": "scram-sha-256"}},
		{name: "unknown parameter", set: map[string]string{"ssl_ciphers": "ALL"}, wantErr: `unrecognized parameter "ssl_ciphers"`},
		{name: "unknown parameter among good ones", set: map[string]string{"require_secure_transport": "on",
			"shared_buffers": "1GB"}, wantErr: "unrecognized parameter"},
		{name: "parameter name case-insensitive", set: map[string]string{"Require_Secure_Transport": "off"},
			wantSecure: false, wantMin: tls.VersionTLS12,
			wantValues: map[string]string{"require_secure_transport": "off"}},
		{name: "OIDC issuer", set: map[string]string{"pgshield.oidc_issuer": "https://login.example.com/tenant/v2.0"},
			wantSecure: true, wantMin: tls.VersionTLS12,
			wantValues: map[string]string{"pgshield.oidc_issuer": "https://login.example.com/tenant/v2.0"}},
		{name: "OIDC issuer over http refused", set: map[string]string{"pgshield.oidc_issuer": "http://login.example.com"}, wantErr: "https://"},
		{name: "OIDC issuer with query refused", set: map[string]string{"pgshield.oidc_issuer": "https://login.example.com/?a=b"}, wantErr: "invalid value"},
		{name: "OIDC issuer not a URL", set: map[string]string{"pgshield.oidc_issuer": "login.example.com"}, wantErr: "invalid value"},
		{name: "principal claim sub", set: map[string]string{"pgshield.oidc_principal_claim": "sub"},
			wantSecure: true, wantMin: tls.VersionTLS12, wantValues: map[string]string{"pgshield.oidc_principal_claim": "sub"}},
		{name: "empty principal claim refused", set: map[string]string{"pgshield.oidc_principal_claim": ""}, wantErr: "claim name"},
		{name: "principal claim with a space refused", set: map[string]string{"pgshield.oidc_principal_claim": "o id"}, wantErr: "claim name"},
		{name: "audience with a control character refused", set: map[string]string{"pgshield.oidc_audience": "a\x01pi"}, wantErr: "printable"},
		{name: "relative CA file refused", set: map[string]string{"pgshield.oidc_ca_file": "ca.pem"}, wantErr: "absolute path"},
		{name: "metrics listen", set: map[string]string{"pgshield.metrics_listen": "127.0.0.1:9187"},
			wantSecure: true, wantMin: tls.VersionTLS12, wantValues: map[string]string{"pgshield.metrics_listen": "127.0.0.1:9187"}},
		{name: "metrics listen without port refused", set: map[string]string{"pgshield.metrics_listen": "127.0.0.1"}, wantErr: "host:port"},
		{name: "metrics listen port 0 refused", set: map[string]string{"pgshield.metrics_listen": "127.0.0.1:0"}, wantErr: "host:port"},
		{name: "password auth off", set: map[string]string{"pgshield.password_auth": "OFF"},
			wantSecure: true, wantMin: tls.VersionTLS12, wantValues: map[string]string{"pgshield.password_auth": "off"}},
		{name: "enforce expiry maybe refused", set: map[string]string{"pgshield.oidc_enforce_expiry": "maybe"}, wantErr: "invalid value"},
		{name: "one parameter spelled twice", set: map[string]string{"ssl_min_protocol_version": "TLSv1.3",
			"SSL_MIN_PROTOCOL_VERSION": "TLSv1.2"}, wantErr: `parameter "ssl_min_protocol_version" is set more than once`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ResolveParams(tt.set)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ResolveParams(%v) error = %v; want one containing %q", tt.set, err, tt.wantErr)
				}
				if p.Values != nil || p.MinTLS != 0 {
					t.Errorf("ResolveParams(%v) = %+v with an error; want zero Params", tt.set, p)
				}
				return
			}
			if err != nil {
				t.Fatalf("ResolveParams(%v) error = %v; want nil", tt.set, err)
			}
			if p.RequireSecureTransport != tt.wantSecure || p.MinTLS != tt.wantMin || p.MaxTLS != tt.wantMax {
				t.Errorf("ResolveParams(%v) = secure %v min %#x max %#x; want %v %#x %#x", tt.set,
					p.RequireSecureTransport, p.MinTLS, p.MaxTLS, tt.wantSecure, tt.wantMin, tt.wantMax)
			}
			for k, v := range tt.wantValues {
				if p.Values[k] != v {
					t.Errorf("ResolveParams(%v).Values[%q] = %q; want %q", tt.set, k, p.Values[k], v)
				}
			}
			if len(p.Values) != len(gatewayParams) {
				t.Errorf("ResolveParams(%v).Values has %d entries; want one per parameter (%d)", tt.set, len(p.Values),
					len(gatewayParams))
			}
		})
	}
}

func TestResolveParamsDoesNotModifyInput(t *testing.T) {
	set := map[string]string{"REQUIRE_SECURE_TRANSPORT": "false"}
	p, err := ResolveParams(set)
	if err != nil {
		t.Fatal(err)
	}
	if len(set) != 1 || set["REQUIRE_SECURE_TRANSPORT"] != "false" {
		t.Errorf("ResolveParams changed its input to %v", set)
	}
	p.Values["require_secure_transport"] = "on"
	if q, _ := ResolveParams(set); q.Values["require_secure_transport"] != "off" {
		t.Errorf("ResolveParams shares Values between calls")
	}
}

func TestGatewayParams(t *testing.T) {
	ps := GatewayParams()
	names := make([]string, len(ps))
	for i, p := range ps {
		names[i] = p.Name
		if p.Description == "" {
			t.Errorf("parameter %q has no description", p.Name)
		}
		if _, err := NormalizeParam(p, p.Default); err != nil {
			t.Errorf("default %q of %q is not an allowed value: %v", p.Default, p.Name, err)
		}
	}
	if !slices.IsSorted(names) {
		t.Errorf("GatewayParams() names = %v; want sorted", names)
	}
	want := []string{"accepted_password_auth_method", "pgshield.kernel_firewall", "pgshield.key_revalidation_interval", "pgshield.key_unavailable_grace", "pgshield.max_connection_rate_per_ip", "pgshield.trusted_proxies",
		"require_secure_transport", "ssl_max_protocol_version", "ssl_min_protocol_version",
		"pgshield.password_auth", "pgshield.oidc_issuer", "pgshield.oidc_audience", "pgshield.oidc_principal_claim",
		"pgshield.oidc_groups_claim", "pgshield.oidc_tenant", "pgshield.oidc_enforce_expiry", "pgshield.oidc_ca_file", "pgshield.oidc_jwks_refresh_interval"}
	for _, w := range want {
		if !slices.Contains(names, w) {
			t.Errorf("GatewayParams() names = %v; want it to contain %q", names, w)
		}
	}
	ps[0].Name = "changed"
	if GatewayParams()[0].Name == "changed" {
		t.Errorf("GatewayParams() returns the package's own table")
	}
}

func TestLookupParam(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		wantOK bool
		want   string
	}{
		{name: "exact", in: "ssl_min_protocol_version", wantOK: true, want: "ssl_min_protocol_version"},
		{name: "upper case", in: "SSL_MAX_PROTOCOL_VERSION", wantOK: true, want: "ssl_max_protocol_version"},
		{name: "PostgreSQL parameter", in: "shared_buffers"},
		{name: "empty", in: ""},
		{name: "prefix only", in: "ssl_min"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, ok := LookupParam(tt.in)
			if ok != tt.wantOK || p.Name != tt.want {
				t.Errorf("LookupParam(%q) = %q, %v; want %q, %v", tt.in, p.Name, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestPoolMaxTotalParam(t *testing.T) {
	for in, want := range map[string]int{"": AutoPoolMaxTotal, "auto": AutoPoolMaxTotal, "AUTO": AutoPoolMaxTotal, "90": 90, "10000": 10000} {
		vals := map[string]string{}
		if in != "" {
			vals["pgshield.pool_max_total"] = in
		}
		p, err := ResolveParams(vals)
		if err != nil || p.Pool.MaxTotal != want {
			t.Errorf("pool_max_total %q = %d, %v; want %d", in, p.Pool.MaxTotal, err, want)
		}
	}
	for _, bad := range []string{"0", "-1", "10001", "auto90", "lots"} {
		if _, err := ResolveParams(map[string]string{"pgshield.pool_max_total": bad}); err == nil {
			t.Errorf("pool_max_total %q accepted", bad)
		}
	}
}
