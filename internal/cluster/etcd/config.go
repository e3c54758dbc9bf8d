package etcd

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// cipherSuites are etcd's TLS 1.2 suites: ECDHE with AES-GCM or ChaCha20
// only (etcd 3.4 has no minimum-version flag; TLS 1.3, which Go prefers,
// ignores this list).
var cipherSuites = []string{
	"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
	"TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
	"TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
}

// ClientURL is a member's client endpoint.
func ClientURL(m Member) string { return hostURL(m.IP, ClientPort) }

// PeerURL is a member's peer endpoint.
func PeerURL(m Member) string { return hostURL(m.IP, PeerPort) }

func hostURL(ip net.IP, port int) string {
	u := url.URL{Scheme: "https", Host: net.JoinHostPort(ip.String(), strconv.Itoa(port))}
	return u.String()
}

// Endpoints are the client URLs of every member, comma-separated, as
// etcdctl and Patroni take them.
func (c Cluster) Endpoints() []string {
	out := make([]string, 0, len(c.Members))
	for _, m := range c.Members {
		out = append(out, ClientURL(m))
	}
	return out
}

// Args are the command-line arguments that run member name of c with its
// data in dataDir (mode 0700, etcd's own requirement too). They hold
// paths, never key material. The member listens on its own address only,
// TLS on both ports with certificates required, no metrics or v2 port.
//
// Who may do what: any holder of a client-CA certificate (the client
// certificate pgshield and Patroni share, and the members' own client-port
// certificates) can read and write every key. etcd's RBAC is left off:
// with --client-cert-auth it would take the user from the certificate's
// CN, but 3.4's JSON gateway, which Patroni's etcd3 client and pgshield's
// fencing both use, dials the gRPC port with the member's own certificate,
// so a gateway call without a password token would run as the member,
// not as the caller.
// Narrowing Patroni to its prefix would need password (token) auth on top.
// TODO(#18): decide on RBAC with tokens once the daemon distributes
// cluster secrets.
func Args(c Cluster, name string, pki PKI, dataDir string) ([]string, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	m, ok := c.Member(name)
	if !ok {
		return nil, fmt.Errorf("%s is not a member of etcd cluster %s", name, c.Token)
	}
	initial := make([]string, 0, len(c.Members))
	for _, o := range c.Members {
		initial = append(initial, o.Name+"="+PeerURL(o))
	}
	return []string{
		"--name=" + m.Name,
		"--data-dir=" + dataDir,
		"--listen-client-urls=" + ClientURL(m),
		"--advertise-client-urls=" + ClientURL(m),
		"--listen-peer-urls=" + PeerURL(m),
		"--initial-advertise-peer-urls=" + PeerURL(m),
		"--initial-cluster=" + strings.Join(initial, ","),
		"--initial-cluster-token=" + c.Token,
		"--initial-cluster-state=new",
		"--client-cert-auth",
		"--trusted-ca-file=" + pki.CACert(),
		"--cert-file=" + pki.ServerCert(m.Name),
		"--key-file=" + pki.ServerKey(m.Name),
		"--peer-client-cert-auth",
		// Peers: the peer CA only, and only its PeerCN certificates (see PKI).
		"--peer-trusted-ca-file=" + pki.PeerCACert(),
		"--peer-cert-allowed-cn=" + PeerCN,
		"--peer-cert-file=" + pki.PeerCert(m.Name),
		"--peer-key-file=" + pki.PeerKey(m.Name),
		"--cipher-suites=" + strings.Join(cipherSuites, ","),
		"--enable-v2=false",
		// A corrupted member refuses to start instead of serving.
		"--experimental-initial-corrupt-check=true",
		"--logger=zap",
		"--log-outputs=stderr",
	}, nil
}
