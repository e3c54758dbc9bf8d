// Package etcd generates the configuration of the 3-member etcd cluster
// that decides who leads a pgshield high-availability cluster, and runs an
// etcd member as a supervised child process. Peers and clients speak TLS
// only and must present a certificate from the cluster's own CA
// (--client-cert-auth, --peer-client-cert-auth). See internal/cluster for
// the plan this is the first part of; nothing in the daemon uses it yet.
package etcd

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
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

// PKI is where a cluster's certificates live: ca.crt and ca.key at the
// top, and one 0700 directory per member and for the client.
type PKI struct{ Dir string }

func (p PKI) CACert() string             { return filepath.Join(p.Dir, "ca.crt") }
func (p PKI) caKey() string              { return filepath.Join(p.Dir, "ca.key") }
func (p PKI) MemberCert(n string) string { return filepath.Join(p.Dir, "member-"+n, "member.crt") }
func (p PKI) MemberKey(n string) string  { return filepath.Join(p.Dir, "member-"+n, "member.key") }

// ClientCert and ClientKey are the certificate pgshield (and Patroni) use
// to talk to etcd.
func (p PKI) ClientCert() string { return filepath.Join(p.Dir, "client", "client.crt") }
func (p PKI) ClientKey() string  { return filepath.Join(p.Dir, "client", "client.key") }

// Generate makes a new CA for the cluster, a certificate per member (for
// both its client and peer ports, server and client authentication, its
// address as the only name) and one client certificate. Keys are ECDSA
// P-256 like the rest of pgshield's, files 0600 in 0700 directories. An
// existing CA is never replaced: Generate refuses a Dir that holds one.
func (p PKI) Generate(c Cluster, now time.Time) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if _, err := os.Stat(p.CACert()); err == nil {
		return fmt.Errorf("%s already holds an etcd CA; refusing to replace it", p.Dir)
	}
	if err := os.MkdirAll(p.Dir, 0o700); err != nil {
		return err
	}
	if err := os.Chmod(p.Dir, 0o700); err != nil {
		return err
	}
	ca, caKey, err := tlsconf.NewCA("pgshield etcd CA "+c.Token, now)
	if err != nil {
		return err
	}
	caKeyPEM, err := tlsconf.EncodeKey(caKey)
	if err != nil {
		return err
	}
	if err := config.WriteFileAtomic(p.caKey(), caKeyPEM, 0o600); err != nil {
		return err
	}
	for _, m := range c.Members {
		if err := p.issue(ca, caKey, m.Name, []net.IP{m.IP}, p.MemberCert(m.Name), p.MemberKey(m.Name), now); err != nil {
			return err
		}
	}
	if err := p.issue(ca, caKey, "pgshield", nil, p.ClientCert(), p.ClientKey(), now); err != nil {
		return err
	}
	// The CA certificate last: its presence says the directory is complete.
	return config.WriteFileAtomic(p.CACert(), tlsconf.EncodeCert(ca.Raw), 0o600)
}

// issue writes a leaf for cn signed by ca. With ips it serves too (a
// member: its peers are its clients as well); without, it is a client only.
func (p PKI) issue(ca *x509.Certificate, caKey *ecdsa.PrivateKey, cn string, ips []net.IP, certPath, keyPath string, now time.Time) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"pgshield"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(tlsconf.ServerLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		IPAddresses:  ips,
	}
	if len(ips) > 0 {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if tmpl.NotAfter.After(ca.NotAfter) {
		tmpl.NotAfter = ca.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	keyPEM, err := tlsconf.EncodeKey(key)
	if err != nil {
		return err
	}
	dir := filepath.Dir(certPath)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	if err := config.WriteFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return err
	}
	return config.WriteFileAtomic(certPath, tlsconf.EncodeCert(der), 0o600)
}

// Chown gives a member's files (its directory, certificate and key) and
// the CA certificate to uid:gid, the user etcd runs as.
func (p PKI) Chown(member string, uid, gid int) error {
	if member == "" {
		return errors.New("no member named")
	}
	for _, f := range []string{p.Dir, filepath.Dir(p.MemberCert(member)), p.MemberCert(member), p.MemberKey(member), p.CACert()} {
		if err := os.Chown(f, uid, gid); err != nil {
			return err
		}
	}
	return nil
}
