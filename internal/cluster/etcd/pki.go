// Package etcd generates the configuration of the 3-member etcd cluster
// that decides who leads a pgshield high-availability cluster, and runs an
// etcd member as a supervised child process. Peers and clients speak TLS
// only and must present a certificate from the cluster's own CAs, one for
// clients and one for peers (--client-cert-auth, --peer-client-cert-auth,
// --peer-cert-allowed-cn; see PKI). See internal/cluster for
// the plan this is the first part of; nothing in the daemon uses it yet.
package etcd

import (
	"crypto/ecdsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/tlsconf"
)

// Ports every member listens on, on its own address only.
const (
	ClientPort = 2379
	PeerPort   = 2380
)

// Member is one etcd member: a name and the address it listens on.
type Member struct {
	Name string
	IP   net.IP
}

// Cluster is the members of one etcd cluster and the token that keeps
// members of another cluster from joining it by mistake.
type Cluster struct {
	Token   string
	Members []Member
}

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)

// Validate refuses a cluster that is not exactly three distinct, well-named
// members: etcd needs a majority, and three members survive the loss of one.
func (c Cluster) Validate() error {
	if !nameRE.MatchString(c.Token) {
		return fmt.Errorf("etcd cluster token %q: want lower-case letters, digits and '-'", c.Token)
	}
	if len(c.Members) != 3 {
		return fmt.Errorf("an etcd cluster has 3 members here, not %d", len(c.Members))
	}
	names, ips := map[string]bool{}, map[string]bool{}
	for _, m := range c.Members {
		if !nameRE.MatchString(m.Name) {
			return fmt.Errorf("etcd member name %q: want lower-case letters, digits and '-'", m.Name)
		}
		if m.IP == nil || m.IP.IsUnspecified() || m.IP.IsLoopback() {
			return fmt.Errorf("etcd member %s: needs a routable address of its own", m.Name)
		}
		if names[m.Name] || ips[m.IP.String()] {
			return fmt.Errorf("etcd member %s: name or address used twice", m.Name)
		}
		names[m.Name], ips[m.IP.String()] = true, true
	}
	return nil
}

// Member returns the member named name.
func (c Cluster) Member(name string) (Member, bool) {
	for _, m := range c.Members {
		if m.Name == name {
			return m, true
		}
	}
	return Member{}, false
}

// PeerCN is the common name of every member's peer certificate. Members
// run with --peer-cert-allowed-cn set to it, so a certificate that chains
// to the peer CA but was issued for anything else is refused on the peer
// port. etcd 3.4 takes one name here, not one per member; what binds a
// peer certificate to its member is its IP address (see PKI).
const PeerCN = "pgshield-etcd-peer"

// PKI is where a cluster's certificates live, under two CAs that never
// sign for each other's port:
//
//   - the client CA (ca.crt, ca.key) signs the client certificate pgshield
//     and Patroni use and each member's certificate for its client port.
//     Members trust only it on the client port (--trusted-ca-file).
//   - the peer CA (peer-ca.crt, peer-ca.key) signs only the members' peer
//     certificates (CN PeerCN, the member's address as the only name).
//     Members trust only it on the peer port (--peer-trusted-ca-file).
//
// So the client certificate, which every node's Patroni holds, can never
// act as a member (it does not chain to the peer CA, nor carry PeerCN), and
// a member's peer certificate is no client. A peer certificate is pinned
// to its member's address: etcd 3.4 refuses a peer whose certificate has
// IP SANs none of which is the connection's source address (its
// "checkSAN"), and a member dialing a peer checks the address it dialed
// against the peer's certificate. So one member's certificate cannot be
// used from another's address, or be taken for another member's.
//
// Each member has a 0700 directory; every file is 0600.
type PKI struct{ Dir string }

// CACert is the client CA's certificate: what clients verify members'
// client ports against, and what members verify clients against.
func (p PKI) CACert() string { return filepath.Join(p.Dir, "ca.crt") }
func (p PKI) caKey() string  { return filepath.Join(p.Dir, "ca.key") }

// PeerCACert is the peer CA's certificate, trusted on peer ports only.
func (p PKI) PeerCACert() string { return filepath.Join(p.Dir, "peer-ca.crt") }
func (p PKI) peerCAKey() string  { return filepath.Join(p.Dir, "peer-ca.key") }

func (p PKI) memberDir(n string) string { return filepath.Join(p.Dir, "member-"+n) }

// ServerCert and ServerKey are member n's certificate for its client
// port (client CA).
func (p PKI) ServerCert(n string) string { return filepath.Join(p.memberDir(n), "server.crt") }
func (p PKI) ServerKey(n string) string  { return filepath.Join(p.memberDir(n), "server.key") }

// PeerCert and PeerKey are member n's certificate for its peer port and
// for dialing other members (peer CA).
func (p PKI) PeerCert(n string) string { return filepath.Join(p.memberDir(n), "peer.crt") }
func (p PKI) PeerKey(n string) string  { return filepath.Join(p.memberDir(n), "peer.key") }

// ClientCert and ClientKey are the certificate pgshield (and Patroni) use
// to talk to etcd.
func (p PKI) ClientCert() string { return filepath.Join(p.Dir, "client", "client.crt") }
func (p PKI) ClientKey() string  { return filepath.Join(p.Dir, "client", "client.key") }

// Generate makes the cluster's two CAs, a client-port and a peer
// certificate per member and one client certificate. Keys are ECDSA P-256
// like the rest of pgshield's, files 0600 in 0700 directories. An existing
// CA is never replaced: Generate refuses a Dir that holds one.
func (p PKI) Generate(c Cluster, now time.Time) error {
	if err := c.Validate(); err != nil {
		return err
	}
	for _, f := range []string{p.CACert(), p.PeerCACert()} {
		if _, err := os.Stat(f); err == nil {
			return fmt.Errorf("%s already holds an etcd CA; refusing to replace it", p.Dir)
		}
	}
	if err := os.MkdirAll(p.Dir, 0o700); err != nil {
		return err
	}
	if err := os.Chmod(p.Dir, 0o700); err != nil {
		return err
	}
	ca, caKey, err := p.newCA("pgshield etcd client CA "+c.Token, p.caKey(), now)
	if err != nil {
		return err
	}
	peerCA, peerCAKey, err := p.newCA("pgshield etcd peer CA "+c.Token, p.peerCAKey(), now)
	if err != nil {
		return err
	}
	for _, m := range c.Members {
		ips := []net.IP{m.IP}
		// The client port's certificate also authenticates as a client:
		// etcd 3.4's JSON gateway dials the member's own gRPC port with it,
		// and --client-cert-auth asks it for one.
		if err := p.issue(ca, caKey, leafSpec{CN: m.Name, IPs: ips, Server: true}, p.ServerCert(m.Name), p.ServerKey(m.Name), now); err != nil {
			return err
		}
		if err := p.issue(peerCA, peerCAKey, leafSpec{CN: PeerCN, OU: m.Name, IPs: ips, Server: true}, p.PeerCert(m.Name), p.PeerKey(m.Name), now); err != nil {
			return err
		}
	}
	// No IP or name: a client only, usable from any node.
	if err := p.issue(ca, caKey, leafSpec{CN: "pgshield"}, p.ClientCert(), p.ClientKey(), now); err != nil {
		return err
	}
	// The CA certificates last, the client CA's the very last: its
	// presence says the directory is complete.
	if err := config.WriteFileAtomic(p.PeerCACert(), tlsconf.EncodeCert(peerCA.Raw), 0o600); err != nil {
		return err
	}
	return config.WriteFileAtomic(p.CACert(), tlsconf.EncodeCert(ca.Raw), 0o600)
}

func (p PKI) newCA(cn, keyPath string, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	ca, key, err := tlsconf.NewCA(cn, now)
	if err != nil {
		return nil, nil, err
	}
	pem, err := tlsconf.EncodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	if err := config.WriteFileAtomic(keyPath, pem, 0o600); err != nil {
		return nil, nil, err
	}
	return ca, key, nil
}

// leafSpec describes a certificate to issue.
type leafSpec struct {
	CN  string
	OU  string // the member's name on a peer certificate, for people reading it
	IPs []net.IP
	// Server adds server authentication to client authentication.
	Server bool
}

// issue writes leaf, signed by ca, to certPath and keyPath.
func (p PKI) issue(ca *x509.Certificate, caKey *ecdsa.PrivateKey, leaf leafSpec, certPath, keyPath string, now time.Time) error {
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: leaf.CN, Organization: []string{"pgshield"}},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		IPAddresses: leaf.IPs,
	}
	if leaf.OU != "" {
		tmpl.Subject.OrganizationalUnit = []string{leaf.OU}
	}
	if leaf.Server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	certPEM, keyPEM, err := tlsconf.IssueLeaf(tmpl, ca, caKey, now)
	if err != nil {
		return err
	}
	return config.WriteKeyPair(certPath, keyPath, certPEM, keyPEM)
}

// Chown gives a member's files (its directory, certificates and keys)
// and the two CA certificates to uid:gid, the user etcd runs as. The CA
// keys stay with their owner.
func (p PKI) Chown(member string, uid, gid int) error {
	if member == "" {
		return errors.New("no member named")
	}
	for _, f := range []string{p.Dir, p.memberDir(member), p.ServerCert(member), p.ServerKey(member),
		p.PeerCert(member), p.PeerKey(member), p.CACert(), p.PeerCACert()} {
		if err := os.Chown(f, uid, gid); err != nil {
			return err
		}
	}
	return nil
}
