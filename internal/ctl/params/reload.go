package params

import (
	"fmt"
	"strings"

	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/config"
)

// notReloadable are pgshield's parameters whose change does more than
// hand the new values over (nftables, pgshield_guard's settings in
// PostgreSQL, a listening socket), each checked by SetParameter before it
// is saved: a hand edit of pgshield.json cannot take that path, so a
// reload refuses them.
var notReloadable = map[string]bool{
	"pgshield.kernel_firewall":    true,
	"pgshield.trusted_proxies":    true,
	"pgshield.allowed_extensions": true,
	"pgshield.metrics_listen":     true,
}

// CheckReload refuses a reload of pgshield.json that changes a parameter
// only `pgshield parameter set` can apply. next was validated whole by
// config.Load.
func CheckReload(_ *config.Config, changed []string) error {
	var refused []string
	for _, n := range changed {
		if notReloadable[n] {
			refused = append(refused, n)
		}
	}
	if len(refused) > 0 {
		return fmt.Errorf("%s changed: apply with 'pgshield parameter set' (it checks what the change does before saving it)", strings.Join(refused, ", "))
	}
	return nil
}

// Reloaded hands the parameters a reload of pgshield.json changed to the
// parts that use them, as SetParameter does after it saves one.
func (c *Controller) Reloaded(changed []string) {
	p := c.c.Conf.Params()
	for _, n := range changed {
		c.c.Apply(n, p)
		c.c.Log.Info("Parameter changed by a configuration reload.", "name", n, "value", p.Values[n])
		c.c.Audit(audit.Event{Type: "parameter.set", Outcome: audit.OutcomeSuccess,
			Fields: map[string]any{"name": n, "value": p.Values[n], "by": "reload"}})
	}
}

// CheckReloadCluster is CheckReload on a cluster node, where a shared
// parameter changed by hand in one node's file would differ from the
// cluster's without anyone knowing: it is refused too.
func CheckReloadCluster(next *config.Config, changed []string) error {
	if err := CheckReload(next, changed); err != nil {
		return err
	}
	var refused []string
	for _, n := range changed {
		if Shared(n) {
			refused = append(refused, n)
		}
	}
	if len(refused) > 0 {
		return fmt.Errorf("%s changed: on a cluster node it is the cluster's: apply with 'pgshield parameter set' on the primary", strings.Join(refused, ", "))
	}
	return nil
}
