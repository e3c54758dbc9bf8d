package apitype

import "time"

// Certificate sources, as certificate show reports them.
const (
	// CertOwnCA: pgshield's own CA issues the server certificate and
	// renews it ahead of expiry.
	CertOwnCA = "own-ca"
	// CertUserSupplied: the user's files (certificate rotate --cert/--key
	// or init --tls-cert/--tls-key); expiry raises an alert, and SIGHUP
	// reloads them.
	CertUserSupplied = "user-supplied"
)

// CertificateDetails describes one certificate.
type CertificateDetails struct {
	Subject     string    `json:"subject"`
	Issuer      string    `json:"issuer"`
	DNSNames    []string  `json:"dns_names,omitempty"`
	IPAddresses []string  `json:"ip_addresses,omitempty"`
	Serial      string    `json:"serial"`
	NotBefore   time.Time `json:"not_before"`
	NotAfter    time.Time `json:"not_after"`
	// SHA256 is the fingerprint of the DER, colon-separated hex.
	SHA256 string `json:"sha256_fingerprint"`
	IsCA   bool   `json:"is_ca,omitempty"`
}

// CertificateInfo is the answer of GET /v1/certificate and of the rotate
// and rollover routes.
type CertificateInfo struct {
	Source   string `json:"source"` // CertOwnCA or CertUserSupplied
	CertFile string `json:"cert_file"`
	KeyFile  string `json:"key_file"`
	// CAFile is what connection-string names as sslrootcert; empty: the
	// system's roots.
	CAFile string             `json:"ca_file,omitempty"`
	Server CertificateDetails `json:"server"`
	// Chain is what the gateway sends after the leaf.
	Chain []CertificateDetails `json:"chain,omitempty"`
	// CABundle is every CA in CAFile: during a CA rollover the old and
	// the new one.
	CABundle []CertificateDetails `json:"ca_bundle,omitempty"`
	// Rollover is set while a CA rollover is in its transition.
	Rollover bool `json:"ca_rollover,omitempty"`
	// RenewAt is when the own CA's certificate is renewed.
	RenewAt *time.Time `json:"renew_at,omitempty"`
	// LoadedAt is when the gateway took the certificate it presents.
	LoadedAt time.Time `json:"loaded_at"`
}

// CertificateRotateRequest is the body of POST /v1/certificate/rotate:
// nothing for a new key and certificate from the own CA; CA for a CA
// rollover's start; CertFile and KeyFile (absolute paths the daemon reads)
// for the user's own certificate, with CAFile the CA bundle clients verify
// it with (empty: the system's roots).
type CertificateRotateRequest struct {
	CA       bool   `json:"ca,omitempty"`
	CertFile string `json:"cert_file,omitempty"`
	KeyFile  string `json:"key_file,omitempty"`
	CAFile   string `json:"ca_file,omitempty"`
}
