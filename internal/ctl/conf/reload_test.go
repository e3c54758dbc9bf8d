package conf

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/pgshield/pgshield/internal/config"
)

func TestReload(t *testing.T) {
	l := config.Layout{Root: t.TempDir()}
	first, err := config.Decode([]byte(`{"listen": "127.0.0.1:6432", "tls_cert_file": "/x/server.crt", "tls_key_file": "/x/server.key",
		"server_id": "s1", "parameters": {"pgshield.max_connection_rate_per_ip": "50", "pgshield.audit_fail_closed": "on"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := config.Save(l, first); err != nil {
		t.Fatal(err)
	}
	s := New(l, first)
	good, err := os.ReadFile(l.ConfigFile())
	if err != nil {
		t.Fatal(err)
	}
	edit := func(from, to string) []byte {
		t.Helper()
		if !strings.Contains(string(good), from) {
			t.Fatalf("saved configuration has no %q:\n%s", from, good)
		}
		return []byte(strings.Replace(string(good), from, to, 1))
	}
	var applied [][]string
	apply := func(changed []string) { applied = append(applied, changed) }

	refused := []struct {
		name, file, reason string
		check              func(*config.Config, []string) error
	}{
		{name: "not JSON", file: `{"listen": "127.0.0.1:6432",`, reason: "decoding config"},
		{name: "empty", file: ``, reason: "decoding config"},
		{name: "trailing data", file: string(good) + "}", reason: "trailing data"},
		{name: "unknown field", file: string(edit(`"listen"`, `"listen_addr": "x", "listen"`)), reason: "unknown field"},
		{name: "malformed parameter value", file: string(edit(`"50"`, `"fifty"`)), reason: "pgshield.max_connection_rate_per_ip"},
		{name: "unknown parameter", file: string(edit(`"pgshield.audit_fail_closed"`, `"pgshield.no_such"`)), reason: "unrecognized parameter"},
		{name: "a field init decides", file: string(edit(`127.0.0.1:6432`, `0.0.0.0:6432`)), reason: "listen changed"},
		{name: "certificate files", file: string(edit(`/x/server.key`, `/y/server.key`)), reason: "tls_key_file changed"},
		{name: "refused by check", file: string(edit(`"50"`, `"60"`)), reason: "no, thanks",
			check: func(*config.Config, []string) error { return errors.New("no, thanks") }},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(l.ConfigFile(), []byte(tc.file), 0o600); err != nil {
				t.Fatal(err)
			}
			changed, err := s.Reload(tc.check, apply)
			if !errors.Is(err, ErrReloadRefused) || !strings.Contains(err.Error(), tc.reason) || changed != nil {
				t.Fatalf("Reload() = %v, %v; want ErrReloadRefused saying %q", changed, err, tc.reason)
			}
			if s.Get() != first || len(applied) != 0 {
				t.Fatalf("a refused reload changed the configuration in force (%+v) or applied %v", s.Get(), applied)
			}
			// The operator's file is left for them to fix.
			if b, _ := os.ReadFile(l.ConfigFile()); string(b) != tc.file {
				t.Errorf("the refused file was rewritten: %s", b)
			}
		})
	}

	// The same file: nothing to do.
	if err := os.WriteFile(l.ConfigFile(), good, 0o600); err != nil {
		t.Fatal(err)
	}
	if changed, err := s.Reload(nil, apply); err != nil || changed != nil || len(applied) != 0 || s.Get() != first {
		t.Fatalf("Reload(unchanged) = %v, %v (applied %v); want nothing", changed, err, applied)
	}
	// A parameter changed, one unset and one set: in force, applied.
	if err := os.WriteFile(l.ConfigFile(), []byte(strings.Replace(string(edit(`"pgshield.audit_fail_closed": "on"`, `"pgshield.audit_retention_days": "9"`)), `"50"`, `"70"`, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	var checked []string
	changed, err := s.Reload(func(next *config.Config, c []string) error { checked = c; return nil }, apply)
	want := []string{"pgshield.audit_fail_closed", "pgshield.audit_retention_days", "pgshield.max_connection_rate_per_ip"}
	if err != nil || !slices.Equal(changed, want) || !slices.Equal(checked, want) || len(applied) != 1 || !slices.Equal(applied[0], want) {
		t.Fatalf("Reload() = %v, %v (checked %v, applied %v); want %v", changed, err, checked, applied, want)
	}
	p := s.Params()
	if p.Values["pgshield.max_connection_rate_per_ip"] != "70" || p.Values["pgshield.audit_retention_days"] != "9" || p.AuditFailClosed {
		t.Errorf("in force after the reload: %v", p.Values)
	}
	if first.Parameters["pgshield.max_connection_rate_per_ip"] != "50" {
		t.Errorf("the configuration before was mutated: %v", first.Parameters)
	}
}
