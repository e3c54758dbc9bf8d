package config

import (
	"errors"
	"time"
)

// certParams are the parameters of the server certificate's controller
// (internal/ctl/certs, README "Certificates"). They join the table at
// init, as alertParams do.
var certParams = []Param{
	{Name: "pgshield.certificate_renew_before", Default: "720h0m0s", Check: checkRenewBefore,
		Description: "How long before its expiry the server certificate of pgshield's own CA is renewed (a user-supplied certificate raises alert.certificate_expiring instead: Medium from then, High in its last 7 days)."},
}

func init() { gatewayParams = append(gatewayParams, certParams...) }

// checkRenewBefore keeps the lead time shorter than what pgshield issues
// (two years), or every check would renew again.
func checkRenewBefore(v string) (string, error) {
	d, err := time.ParseDuration(v)
	if err != nil || d < time.Hour || d > 365*24*time.Hour {
		return "", errors.New("use a duration from 1h to 8760h (a year), such as 720h (30 days)")
	}
	return d.String(), nil
}

// CertificateRenewBefore is pgshield.certificate_renew_before.
func (p Params) CertificateRenewBefore() time.Duration {
	d, _ := time.ParseDuration(p.Values["pgshield.certificate_renew_before"])
	return d
}
