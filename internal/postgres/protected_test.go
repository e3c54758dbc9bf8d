package postgres

import "testing"

// pgaudit.role is what makes pgaudit log decoy tables: the operator's
// `parameter set` may not change it (internal/ctl/params refuses managed
// names), in any case.
func TestProtectedParameterPgauditRole(t *testing.T) {
	for _, n := range []string{"pgaudit.role", "PGAUDIT.ROLE", "listen_addresses", "pgshield_guard.admin_roles"} {
		if !ProtectedParameter(n) {
			t.Errorf("%s is not protected", n)
		}
	}
	for _, n := range []string{"pgaudit.log", "work_mem"} {
		if ProtectedParameter(n) {
			t.Errorf("%s is protected; the operator may set it", n)
		}
	}
}
