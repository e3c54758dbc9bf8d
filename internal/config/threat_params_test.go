package config

import (
	"strings"
	"testing"
	"time"
)

func TestThreatParams(t *testing.T) {
	p, err := ResolveParams(nil)
	if err != nil {
		t.Fatal(err)
	}
	want := ThreatParams{MaxPreAuth: 256, MaxPreAuthPerSource: 32, PreAuthReserved: 64, KnownTTL: 168 * time.Hour,
		MaxFailures: 5, Window: 10 * time.Minute, BanTime: 10 * time.Minute, MaxBanTime: 24 * time.Hour,
		RoleMaxFailures: 20, RoleMaxDelay: 10 * time.Second, MaxConnections: AutoMaxConnections, ReservedAdmin: 3,
		IgnoreSources: "127.0.0.1/32, ::1/128"}
	if p.Threat != want || p.PreAuthTimeout != 10*time.Second {
		t.Errorf("ResolveParams(nil).Threat = %+v, preauth %v; want %+v, 10s (fail2ban's defaults)", p.Threat, p.PreAuthTimeout, want)
	}
	// Contradicting values are settled, not refused (each is valid alone).
	p, err = ResolveParams(map[string]string{"pgshield.max_preauth_connections": "64", "pgshield.max_connections": "3",
		"pgshield.bruteforce_ban_time": "48h"})
	if err != nil || p.Threat.PreAuthReserved != 63 || p.Threat.ReservedAdmin != 2 || p.Threat.MaxBanTime != 48*time.Hour {
		t.Errorf("ResolveParams(contradictions) = %+v, %v; want reserve 63, admin reserve 2, longest ban 48h", p.Threat, err)
	}
	for _, tt := range []struct {
		set     map[string]string
		wantErr string
	}{
		{map[string]string{"pgshield.bruteforce_max_failures": "0"}, ""},
		{map[string]string{"pgshield.bruteforce_max_failures": "-1"}, "invalid value"},
		{map[string]string{"pgshield.bruteforce_max_failures": "1001"}, "invalid value"},
		{map[string]string{"pgshield.preauth_timeout": "0s"}, "invalid value"},
		{map[string]string{"pgshield.preauth_timeout": "2m"}, "invalid value"},
		{map[string]string{"pgshield.bruteforce_role_max_delay": "1m"}, "invalid value"},
		{map[string]string{"pgshield.max_preauth_connections": "64"}, ""},
		{map[string]string{"pgshield.max_preauth_connections": "0"}, ""},
		{map[string]string{"pgshield.max_connections": "3"}, ""},
		{map[string]string{"pgshield.max_connections": "AUTO"}, ""},
		{map[string]string{"pgshield.max_connections": "-1"}, "invalid value"},
		{map[string]string{"pgshield.max_connections": "automatic"}, "invalid value"},
		{map[string]string{"pgshield.bruteforce_ban_time": "48h"}, ""},
		{map[string]string{"pgshield.max_connections_per_role": "abc"}, "invalid value"},
	} {
		_, err := ResolveParams(tt.set)
		if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("ResolveParams(%v) error = %v; want %q", tt.set, err, tt.wantErr)
		}
	}
}
