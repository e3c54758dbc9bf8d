package certs

import (
	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/health"
)

// Health reports certificate_expiring while the certificate in force is
// within health.CertWarnBefore of its expiry (the own CA renews it before
// then, unless renewal fails) or past it.
func (c *Controller) Health() []apitype.HealthCondition {
	cur := c.Current()
	if cur == nil {
		return nil
	}
	return health.Certificate(cur.TLS.Leaf, c.cfg.Now())
}
