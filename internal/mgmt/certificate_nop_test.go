package mgmt

import "github.com/pgshield/pgshield/internal/apitype"

// nopBackend's certificate methods (server_test.go has the rest).
func (nopBackend) Certificate() apitype.CertificateInfo { return apitype.CertificateInfo{} }
func (nopBackend) RotateCertificate(apitype.CertificateRotateRequest) (apitype.CertificateInfo, error) {
	return apitype.CertificateInfo{}, nil
}
func (nopBackend) FinishCARollover() (apitype.CertificateInfo, error) {
	return apitype.CertificateInfo{}, nil
}
