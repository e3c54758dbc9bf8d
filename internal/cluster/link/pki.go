package link

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/tlsconf"
)

// nodeSuffix is the name convention that makes a certificate a node's:
// its one DNS name is <node>.node.pgshield.invalid. `cluster init` makes
// the node CA apart from etcd's CAs; where one CA issues both (material
// made by hand), etcd's certificates (IP addresses only, or no name at
// all) carry no name under this suffix, so none can stand in for a node
// on the link. ".invalid" is reserved (RFC 6761): no real host can ever be
// confused with a node.
const nodeSuffix = ".node.pgshield.invalid"

var nodeNameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)

// NodeDNSName is the one DNS name in node name's link certificate.
func NodeDNSName(name string) string { return name + nodeSuffix }

// ValidNodeName reports whether name may name a node.
func ValidNodeName(name string) bool { return nodeNameRE.MatchString(name) }

// IssueNode writes a link certificate and key for node name, signed by the
// cluster CA (caCert, caKey: PEM files), to certPath and keyPath (0600; their
// directory is made 0700). The certificate serves and authenticates clients
// (both ends of the link are nodes) and names only NodeDNSName(name).
func IssueNode(caCertPath, caKeyPath, name, certPath, keyPath string, now time.Time) error {
	if !ValidNodeName(name) {
		return fmt.Errorf("node name %q: want lower-case letters, digits and '-'", name)
	}
	caPEM, err := os.ReadFile(caCertPath)
	if err != nil {
		return err
	}
	cas, err := tlsconf.ParseCerts(caPEM)
	if err != nil {
		return fmt.Errorf("cluster CA: %w", err)
	}
	ca := cas[0]
	keyPEM, err := tlsconf.ReadKeyFile(caKeyPath, 1<<16)
	if err != nil {
		return fmt.Errorf("cluster CA key: %w", err)
	}
	caKey, err := tlsconf.ParseKey(keyPEM)
	if err != nil {
		return fmt.Errorf("cluster CA key: %w", err)
	}
	if !tlsconf.SameKey(ca.PublicKey, caKey) {
		return fmt.Errorf("cluster CA: %w", tlsconf.ErrMismatch)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "pgshield node " + name, Organization: []string{"pgshield"}},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    []string{NodeDNSName(name)},
	}
	certPEM, kp, err := tlsconf.IssueLeaf(tmpl, ca, caKey, now)
	if err != nil {
		return err
	}
	return config.WriteKeyPair(certPath, keyPath, certPEM, kp)
}

// Identity is this node's side of the link: its name, certificate and the
// cluster CA it trusts for peers.
type Identity struct {
	Name  string
	cert  tls.Certificate
	roots *x509.CertPool
}

// LoadIdentity reads node name's certificate and key and the cluster CA.
// The certificate must be a node certificate for name.
func LoadIdentity(name, caCertPath, certPath, keyPath string) (*Identity, error) {
	if !ValidNodeName(name) {
		return nil, fmt.Errorf("node name %q: want lower-case letters, digits and '-'", name)
	}
	caPEM, err := os.ReadFile(caCertPath)
	if err != nil {
		return nil, err
	}
	cas, err := tlsconf.ParseCerts(caPEM)
	if err != nil {
		return nil, fmt.Errorf("cluster CA: %w", err)
	}
	roots := x509.NewCertPool()
	for _, c := range cas {
		roots.AddCert(c)
	}
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, err
	}
	keyPEM, err := tlsconf.ReadKeyFile(keyPath, 1<<16)
	if err != nil {
		return nil, err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("node certificate: %w", err)
	}
	if got, err := nodeName(pair.Leaf); err != nil || got != name {
		return nil, fmt.Errorf("node certificate %s is not node %s's (%v)", certPath, name, err)
	}
	return &Identity{Name: name, cert: pair, roots: roots}, nil
}

// errNotNode is a peer certificate without a node name.
var errNotNode = errors.New("not a pgshield node certificate")

// nodeName is the node a verified certificate names: exactly one DNS name,
// under nodeSuffix, no IP address, e-mail or URI name.
func nodeName(c *x509.Certificate) (string, error) {
	if c == nil || len(c.DNSNames) != 1 || len(c.IPAddresses)+len(c.EmailAddresses)+len(c.URIs) != 0 {
		return "", errNotNode
	}
	n, ok := strings.CutSuffix(c.DNSNames[0], nodeSuffix)
	if !ok || !ValidNodeName(n) {
		return "", errNotNode
	}
	return n, nil
}

// ALPN protocols: which service a link connection is for.
const (
	// ProtoPostgres carries a PostgreSQL connection (replication, base
	// backup, rewind) to the receiving node's socket.
	ProtoPostgres = "pgshield-link-pg/1"
	// ProtoREST carries HTTP to the receiving node's Patroni REST API.
	ProtoREST = "pgshield-link-rest/1"
	// ProtoSecrets is a joining node asking a peer for the cluster's
	// secrets (Config.Secrets), once, at `init --ha`.
	ProtoSecrets = "pgshield-link-secrets/1"
)

// serverConfig accepts TLS 1.3 only from a node certificate of the cluster
// CA whose name is in allowed.
func (id *Identity) serverConfig(allowed map[string]bool) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    id.roots,
		NextProtos:   []string{ProtoPostgres, ProtoREST, ProtoSecrets},
		// Runs after the chain is verified against the cluster CA for
		// client authentication: pins the peer to a known node.
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.VerifiedChains) == 0 {
				return errNotNode
			}
			n, err := nodeName(cs.VerifiedChains[0][0])
			if err != nil {
				return err
			}
			if !allowed[n] {
				return fmt.Errorf("node %q is not a peer of this node", n)
			}
			return nil
		},
	}
}

// clientConfig dials peer only: Go verifies the chain against the cluster
// CA and the name against peer's node name (ServerName), so a certificate
// of another node, or an etcd member's, is refused.
func (id *Identity) clientConfig(peer, proto string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.cert},
		RootCAs:      id.roots,
		ServerName:   NodeDNSName(peer),
		NextProtos:   []string{proto},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.VerifiedChains) == 0 {
				return errNotNode
			}
			if n, err := nodeName(cs.VerifiedChains[0][0]); err != nil || n != peer {
				return fmt.Errorf("peer certificate is not node %s's", peer)
			}
			if cs.NegotiatedProtocol != proto {
				return fmt.Errorf("peer %s did not agree to %s", peer, proto)
			}
			return nil
		},
	}
}

// PeerName is the node name of a completed server-side link connection.
func PeerName(cs tls.ConnectionState) string {
	if len(cs.VerifiedChains) == 0 {
		return ""
	}
	n, _ := nodeName(cs.VerifiedChains[0][0])
	return n
}
