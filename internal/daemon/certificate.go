package daemon

import (
	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/ctl/certs"
	"github.com/pgshield/pgshield/internal/tlsconf"
)

// newCerts makes the server certificate's controller: it hands each new
// certificate to the gateway (once there is one) and raises its alerts
// through the alerts controller.
func (d *Daemon) newCerts() *certs.Controller {
	c := certs.New(certs.Config{Layout: d.Layout, Conf: d.conf, Log: d.Log.With("component", "certificates"),
		Audit: d.audit.Record, Alert: d.alerts.Raise,
		Apply: func(c *tlsconf.Cert) {
			if gw := d.gateway(); gw != nil {
				gw.SetCert(c)
			}
		}})
	d.metrics.Registry.MustRegister(c.Collectors()...)
	return c
}

// Certificate describes the server certificate (certificate show).
func (a api) Certificate() apitype.CertificateInfo { return a.d.certs.Info() }

// RotateCertificate replaces the server certificate, live.
func (a api) RotateCertificate(req apitype.CertificateRotateRequest) (apitype.CertificateInfo, error) {
	return a.d.certs.Rotate(req)
}

// FinishCARollover ends a CA rollover's transition.
func (a api) FinishCARollover() (apitype.CertificateInfo, error) { return a.d.certs.FinishRollover() }
