package oidc

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

// maxDocumentLen bounds any response read from the issuer (go-oidc reads
// the discovery document whole).
const maxDocumentLen = 1 << 20

// NewHTTPClient makes the client that talks to the issuer: HTTPS only, TLS
// 1.2 or later, the system's roots plus those in caFile (if set), bounded
// in time and in response size, no redirects off HTTPS.
func NewHTTPClient(caFile string) (*http.Client, error) {
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("pgshield.oidc_ca_file: %w", err)
		}
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("pgshield.oidc_ca_file: %s holds no PEM certificate", caFile)
		}
	}
	tr := &http.Transport{
		TLSClientConfig:       &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   5 * time.Second,
		ResponseHeaderTimeout: 5 * time.Second,
		MaxIdleConns:          2,
		IdleConnTimeout:       time.Minute,
		Proxy:                 http.ProxyFromEnvironment,
	}
	return &http.Client{
		Timeout:   10 * time.Second,
		Transport: limitedTransport{tr},
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if req.URL.Scheme != "https" || len(via) >= 3 {
				return errors.New("redirect refused")
			}
			return nil
		},
	}, nil
}

type limitedTransport struct{ rt http.RoundTripper }

func (t limitedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "https" {
		return nil, errors.New("the issuer must be reached over https")
	}
	resp, err := t.rt.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	resp.Body = limitedBody{io.LimitReader(resp.Body, maxDocumentLen), resp.Body}
	return resp, nil
}

type limitedBody struct {
	io.Reader
	io.Closer
}
