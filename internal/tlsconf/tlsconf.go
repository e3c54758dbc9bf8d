// Package tlsconf makes the gateway's certificates (a private CA and an
// ECDSA P-256 server certificate) and its server tls.Config.
package tlsconf

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"slices"
	"time"

	"github.com/xdg-go/scram"
)

// ALPN is the protocol name PostgreSQL 17 clients send for direct TLS.
const ALPN = "postgresql"

// GenerateCA writes a new private CA (certificate 0644, key 0600).
func GenerateCA(certPath, keyPath, commonName string) error {
	ca, key, err := NewCA(commonName, time.Now())
	if err != nil {
		return err
	}
	return writePair(certPath, keyPath, [][]byte{ca.Raw}, key)
}

// GenerateServer issues a server certificate signed by the CA for the given
// hosts (DNS names or IP addresses).
func GenerateServer(caCertPath, caKeyPath, certPath, keyPath string, hosts []string) error {
	caPair, err := tls.LoadX509KeyPair(caCertPath, caKeyPath)
	if err != nil {
		return fmt.Errorf("loading CA: %w", err)
	}
	caCert, err := x509.ParseCertificate(caPair.Certificate[0])
	if err != nil {
		return err
	}
	signer, ok := caPair.PrivateKey.(crypto.Signer)
	if !ok {
		return errors.New("CA key cannot sign")
	}
	certPEM, keyPEM, err := IssueServer(caCert, signer, hosts, time.Now())
	if err != nil {
		return err
	}
	if err := os.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		return err
	}
	return os.WriteFile(certPath, certPEM, 0o644)
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return n
}

func writePair(certPath, keyPath string, ders [][]byte, key *ecdsa.PrivateKey) error {
	var certPEM []byte
	for _, d := range ders {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: d})...)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb})
	if err := os.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		return err
	}
	return os.WriteFile(certPath, certPEM, 0o644)
}

// Cert is a loaded server certificate with its channel-binding data.
type Cert struct {
	TLS tls.Certificate
	// EndPoint is the tls-server-end-point channel binding (RFC 5929) of
	// the leaf certificate the gateway presents.
	EndPoint scram.ChannelBinding
}

// LoadCert reads a certificate chain and key and computes the binding.
func LoadCert(certPath, keyPath string) (*Cert, error) {
	pair, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return nil, fmt.Errorf("loading server certificate: %w", err)
	}
	if len(pair.Certificate) == 0 {
		return nil, errors.New("server certificate file holds no certificate")
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, err
	}
	pair.Leaf = leaf
	// The library computes the binding from a peer's view of the chain; the
	// gateway's own leaf is exactly what the client sees as its peer.
	cb, err := scram.NewTLSServerEndpointBinding(&tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}})
	if err != nil {
		return nil, fmt.Errorf("channel binding for server certificate: %w", err)
	}
	return &Cert{TLS: pair, EndPoint: cb}, nil
}

// aeadSuites are the TLS 1.2 suites allowed: ECDHE key exchange and AEAD
// only (no CBC, no SHA-1 MACs, no static RSA, no DHE). TLS 1.3 suites are
// all AEAD and not configurable in Go.
var aeadSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// ServerConfig builds the gateway's tls.Config for the given version bounds
// (maxVersion 0 means the highest Go supports).
//
// TLS 1.3 session resumption is on: a client that keeps its session ticket
// (pgx with a ClientSessionCache, JDBC, .NET) skips the certificate and its
// signature on the next connection; libpq keeps none and always does a full
// handshake. It weakens nothing the gateway relies on:
//   - Go's server accepts only psk_dhe_ke: a resumed session still does a
//     fresh ECDHE exchange, so its traffic stays forward-secret even if a
//     ticket key leaks. There is no 0-RTT data (Go's server never accepts
//     early data), so nothing can be replayed.
//   - The ticket keys are random, in memory only, made per Config and
//     rotated by crypto/tls (a new key every 24 h, none older than 7 days;
//     tickets live at most 7 days). The gateway builds a new Config, hence
//     new keys, at every parameter change, so a change of the TLS version
//     bounds, or a restart (with a new certificate), invalidates every
//     ticket, as does a certificate rotation.
//   - Authentication is not carried over: every session, resumed or not,
//     logs in again with SCRAM or a token; no client certificates are used.
//     SCRAM-SHA-256-PLUS binds to the gateway's certificate
//     (tls-server-end-point), which a resuming client still holds from its
//     session and which cannot have changed while the ticket keys lived:
//     a certificate rotation builds a new Config (gateway.SetCert), hence
//     new ticket keys, so a resumed session always saw the certificate
//     the binding is computed over.
//
// TLS 1.2 gets no tickets: its ticket wraps the session's master secret
// itself, so a leaked ticket key would decrypt recorded TLS 1.2 sessions.
func ServerConfig(c *Cert, minVersion, maxVersion uint16) *tls.Config {
	cfg := &tls.Config{
		Certificates:     []tls.Certificate{c.TLS},
		MinVersion:       minVersion,
		MaxVersion:       maxVersion,
		CipherSuites:     aeadSuites,
		CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384},
		NextProtos:       []string{ALPN},
	}
	if maxVersion != 0 && maxVersion < tls.VersionTLS13 {
		cfg.SessionTicketsDisabled = true
		return cfg
	}
	noTickets := cfg.Clone()
	noTickets.SessionTicketsDisabled = true
	cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		if slices.Contains(hello.SupportedVersions, tls.VersionTLS13) {
			return nil, nil // TLS 1.3 will be negotiated: tickets as above
		}
		return noTickets, nil
	}
	return cfg
}
