package apiclient

import (
	"context"

	"github.com/pgshield/pgshield/internal/apitype"
)

// Certificate describes the server certificate in force and the CA bundle.
func (c *Client) Certificate(ctx context.Context) (*apitype.CertificateInfo, error) {
	return call[apitype.CertificateInfo](ctx, c, "GET", "/v1/certificate", nil)
}

// RotateCertificate replaces the server certificate, live.
func (c *Client) RotateCertificate(ctx context.Context, req apitype.CertificateRotateRequest) (*apitype.CertificateInfo, error) {
	return call[apitype.CertificateInfo](ctx, c, "POST", "/v1/certificate/rotate", req)
}

// FinishCARollover ends a CA rollover's transition: the old CA is dropped.
func (c *Client) FinishCARollover(ctx context.Context) (*apitype.CertificateInfo, error) {
	return call[apitype.CertificateInfo](ctx, c, "POST", "/v1/certificate/rollover/finish", nil)
}
