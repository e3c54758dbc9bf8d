package mgmt

import (
	"net/http"

	"github.com/pgshield/pgshield/internal/apitype"
)

// CertificateBackend is the server certificate's part of Backend
// (internal/ctl/certs).
type CertificateBackend interface {
	Certificate() apitype.CertificateInfo
	RotateCertificate(req apitype.CertificateRotateRequest) (apitype.CertificateInfo, error)
	FinishCARollover() (apitype.CertificateInfo, error)
}

// certificateRoutes are certificate show, rotate and rollover finish.
func certificateRoutes(b CertificateBackend) []Route {
	return []Route{
		{Method: "GET", Pattern: "/v1/certificate", Permission: PermitRead, Handler: func(*http.Request) (any, error) { return b.Certificate(), nil }},
		{Method: "POST", Pattern: "/v1/certificate/rotate", Permission: PermitWrite, Handler: func(r *http.Request) (any, error) {
			var req apitype.CertificateRotateRequest
			if err := decodeOptionalBody(r, &req); err != nil {
				return nil, err
			}
			return b.RotateCertificate(req)
		}},
		{Method: "POST", Pattern: "/v1/certificate/rollover/finish", Permission: PermitWrite, Handler: func(*http.Request) (any, error) {
			return b.FinishCARollover()
		}},
	}
}
