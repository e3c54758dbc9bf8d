package patroni

import (
	"testing"

	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/postgres"
)

// pgshield's real managed settings, with administrator names that need
// quoting, become Patroni parameters with the values PostgreSQL would read.
func TestManagedConfRoundTrip(t *testing.T) {
	c := &postgres.Cluster{Layout: config.Layout{Root: "/var/lib/pgshield"}, Cfg: &config.Config{
		AdminUser: "pgadmin", ServiceRole: config.DefaultServiceRole, PGPort: 5432,
		AdminPrincipals: []string{"O'Brien", `back\slash`, "a,b", "Ünïcødé 管理者", `say "hi"`},
	}}
	params, err := ParseConf(c.ManagedConf())
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range c.GuardValues() {
		if params[g.Name] != g.Value {
			t.Errorf("%s = %q, want %q", g.Name, params[g.Name], g.Value)
		}
	}
	for _, name := range []string{"listen_addresses", "shared_preload_libraries", "archive_command", "log_destination", "password_encryption"} {
		if _, ok := params[name]; !ok {
			t.Errorf("%s missing from the managed settings", name)
		}
		if !postgres.ProtectedParameter(name) {
			t.Errorf("%s is not protected", name)
		}
	}
	if params["listen_addresses"] != "" {
		t.Errorf("listen_addresses = %q", params["listen_addresses"])
	}
	s := settings(t)
	s.Managed = params
	s.SocketDir = c.Layout.SocketDir()
	if _, err := Generate(s); err != nil {
		t.Fatalf("Generate with the real managed settings: %v", err)
	}
}
