package config

import (
	"testing"

	"github.com/pgshield/pgshield/internal/alerting"
)

func TestAlertParams(t *testing.T) {
	for _, tc := range []struct {
		set  map[string]string
		want string // "" ok, else part of the error
	}{
		{map[string]string{"pgshield.alert_learning_period": "0s"}, ""},
		{map[string]string{"pgshield.alert_learning_period": "-1s"}, "invalid value"},
		{map[string]string{"pgshield.alert_webhook_url": "http://example.com/x"}, "invalid value"},
		{map[string]string{"pgshield.alert_webhook_url": "https://user:pw@example.com/x"}, "invalid value"},
		{map[string]string{"pgshield.alert_webhook_url": "https://hooks.example.com/x?token=abc"}, ""},
		{map[string]string{"pgshield.alert_harmful_applications": "SQLMap, hydra,hydra"}, ""},
		{map[string]string{"pgshield.alert_harmful_applications": "bad tool!"}, "invalid value"},
		{map[string]string{"pgshield.alert_harmful_fingerprints": "user,database; user,database,client_encoding"}, ""},
		{map[string]string{"pgshield.alert_harmful_fingerprints": "user;DROP"}, "invalid value"},
		{map[string]string{"pgshield.alert_harmful_fingerprints": "mytool:user,database=tmpl-1,client_encoding=UTF8"}, ""},
		{map[string]string{"pgshield.alert_harmful_fingerprints": "mytool:user,options=-c"}, "only user, database"},
		{map[string]string{"pgshield.alert_harmful_fingerprints": "t:user,database=a:b"}, "invalid value"},
		{map[string]string{"pgshield.alert_harmful_fingerprints": "t:user,database="}, "invalid value"},
		{map[string]string{"pgshield.alert_harmful_fingerprints": alerting.DefaultHarmfulFingerprints}, ""},
		{map[string]string{"pgshield.alert_principal_unseen_days": "3651"}, "invalid value"},
	} {
		_, err := ResolveParams(tc.set)
		if (err == nil) != (tc.want == "") || err != nil && !contains(err.Error(), tc.want) {
			t.Errorf("ResolveParams(%v) = %v; want %q", tc.set, err, tc.want)
		}
	}
	if p, _ := ResolveParams(nil); p.Values["pgshield.alert_harmful_fingerprints"] != alerting.DefaultHarmfulFingerprints {
		t.Errorf("default fingerprints = %q", p.Values["pgshield.alert_harmful_fingerprints"])
	}
	p, _ := ResolveParams(map[string]string{"pgshield.alert_harmful_applications": "SQLMap, hydra,hydra"})
	if got := p.Values["pgshield.alert_harmful_applications"]; got != "hydra,sqlmap" {
		t.Errorf("canonical tool list = %q", got)
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}
