package params

import (
	"strings"
	"testing"
)

// A hand edit may not change what only `parameter set` can check and
// apply (nftables, pgshield_guard's settings, a listening socket).
func TestCheckReload(t *testing.T) {
	if err := CheckReload(nil, []string{"pgshield.max_connection_rate_per_ip", "pgshield.audit_fail_closed"}); err != nil {
		t.Errorf("CheckReload(plain parameters) = %v; want nil", err)
	}
	for _, n := range []string{"pgshield.kernel_firewall", "pgshield.trusted_proxies", "pgshield.allowed_extensions", "pgshield.metrics_listen"} {
		if err := CheckReload(nil, []string{"pgshield.audit_fail_closed", n}); err == nil || !strings.Contains(err.Error(), n) ||
			!strings.Contains(err.Error(), "parameter set") {
			t.Errorf("CheckReload(%s) = %v; want it refused, pointing to parameter set", n, err)
		}
	}
}
