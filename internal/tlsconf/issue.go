package tlsconf

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/xdg-go/scram"
)

// Lifetimes of what pgshield issues.
const (
	CALifetime     = 10 * 365 * 24 * time.Hour
	ServerLifetime = 2 * 365 * 24 * time.Hour
)

// ErrMismatch means a private key is not the certificate's.
var ErrMismatch = errors.New("the private key does not belong to the certificate")

// NewCA makes a private CA certificate and its key, valid from an hour
// before now (clock skew) for CALifetime. Its path length is 1, not 0, so
// that a CA rollover can cross-sign its successor (CrossSign); CAs made
// before had 0, and their rollovers go without (internal/ctl/certs).
func NewCA(commonName string, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"pgshield"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(CALifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	c, err := x509.ParseCertificate(der)
	return c, key, err
}

// CanCrossSign reports whether ca may issue an intermediate CA: its path
// length is unset or at least 1.
func CanCrossSign(ca *x509.Certificate) bool {
	return ca.IsCA && (ca.MaxPathLen < 0 || ca.MaxPathLen >= 1)
}

// CrossSign issues next's subject and key again, signed by prev: a client
// that trusts only prev verifies a certificate next issued through it.
// It ends no later than prev, and may issue end-entity certificates only.
func CrossSign(next, prev *x509.Certificate, prevKey crypto.Signer, now time.Time) (*x509.Certificate, error) {
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               next.Subject,
		SubjectKeyId:          next.SubjectKeyId, // what next's certificates name as their authority
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              prev.NotAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	if next.NotAfter.Before(tmpl.NotAfter) {
		tmpl.NotAfter = next.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, prev, next.PublicKey, prevKey)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// IssueServer makes a new key and a server certificate for hosts (DNS
// names or IP addresses; the first is the subject's CN) signed by ca. It
// never outlives the CA. It returns the PEM of the chain (leaf, then ca)
// and of the key (PKCS #8).
func IssueServer(ca *x509.Certificate, caKey crypto.Signer, hosts []string, now time.Time) (certPEM, keyPEM []byte, err error) {
	return IssueServerChain(ca, caKey, hosts, now, []*x509.Certificate{ca})
}

// IssueServerChain is IssueServer with the chain sent after the leaf given
// (a cross-signed CA instead of ca itself during a CA rollover).
func IssueServerChain(ca *x509.Certificate, caKey crypto.Signer, hosts []string, now time.Time, chain []*x509.Certificate) (certPEM, keyPEM []byte, err error) {
	if len(hosts) == 0 {
		return nil, nil, errors.New("server certificate needs at least one host name")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: hosts[0], Organization: []string{"pgshield"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(ServerLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if tmpl.NotAfter.After(ca.NotAfter) {
		tmpl.NotAfter = ca.NotAfter
	}
	seen := map[string]bool{}
	for _, h := range hosts {
		if h == "" || seen[h] {
			continue
		}
		seen[h] = true
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, err
	}
	certPEM = EncodeCert(der)
	for _, c := range chain {
		certPEM = append(certPEM, EncodeCert(c.Raw)...)
	}
	keyPEM, err = EncodeKey(key)
	return certPEM, keyPEM, err
}

// IssueLeaf signs, with caKey, a certificate for a new P-256 key from
// tmpl, which gives its subject, names and uses: the serial number is set
// here, and the validity, when tmpl leaves it unset, is an hour back to
// ServerLifetime ahead, always within ca's. Both come back in PEM.
func IssueLeaf(tmpl, ca *x509.Certificate, caKey crypto.Signer, now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	t := *tmpl
	t.SerialNumber = randomSerial()
	if t.NotBefore.IsZero() {
		t.NotBefore = now.Add(-time.Hour)
	}
	if t.NotAfter.IsZero() {
		t.NotAfter = now.Add(ServerLifetime)
	}
	if t.NotAfter.After(ca.NotAfter) {
		t.NotAfter = ca.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, &t, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err = EncodeKey(key)
	return EncodeCert(der), keyPEM, err
}

// Hosts are the names a server certificate is for, its CN first: what a
// renewal issues the next one for.
func Hosts(leaf *x509.Certificate) []string {
	hosts := []string{leaf.Subject.CommonName}
	hosts = append(hosts, leaf.DNSNames...)
	for _, ip := range leaf.IPAddresses {
		hosts = append(hosts, ip.String())
	}
	return hosts
}

// EncodeCert is one certificate in PEM.
func EncodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// EncodeKey is a private key in PKCS #8 PEM.
func EncodeKey(key crypto.Signer) ([]byte, error) {
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), nil
}

// ParseCerts reads every CERTIFICATE block of a PEM file (a CA bundle).
func ParseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no certificate in the file")
	}
	return out, nil
}

// ParseKey reads a PEM private key (PKCS #8, PKCS #1 or SEC 1).
func ParseKey(b []byte) (crypto.Signer, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("no PEM private key")
	}
	if k, err := x509.ParsePKCS8PrivateKey(blk.Bytes); err == nil {
		if s, ok := k.(crypto.Signer); ok {
			return s, nil
		}
		return nil, errors.New("unsupported private key type")
	}
	if k, err := x509.ParseECPrivateKey(blk.Bytes); err == nil {
		return k, nil
	}
	if k, err := x509.ParsePKCS1PrivateKey(blk.Bytes); err == nil {
		return k, nil
	}
	// Never the key's bytes in the error: it is a secret even when broken.
	return nil, errors.New("the private key cannot be parsed")
}

// SameKey reports whether pub is key's public half.
func SameKey(pub crypto.PublicKey, key crypto.Signer) bool {
	k, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(pub)
}

// ParsePair makes a Cert of a PEM chain and key. A key that is not the
// leaf's is ErrMismatch. It does not check validity: see CheckServing.
func ParsePair(certPEM, keyPEM []byte) (*Cert, error) {
	chain, err := ParseCerts(certPEM)
	if err != nil {
		return nil, fmt.Errorf("server certificate: %w", err)
	}
	key, err := ParseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("server key: %w", err)
	}
	if !SameKey(chain[0].PublicKey, key) {
		return nil, ErrMismatch
	}
	pair := tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		pair.Certificate = append(pair.Certificate, c.Raw)
	}
	cb, err := scram.NewTLSServerEndpointBinding(&tls.ConnectionState{PeerCertificates: []*x509.Certificate{chain[0]}})
	if err != nil {
		return nil, fmt.Errorf("channel binding for server certificate: %w", err)
	}
	return &Cert{TLS: pair, EndPoint: cb}, nil
}

// CheckServing refuses a leaf a client would refuse: not yet valid,
// expired, a CA, or not for server authentication.
func CheckServing(leaf *x509.Certificate, now time.Time) error {
	switch {
	case now.Before(leaf.NotBefore):
		return fmt.Errorf("the certificate is not valid before %s", leaf.NotBefore.UTC().Format(time.RFC3339))
	case !now.Before(leaf.NotAfter):
		return fmt.Errorf("the certificate expired at %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	case leaf.IsCA:
		return errors.New("the certificate is a CA certificate, not a server certificate")
	case len(leaf.DNSNames) == 0 && len(leaf.IPAddresses) == 0:
		return errors.New("the certificate names no host (no DNS or IP subject alternative name)")
	}
	if len(leaf.ExtKeyUsage) > 0 {
		ok := false
		for _, u := range leaf.ExtKeyUsage {
			ok = ok || u == x509.ExtKeyUsageServerAuth || u == x509.ExtKeyUsageAny
		}
		if !ok {
			return errors.New("the certificate is not for server authentication (extended key usage)")
		}
	}
	return nil
}

// CheckKeyFile refuses a private key file anyone but this process's user
// could read or replace: it must be a regular file of mode 0600 or
// narrower in a directory of mode 0700 or narrower, both owned by that
// user (symbolic links, as certbot's live/ directory has, are followed to
// the file they name), on a path no one else can change (ReadKeyFile).
func CheckKeyFile(path string) error {
	_, err := ReadKeyFile(path, 1<<20)
	return err
}

// checkOwner requires fi to belong to this process's user: another user
// could chmod it wider, or swap the key, behind pgshield's back.
func checkOwner(path string, fi fs.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if euid := os.Geteuid(); int(st.Uid) != euid {
		return fmt.Errorf("%s is owned by uid %d, not by uid %d that pgshield runs as; refusing it", path, st.Uid, euid)
	}
	return nil
}

// Fingerprint is the SHA-256 of a certificate's DER, colon-separated hex
// as openssl x509 -fingerprint -sha256 prints it.
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	h := strings.ToUpper(hex.EncodeToString(sum[:]))
	var b bytes.Buffer
	for i := 0; i < len(h); i += 2 {
		if i > 0 {
			b.WriteByte(':')
		}
		b.WriteString(h[i : i+2])
	}
	return b.String()
}

// Leaf is the certificate the gateway presents.
func (c *Cert) Leaf() *x509.Certificate { return c.TLS.Leaf }
