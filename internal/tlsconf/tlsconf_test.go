package tlsconf

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/xdg-go/scram"
)

type pki struct {
	dir                            string
	caCert, caKey, srvCert, srvKey string
	roots                          *x509.CertPool
	cert                           *Cert
}

// newPKI generates a CA and a server certificate in a temporary directory.
func newPKI(t testing.TB, hosts ...string) *pki {
	t.Helper()
	dir := t.TempDir()
	p := &pki{dir: dir, caCert: filepath.Join(dir, "ca.crt"), caKey: filepath.Join(dir, "ca.key"),
		srvCert: filepath.Join(dir, "server.crt"), srvKey: filepath.Join(dir, "server.key")}
	if err := GenerateCA(p.caCert, p.caKey, "pgshield test CA"); err != nil {
		t.Fatalf("GenerateCA() error = %v", err)
	}
	if err := GenerateServer(p.caCert, p.caKey, p.srvCert, p.srvKey, hosts); err != nil {
		t.Fatalf("GenerateServer(%q) error = %v", hosts, err)
	}
	caPEM, err := os.ReadFile(p.caCert)
	if err != nil {
		t.Fatal(err)
	}
	p.roots = x509.NewCertPool()
	if !p.roots.AppendCertsFromPEM(caPEM) {
		t.Fatalf("%s holds no PEM certificate", p.caCert)
	}
	if p.cert, err = LoadCert(p.srvCert, p.srvKey); err != nil {
		t.Fatalf("LoadCert() error = %v", err)
	}
	return p
}

func readCerts(t *testing.T, name string) []*x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			t.Fatalf("%s holds a %q block; want CERTIFICATE", name, blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

func readKey(t *testing.T, name string) *ecdsa.PrivateKey {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		t.Fatalf("%s holds no PKCS#8 PRIVATE KEY block", name)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		t.Fatalf("%s key is %T; want *ecdsa.PrivateKey", name, k)
	}
	return ek
}

func TestGenerateChainVerifies(t *testing.T) {
	p := newPKI(t, "localhost", "127.0.0.1", "::1", "localhost", "")
	chain := readCerts(t, p.srvCert)
	if len(chain) != 2 {
		t.Fatalf("%s holds %d certificates; want the leaf and the CA", p.srvCert, len(chain))
	}
	leaf, ca := chain[0], chain[1]
	if cas := readCerts(t, p.caCert); len(cas) != 1 || !cas[0].Equal(ca) {
		t.Errorf("the chain's second certificate is not the CA in %s", p.caCert)
	}

	tests := []struct {
		name    string
		host    string
		wantErr bool
	}{
		{name: "DNS localhost", host: "localhost"},
		{name: "IPv4 loopback", host: "127.0.0.1"},
		{name: "IPv6 loopback", host: "::1"},
		{name: "other name", host: "db.example.com", wantErr: true},
		{name: "other IPv4", host: "127.0.0.2", wantErr: true},
		{name: "other IPv6", host: "::2", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := leaf.Verify(x509.VerifyOptions{DNSName: tt.host, Roots: p.roots,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
			if (err != nil) != tt.wantErr {
				t.Errorf("leaf.Verify(%q) error = %v; want error %v", tt.host, err, tt.wantErr)
			}
		})
	}

	if !slices.Equal(leaf.DNSNames, []string{"localhost"}) || len(leaf.IPAddresses) != 2 {
		t.Errorf("leaf SANs = %q %v; want localhost once and two IPs", leaf.DNSNames, leaf.IPAddresses)
	}
	if leaf.Subject.CommonName != "localhost" || leaf.IsCA {
		t.Errorf("leaf CN %q IsCA %v; want CN localhost, not a CA", leaf.Subject.CommonName, leaf.IsCA)
	}
	// Path length 1: one intermediate, the cross-signed successor of a
	// CA rollover, and no more.
	if !ca.IsCA || ca.MaxPathLen != 1 || ca.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("CA IsCA %v MaxPathLen %v KeyUsage %v; want a path-length-1 signing CA", ca.IsCA,
			ca.MaxPathLen, ca.KeyUsage)
	}
	if err := leaf.CheckSignatureFrom(ca); err != nil {
		t.Errorf("leaf.CheckSignatureFrom(CA) error = %v", err)
	}
	now := time.Now()
	for _, c := range chain {
		pk, ok := c.PublicKey.(*ecdsa.PublicKey)
		if !ok || pk.Curve != elliptic.P256() {
			t.Errorf("%q public key is %T; want ECDSA P-256", c.Subject.CommonName, c.PublicKey)
		}
		if c.SignatureAlgorithm != x509.ECDSAWithSHA256 {
			t.Errorf("%q signature algorithm %v; want ECDSA-SHA256", c.Subject.CommonName, c.SignatureAlgorithm)
		}
		if !c.NotBefore.Before(now) || !c.NotAfter.After(now.AddDate(1, 0, 0)) {
			t.Errorf("%q valid %v to %v; want valid now and for over a year", c.Subject.CommonName, c.NotBefore, c.NotAfter)
		}
	}
	if leaf.SerialNumber.Cmp(ca.SerialNumber) == 0 || leaf.SerialNumber.Sign() <= 0 {
		t.Errorf("serial numbers %v and %v; want distinct positive serials", leaf.SerialNumber, ca.SerialNumber)
	}

	for _, k := range []struct{ name, key string }{{"CA", p.caKey}, {"server", p.srvKey}} {
		key := readKey(t, k.key)
		if key.Curve != elliptic.P256() {
			t.Errorf("%s key curve %v; want P-256", k.name, key.Curve.Params().Name)
		}
	}
	if !readKey(t, p.srvKey).PublicKey.Equal(leaf.PublicKey) {
		t.Errorf("server key does not match the leaf certificate")
	}
	if readKey(t, p.caKey).Equal(readKey(t, p.srvKey)) {
		t.Errorf("CA and server share a key")
	}
}

func TestGeneratedFileModes(t *testing.T) {
	p := newPKI(t, "localhost")
	for _, f := range []struct {
		name string
		want os.FileMode
	}{{p.caKey, 0o600}, {p.srvKey, 0o600}, {p.caCert, 0o644}, {p.srvCert, 0o644}} {
		fi, err := os.Stat(f.name)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != f.want {
			t.Errorf("%s mode = %v; want %v", filepath.Base(f.name), fi.Mode().Perm(), f.want)
		}
	}
}

func TestGenerateServerErrors(t *testing.T) {
	p := newPKI(t, "localhost")
	other := newPKI(t, "localhost")
	dir := t.TempDir()
	tests := []struct {
		name          string
		caCert, caKey string
		wantErr       string
	}{
		{name: "missing CA", caCert: filepath.Join(dir, "none.crt"), caKey: filepath.Join(dir, "none.key"),
			wantErr: "loading CA"},
		{name: "CA key from another CA", caCert: p.caCert, caKey: other.caKey, wantErr: "loading CA"},
		{name: "server key as CA key", caCert: p.caCert, caKey: p.srvKey, wantErr: "loading CA"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_"))
			err := GenerateServer(tt.caCert, tt.caKey, out+".crt", out+".key", []string{"localhost"})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("GenerateServer(%s, %s) error = %v; want %q", tt.caCert, tt.caKey, err, tt.wantErr)
			}
			if _, err := os.Stat(out + ".key"); err == nil {
				t.Errorf("GenerateServer failed but wrote %s.key", out)
			}
		})
	}
}

func TestGenerateServerWithoutHosts(t *testing.T) {
	p := newPKI(t, "localhost")
	out := filepath.Join(t.TempDir(), "s")
	for _, hosts := range [][]string{nil, {}} {
		if err := GenerateServer(p.caCert, p.caKey, out+".crt", out+".key", hosts); err == nil {
			t.Errorf("GenerateServer(hosts %q) error = nil; want an error", hosts)
		}
	}
}

func TestLoadCert(t *testing.T) {
	p := newPKI(t, "localhost", "127.0.0.1")
	leafDER := p.cert.TLS.Certificate[0]
	sum := sha256.Sum256(leafDER)
	if p.cert.EndPoint.Type != scram.ChannelBindingTLSServerEndpoint || !bytes.Equal(p.cert.EndPoint.Data, sum[:]) {
		t.Errorf("LoadCert().EndPoint = %s %x; want tls-server-end-point %x", p.cert.EndPoint.Type,
			p.cert.EndPoint.Data, sum)
	}
	if p.cert.TLS.Leaf == nil || !bytes.Equal(p.cert.TLS.Leaf.Raw, leafDER) {
		t.Errorf("LoadCert().TLS.Leaf is not the first certificate")
	}
	if len(p.cert.TLS.Certificate) != 2 {
		t.Errorf("LoadCert() chain has %d certificates; want 2", len(p.cert.TLS.Certificate))
	}
	caDER := readCerts(t, p.caCert)[0].Raw
	if caSum := sha256.Sum256(caDER); bytes.Equal(p.cert.EndPoint.Data, caSum[:]) {
		t.Errorf("EndPoint is the CA's hash; want the leaf's")
	}

	other := newPKI(t, "localhost")
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, cert, key string
	}{
		{name: "missing files", cert: filepath.Join(dir, "x.crt"), key: filepath.Join(dir, "x.key")},
		{name: "mismatched key", cert: p.srvCert, key: other.srvKey},
		{name: "garbage certificate", cert: garbage, key: p.srvKey},
		{name: "garbage key", cert: p.srvCert, key: garbage},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if c, err := LoadCert(tt.cert, tt.key); err == nil {
				t.Errorf("LoadCert(%s, %s) = %v, nil; want an error", tt.cert, tt.key, c)
			}
		})
	}
}

func TestServerConfigSuites(t *testing.T) {
	p := newPKI(t, "localhost")
	cfg := ServerConfig(p.cert, tls.VersionTLS12, 0)
	if len(cfg.CipherSuites) == 0 {
		t.Fatal("ServerConfig() sets no cipher suites; Go's defaults include CBC")
	}
	for _, id := range cfg.CipherSuites {
		name := tls.CipherSuiteName(id)
		if !strings.HasPrefix(name, "TLS_ECDHE_") || !(strings.Contains(name, "_GCM_") || strings.Contains(name, "CHACHA20")) {
			t.Errorf("ServerConfig() allows %s; want ECDHE with AEAD only", name)
		}
	}
	// Tickets are on for TLS 1.3 only (TestServerConfigResumption).
	if !slices.Equal(cfg.NextProtos, []string{"postgresql"}) || cfg.SessionTicketsDisabled {
		t.Errorf("ServerConfig() NextProtos %q SessionTicketsDisabled %v; want [postgresql] and false",
			cfg.NextProtos, cfg.SessionTicketsDisabled)
	}
	if cfg.MinVersion != tls.VersionTLS12 || cfg.MaxVersion != 0 {
		t.Errorf("ServerConfig() versions %#x-%#x; want TLS 1.2 and no maximum", cfg.MinVersion, cfg.MaxVersion)
	}
}

// handshake runs a real TLS handshake over a net.Pipe.
func handshake(t *testing.T, srvCfg, cliCfg *tls.Config) (cs tls.ConnectionState, srvErr, cliErr error) {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	deadline := time.Now().Add(10 * time.Second)
	_ = a.SetDeadline(deadline)
	_ = b.SetDeadline(deadline)
	errc := make(chan error, 1)
	go func() {
		s := tls.Server(a, srvCfg)
		err := s.Handshake()
		if err == nil {
			// Read until the client hangs up, so a TLS 1.3 client can finish.
			_, _ = s.Read(make([]byte, 1))
		}
		a.Close()
		errc <- err
	}()
	c := tls.Client(b, cliCfg)
	cliErr = c.Handshake()
	if cliErr == nil {
		cs = c.ConnectionState()
	}
	b.Close()
	return cs, <-errc, cliErr
}

func TestServerConfigHandshake(t *testing.T) {
	p := newPKI(t, "localhost")
	client := func(min, max uint16, suites ...uint16) *tls.Config {
		return &tls.Config{RootCAs: p.roots, ServerName: "localhost", MinVersion: min, MaxVersion: max,
			CipherSuites: suites, NextProtos: []string{"postgresql"}}
	}
	cbc := []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA,
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256}
	tests := []struct {
		name        string
		srvMin      uint16
		srvMax      uint16
		cli         *tls.Config
		wantErr     bool
		wantVersion uint16
		wantSuite   uint16
	}{
		{name: "TLS 1.2 client offering only CBC", srvMin: tls.VersionTLS12,
			cli: client(tls.VersionTLS12, tls.VersionTLS12, cbc...), wantErr: true},
		{name: "TLS 1.2 client offering only static RSA", srvMin: tls.VersionTLS12,
			cli: client(tls.VersionTLS12, tls.VersionTLS12, tls.TLS_RSA_WITH_AES_128_GCM_SHA256), wantErr: true},
		{name: "TLS 1.2 client offering ECDHE AES-GCM", srvMin: tls.VersionTLS12,
			cli:         client(tls.VersionTLS12, tls.VersionTLS12, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
			wantVersion: tls.VersionTLS12, wantSuite: tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
		{name: "TLS 1.2 client offering CBC then ChaCha20", srvMin: tls.VersionTLS12,
			cli: client(tls.VersionTLS12, tls.VersionTLS12,
				append(slices.Clone(cbc), tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256)...),
			wantVersion: tls.VersionTLS12, wantSuite: tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256},
		{name: "default client gets TLS 1.3", srvMin: tls.VersionTLS12, cli: client(0, 0),
			wantVersion: tls.VersionTLS13},
		{name: "min TLS 1.3 refuses a TLS 1.2-max client", srvMin: tls.VersionTLS13,
			cli: client(0, tls.VersionTLS12), wantErr: true},
		{name: "min TLS 1.3 accepts TLS 1.3", srvMin: tls.VersionTLS13, cli: client(0, 0),
			wantVersion: tls.VersionTLS13},
		{name: "max TLS 1.2 caps the version", srvMin: tls.VersionTLS12, srvMax: tls.VersionTLS12,
			cli: client(0, 0), wantVersion: tls.VersionTLS12},
		{name: "max TLS 1.2 refuses a TLS 1.3-only client", srvMin: tls.VersionTLS12, srvMax: tls.VersionTLS12,
			cli: client(tls.VersionTLS13, 0), wantErr: true},
		{name: "TLS 1.1 client", srvMin: tls.VersionTLS12, cli: client(tls.VersionTLS10, tls.VersionTLS11),
			wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs, srvErr, cliErr := handshake(t, ServerConfig(p.cert, tt.srvMin, tt.srvMax), tt.cli)
			if tt.wantErr {
				if srvErr == nil || cliErr == nil {
					t.Fatalf("handshake errors server %v, client %v; want both to fail", srvErr, cliErr)
				}
				return
			}
			if srvErr != nil || cliErr != nil {
				t.Fatalf("handshake errors server %v, client %v; want success", srvErr, cliErr)
			}
			if cs.Version != tt.wantVersion {
				t.Errorf("negotiated %s; want %s", tls.VersionName(cs.Version), tls.VersionName(tt.wantVersion))
			}
			if tt.wantSuite != 0 && cs.CipherSuite != tt.wantSuite {
				t.Errorf("negotiated %s; want %s", tls.CipherSuiteName(cs.CipherSuite), tls.CipherSuiteName(tt.wantSuite))
			}
			if cs.NegotiatedProtocol != ALPN {
				t.Errorf("negotiated ALPN %q; want %q", cs.NegotiatedProtocol, ALPN)
			}
			if len(cs.PeerCertificates) != 2 {
				t.Errorf("server presented %d certificates; want leaf and CA", len(cs.PeerCertificates))
			}
			cb, err := scram.NewTLSServerEndpointBinding(&cs)
			if err != nil || !cb.Matches(p.cert.EndPoint) {
				t.Errorf("client-side tls-server-end-point %x (%v); want LoadCert's %x", cb.Data, err, p.cert.EndPoint.Data)
			}
		})
	}
}

func TestServerConfigALPN(t *testing.T) {
	p := newPKI(t, "localhost")
	tests := []struct {
		name    string
		protos  []string
		want    string
		wantErr bool
	}{
		{name: "postgresql", protos: []string{"postgresql"}, want: "postgresql"},
		{name: "none offered", protos: nil, want: ""},
		{name: "only h2", protos: []string{"h2"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs, srvErr, cliErr := handshake(t, ServerConfig(p.cert, tls.VersionTLS12, 0),
				&tls.Config{RootCAs: p.roots, ServerName: "localhost", NextProtos: tt.protos})
			if tt.wantErr {
				if srvErr == nil {
					t.Fatalf("handshake with ALPN %q succeeded; want the server to refuse", tt.protos)
				}
				return
			}
			if srvErr != nil || cliErr != nil {
				t.Fatalf("handshake errors server %v, client %v", srvErr, cliErr)
			}
			if cs.NegotiatedProtocol != tt.want {
				t.Errorf("ALPN %q negotiated %q; want %q", tt.protos, cs.NegotiatedProtocol, tt.want)
			}
		})
	}
}

// TestServerConfigResumption: a TLS 1.3 client that keeps its ticket
// resumes, still sees the certificate its SCRAM-PLUS binding needs; TLS 1.2
// never resumes (no tickets), and a new Config (as every parameter change
// makes) does not accept the old one's tickets.
func TestServerConfigResumption(t *testing.T) {
	p := newPKI(t, "localhost")
	client := func(max uint16) *tls.Config {
		return &tls.Config{RootCAs: p.roots, ServerName: "localhost", MaxVersion: max,
			ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	}
	tests := []struct {
		name       string
		srvMax     uint16
		cliMax     uint16
		newConfig  bool // the second connection meets a fresh ServerConfig
		wantResume bool
	}{
		{name: "TLS 1.3", wantResume: true},
		{name: "TLS 1.3, new config", newConfig: true},
		{name: "TLS 1.2 client", cliMax: tls.VersionTLS12},
		{name: "server max TLS 1.2", srvMax: tls.VersionTLS12},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, cli := ServerConfig(p.cert, tls.VersionTLS12, tt.srvMax), client(tt.cliMax)
			first := resumeHandshake(t, srv, cli)
			if first.DidResume {
				t.Fatal("first connection resumed")
			}
			if tt.newConfig {
				srv = ServerConfig(p.cert, tls.VersionTLS12, tt.srvMax)
			}
			second := resumeHandshake(t, srv, cli)
			if second.DidResume != tt.wantResume {
				t.Errorf("second connection (%s) DidResume = %v; want %v", tls.VersionName(second.Version), second.DidResume, tt.wantResume)
			}
			cb, err := scram.NewTLSServerEndpointBinding(&second)
			if err != nil || !cb.Matches(p.cert.EndPoint) {
				t.Errorf("tls-server-end-point after resumption %x (%v); want LoadCert's %x", cb.Data, err, p.cert.EndPoint.Data)
			}
		})
	}
}

// resumeHandshake connects once over a pipe, with one byte from the server
// so that a TLS 1.3 client reads the session ticket sent after the
// handshake, and returns the client's view.
func resumeHandshake(t testing.TB, srvCfg, cliCfg *tls.Config) tls.ConnectionState {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	deadline := time.Now().Add(10 * time.Second) // a bound, not a measurement
	_ = a.SetDeadline(deadline)
	_ = b.SetDeadline(deadline)
	errc := make(chan error, 1)
	go func() {
		s := tls.Server(a, srvCfg)
		_, err := s.Write([]byte{'x'}) // handshake, ticket, then the byte
		errc <- err
	}()
	c := tls.Client(b, cliCfg)
	if _, err := c.Read(make([]byte, 1)); err != nil {
		t.Fatalf("client read: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("server: %v", err)
	}
	return c.ConnectionState()
}
