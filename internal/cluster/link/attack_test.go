package link

// Hostile review of the node link (issue #18): each test plays an attacker
// against the real link code in-process and asserts the SAFE behaviour.
// An attack that succeeds today is a finding: its test starts with
// finding(t, ...), which skips it so that the suite stays green; run
// PGSHIELD_ATTACK_FINDINGS=1 go test -run Attack ./internal/cluster/link/
// to see every finding fail with its evidence.
//
// Attackers: (1) a network client without a node certificate, or with a
// certificate from the cluster CA meant for something else; (2) a
// compromised peer (a valid node certificate and, from its pgpass file,
// both roles' passwords) trying to do more than replication and rewind;
// (3) a local unprivileged user on a node (loopback REST ports, the peer
// socket directory).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	yaml "go.yaml.in/yaml/v3"

	"github.com/pgshield/pgshield/internal/cluster/patroni"
)

// finding skips a test whose attack succeeds today, unless
// PGSHIELD_ATTACK_FINDINGS=1 asks to see it fail.
func finding(t *testing.T, msg string) {
	t.Helper()
	if os.Getenv("PGSHIELD_ATTACK_FINDINGS") != "1" {
		t.Skip("finding: " + msg)
	}
}

// rawStartup encodes a StartupMessage from name/value pairs in order,
// duplicates allowed (a map cannot hold them; PostgreSQL's parser sees
// every pair).
func rawStartup(version uint32, kv ...string) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint32(b[4:], version)
	for _, s := range kv {
		b = append(append(b, s...), 0)
	}
	b = append(b, 0)
	binary.BigEndian.PutUint32(b, uint32(len(b)))
	return b
}

// rawPG is a PostgreSQL socket that records each raw startup packet it
// gets, answers AuthenticationOk and echoes what follows.
type rawPG struct {
	path string
	mu   sync.Mutex
	pkts [][]byte
}

func startRawPG(t *testing.T, ctx context.Context, wg *sync.WaitGroup) *rawPG {
	t.Helper()
	dir, err := os.MkdirTemp("", "pgsh-atk-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := &rawPG{path: filepath.Join(dir, ".s.PGSQL.5432")}
	ln, err := net.Listen("unix", f.path)
	if err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		var cwg sync.WaitGroup
		defer cwg.Wait()
		go func() { <-ctx.Done(); ln.Close() }()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			cwg.Add(1)
			go func() {
				defer cwg.Done()
				defer c.Close()
				stop := make(chan struct{})
				defer close(stop)
				go func() {
					select {
					case <-ctx.Done():
					case <-stop:
					}
					c.Close()
				}()
				pkt, err := readStartup(c)
				if err != nil {
					return
				}
				f.mu.Lock()
				f.pkts = append(f.pkts, pkt)
				f.mu.Unlock()
				b, _ := (&pgproto3.AuthenticationOk{}).Encode(nil)
				if _, err := c.Write(b); err != nil {
					return
				}
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return f
}

func (f *rawPG) packets() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]byte(nil), f.pkts...)
}

// restSeen is one request b's fake Patroni REST API got.
type restSeen struct {
	Method, Path, Host string
	Body               int
	Header             http.Header
}

type attackPair struct {
	a, b      *Node
	pg        *rawPG
	aPeerDir  string
	bPGPort   int
	bRESTPort int
	restMu    sync.Mutex
	rest      []restSeen
}

func (p *attackPair) bSocket() string {
	return filepath.Join(p.aPeerDir, ".s.PGSQL."+strconv.Itoa(p.bPGPort))
}

func (p *attackPair) restCalls() []restSeen {
	p.restMu.Lock()
	defer p.restMu.Unlock()
	return append([]restSeen(nil), p.rest...)
}

// startAttackPair runs node a (the attacker's way in: its peer socket and
// REST port for b) and node b (the target, with peers a and c), b with a
// recording PostgreSQL and a recording Patroni REST API.
func startAttackPair(t *testing.T, ctx context.Context, wg *sync.WaitGroup, ca *testCA, mod func(a, b *Config)) *attackPair {
	t.Helper()
	p := &attackPair{pg: startRawPG(t, ctx, wg)}
	restLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		p.restMu.Lock()
		p.rest = append(p.rest, restSeen{r.Method, r.URL.Path, r.Host, int(n), r.Header.Clone()})
		p.restMu.Unlock()
		fmt.Fprint(w, `{"state":"running"}`)
	}), ReadHeaderTimeout: 5 * time.Second}
	wg.Add(1)
	go func() { defer wg.Done(); _ = srv.Serve(restLn) }()
	go func() { <-ctx.Done(); srv.Close() }()

	mk := func(prefix string) string {
		d, err := os.MkdirTemp("", prefix)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		return d
	}
	p.aPeerDir = mk("pgsh-atk-a-")
	p.bPGPort, p.bRESTPort = 5602, freePort(t)
	bCfg := Config{
		Identity: ca.node(t, "b"), Listen: "127.0.0.1:0", Socket: p.pg.path, REST: restLn.Addr().String(), Database: "postgres",
		Peers: []Peer{
			{Name: "a", Addr: "127.0.0.1:1", PGPort: 5601, RESTPort: freePort(t)},
			{Name: "c", Addr: "127.0.0.1:1", PGPort: 5603, RESTPort: freePort(t)},
		},
		PeerSocketDir: mk("pgsh-atk-b-"), HandshakeTimeout: 500 * time.Millisecond,
	}
	aCfg := Config{
		Identity: ca.node(t, "a"), Listen: "127.0.0.1:0", Socket: "/nonexistent/.s.PGSQL.1", REST: "127.0.0.1:1", Database: "postgres",
		PeerSocketDir: p.aPeerDir, HandshakeTimeout: 500 * time.Millisecond,
	}
	if mod != nil {
		mod(&aCfg, &bCfg)
	}
	p.b = startNode(t, ctx, wg, bCfg)
	aCfg.Peers = []Peer{{Name: "b", Addr: p.b.Addr().String(), PGPort: p.bPGPort, RESTPort: p.bRESTPort}}
	p.a = startNode(t, ctx, wg, aCfg)
	return p
}

// sendRaw sends raw bytes on a's socket for b (so through the whole link,
// as a compromised a would) and returns the first backend message, or
// nil when the link closed the connection without one.
func (p *attackPair) sendRaw(t *testing.T, raw []byte) (pgproto3.BackendMessage, net.Conn) {
	t.Helper()
	c, err := net.Dial("unix", p.bSocket())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(raw); err != nil {
		return nil, c
	}
	m, err := pgproto3.NewFrontend(c, c).Receive()
	if err != nil {
		return nil, c
	}
	return m, c
}

// ---------------------------------------------------------------------
// PostgreSQL 15's reading of a startup packet (postmaster.c
// ProcessStartupPacket, postinit.c, guc.c parse_bool), to judge what a
// packet the link relays means to the server it reaches.

type pgStartup struct {
	user, database, options string
	walsender, dbWalsender  bool
	gucs                    [][2]string
}

// pgParseBool is PostgreSQL's parse_bool: case-insensitive, prefixes.
func pgParseBool(v string) (val, ok bool) {
	l := strings.ToLower(v)
	prefixOf := func(word string, min int) bool {
		return len(l) >= min && len(l) <= len(word) && word[:len(l)] == l
	}
	switch {
	case l == "":
		return false, false
	case l[0] == 't':
		return true, prefixOf("true", 1)
	case l[0] == 'f':
		return false, prefixOf("false", 1)
	case l[0] == 'y':
		return true, prefixOf("yes", 1)
	case l[0] == 'n':
		return false, prefixOf("no", 1)
	case l[0] == 'o':
		if prefixOf("on", 2) {
			return true, true
		}
		return false, prefixOf("off", 2)
	case l == "1":
		return true, true
	case l == "0":
		return false, true
	}
	return false, false
}

// pgView is what PostgreSQL 15 makes of pkt; an error is a FATAL before
// any session exists.
func pgView(pkt []byte) (*pgStartup, error) {
	if len(pkt) < 8 || binary.BigEndian.Uint32(pkt[4:]) != pgproto3.ProtocolVersion30 {
		return nil, errors.New("version")
	}
	buf := pkt[4:]
	s := &pgStartup{}
	off := 4
	for off < len(buf) {
		name := buf[off:]
		if name[0] == 0 {
			break
		}
		i := bytes.IndexByte(name, 0)
		if i < 0 {
			return nil, errors.New("layout")
		}
		voff := off + i + 1
		if voff >= len(buf) {
			break
		}
		j := bytes.IndexByte(buf[voff:], 0)
		if j < 0 {
			return nil, errors.New("layout")
		}
		n, v := string(buf[off:off+i]), string(buf[voff:voff+j])
		switch {
		case n == "database":
			s.database = v
		case n == "user":
			s.user = v
		case n == "options":
			s.options = v
		case n == "replication":
			if v == "database" {
				s.walsender, s.dbWalsender = true, true
			} else {
				b, ok := pgParseBool(v)
				if !ok {
					return nil, errors.New("replication value")
				}
				s.walsender = b
			}
		case strings.HasPrefix(n, "_pq_."):
			// unrecognized protocol options: reported, not applied
		default:
			s.gucs = append(s.gucs, [2]string{n, v})
		}
		off = voff + j + 1
	}
	if off != len(buf)-1 {
		return nil, errors.New("invalid startup packet layout")
	}
	if s.user == "" {
		return nil, errors.New("no user")
	}
	if s.database == "" {
		s.database = s.user
	}
	if s.walsender && !s.dbWalsender {
		s.database = ""
	}
	for _, g := range s.gucs {
		switch strings.ToLower(g[0]) {
		case "user", "database", "options", "replication", "fallback_application_name":
			// not GUCs: "unrecognized configuration parameter", FATAL
			return nil, fmt.Errorf("unrecognized configuration parameter %q", g[0])
		}
	}
	return s, nil
}

// policyViolation says what, in PostgreSQL's reading of an admitted
// packet, the link's policy forbids ("" when nothing).
func policyViolation(s *pgStartup) string {
	if !optionsRE.MatchString(s.options) {
		return "options " + s.options
	}
	for _, g := range s.gucs {
		switch strings.ToLower(g[0]) {
		case "application_name", "client_encoding", "datestyle", "timezone", "geqo":
		default:
			return "GUC " + g[0]
		}
	}
	switch s.user {
	case patroni.ReplicationRole:
		if !s.walsender {
			return "replication role in a SQL session"
		}
		if s.dbWalsender && s.database != "postgres" {
			return "replication role: database walsender (SQL allowed) on database " + strconv.Quote(s.database)
		}
	case patroni.RewindRole:
		if s.walsender {
			return "rewind role as walsender"
		}
		if s.database != "postgres" {
			return "rewind role on database " + strconv.Quote(s.database)
		}
	default:
		return "role " + s.user
	}
	return ""
}

// admitBytes runs the link's own admission (negotiate, then Admit) on raw
// bytes and returns the packet it would relay, or nil.
func admitBytes(raw []byte) []byte {
	rw := struct {
		io.Reader
		io.Writer
	}{bytes.NewReader(raw), io.Discard}
	pkt, m, err := negotiate(rw)
	if err != nil || Admit(m, "postgres") != nil {
		return nil
	}
	return pkt
}

// ---------------------------------------------------------------------
// Attacker 1: the network, without a node certificate of a peer.

func issueLeaf(t *testing.T, parent *x509.Certificate, parentKey any, tmpl *x509.Certificate) *tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber, _ = rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 100))
	}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	}
	if parent == nil { // self-signed
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestAttackCertificates(t *testing.T) {
	ctx, wg := withRun(t)
	ca := newTestCA(t, "cluster")
	p := startAttackPair(t, ctx, wg, ca, nil)
	addr := p.b.Addr().String()
	roots := x509.NewCertPool()
	roots.AddCert(ca.ca)
	both := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	name := func(n string) []string { return []string{NodeDNSName(n)} }
	nodeA := ca.node(t, "a")
	aLeaf := nodeA.cert.Leaf
	nodeC := ca.node(t, "c")

	member := ca.member(t, "a")
	certs := map[string]*tls.Certificate{
		"no certificate":             nil,
		"etcd member (IP, CN a)":     &member,
		"etcd client (no name)":      issueLeaf(t, ca.ca, ca.caKey, &x509.Certificate{Subject: pkix.Name{CommonName: "pgshield-etcd-client"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}),
		"CN only a.node":             issueLeaf(t, ca.ca, ca.caKey, &x509.Certificate{Subject: pkix.Name{CommonName: NodeDNSName("a")}, ExtKeyUsage: both}),
		"node a plus an IP":          issueLeaf(t, ca.ca, ca.caKey, &x509.Certificate{DNSNames: name("a"), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: both}),
		"node a and node c":          issueLeaf(t, ca.ca, ca.caKey, &x509.Certificate{DNSNames: []string{NodeDNSName("a"), NodeDNSName("c")}, ExtKeyUsage: both}),
		"upper-case A.node":          issueLeaf(t, ca.ca, ca.caKey, &x509.Certificate{DNSNames: []string{"A" + nodeSuffix}, ExtKeyUsage: both}),
		"trailing dot":               issueLeaf(t, ca.ca, ca.caKey, &x509.Certificate{DNSNames: []string{NodeDNSName("a") + "."}, ExtKeyUsage: both}),
		"node a, server auth only":   issueLeaf(t, ca.ca, ca.caKey, &x509.Certificate{DNSNames: name("a"), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}),
		"node a, expired":            issueLeaf(t, ca.ca, ca.caKey, &x509.Certificate{DNSNames: name("a"), ExtKeyUsage: both, NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)}),
		"self-signed node a":         issueLeaf(t, nil, nil, &x509.Certificate{DNSNames: name("a"), ExtKeyUsage: both, BasicConstraintsValid: true, IsCA: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}),
		"signed by node c's key (a)": issueLeaf(t, nodeC.cert.Leaf, nodeC.cert.PrivateKey, &x509.Certificate{DNSNames: name("a"), ExtKeyUsage: both}),
		"node x, not a peer":         &ca.node(t, "x").cert,
		"node b, the target itself":  &ca.node(t, "b").cert,
		"another CA's node a":        &newTestCA(t, "other").node(t, "a").cert,
		"node a leaf, another's key": {Certificate: [][]byte{aLeaf.Raw}, PrivateKey: nodeC.cert.PrivateKey},
	}
	for _, proto := range []string{ProtoPostgres, ProtoREST} {
		for n, cert := range certs {
			err := dialB(t, addr, roots, cert, func(c *tls.Config) { c.NextProtos = []string{proto} })
			if err == nil {
				t.Errorf("%s over %s: accepted", n, proto)
			}
		}
	}
	// ALPN: only the two protocols; "h2" or none is refused even for a.
	for _, np := range [][]string{nil, {"h2"}, {"http/1.1"}, {"pgshield-link-pg/2"}} {
		if err := dialB(t, addr, roots, &nodeA.cert, func(c *tls.Config) { c.NextProtos = np }); err == nil {
			t.Errorf("ALPN %v accepted", np)
		}
	}
	// TLS 1.2 with a valid node certificate.
	if err := dialB(t, addr, roots, &nodeA.cert, func(c *tls.Config) { c.MaxVersion = tls.VersionTLS12 }); err == nil {
		t.Error("TLS 1.2 accepted")
	}
	if err := dialB(t, addr, roots, &nodeA.cert, nil); err != nil {
		t.Fatalf("node a itself refused: %v", err)
	}
	if n := len(p.pg.packets()); n != 0 {
		t.Fatalf("PostgreSQL saw %d startups", n)
	}
	if n := len(p.restCalls()); n != 0 {
		t.Fatalf("Patroni saw %d calls", n)
	}
}

// A network client without a certificate holds every inbound slot by
// opening connections and sending nothing: each keeps its slot for the
// whole handshake timeout, and it may open new ones as they expire. A
// real peer's replication connection is refused meanwhile.
func TestAttackPreAuthSlotExhaustion(t *testing.T) {
	ctx, wg := withRun(t)
	ca := newTestCA(t, "cluster")
	p := startAttackPair(t, ctx, wg, ca, func(a, b *Config) { b.MaxConns = 4; b.HandshakeTimeout = 3 * time.Second })
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range 4 {
		c, err := net.Dial("tcp", p.b.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	time.Sleep(100 * time.Millisecond)
	m, _ := p.sendRaw(t, rawStartup(pgproto3.ProtocolVersion30, "user", patroni.ReplicationRole, "replication", "true", "application_name", "a"))
	if _, ok := m.(*pgproto3.AuthenticationOk); !ok {
		t.Fatalf("peer a's walreceiver got %T while 4 connections without a certificate were open", m)
	}
}

// ---------------------------------------------------------------------
// Attacker 2: a compromised peer.

// Startup packets a compromised peer sends through the whole link: every
// one is refused with 28000 and PostgreSQL never sees it.
func TestAttackStartupRefused(t *testing.T) {
	ctx, wg := withRun(t)
	ca := newTestCA(t, "cluster")
	p := startAttackPair(t, ctx, wg, ca, nil)
	R, W := patroni.ReplicationRole, patroni.RewindRole
	v3 := uint32(pgproto3.ProtocolVersion30)
	cases := map[string][]byte{
		"superuser":                     rawStartup(v3, "user", "postgres", "database", "postgres"),
		"superuser as walsender":        rawStartup(v3, "user", "postgres", "replication", "true"),
		"rewind, GUC role":              rawStartup(v3, "user", W, "database", "postgres", "role", "postgres"),
		"rewind, session_authorization": rawStartup(v3, "user", W, "database", "postgres", "session_authorization", "postgres"),
		"rewind, GUC search_path":       rawStartup(v3, "user", W, "database", "postgres", "search_path", "public"),
		"rewind, GUC SEARCH_PATH":       rawStartup(v3, "user", W, "database", "postgres", "SEARCH_PATH", "public"),
		"rewind, -c role":               rawStartup(v3, "user", W, "database", "postgres", "options", "-c role=postgres"),
		"rewind, --role=":               rawStartup(v3, "user", W, "database", "postgres", "options", "--role=postgres"),
		"rewind, -c session_auth":       rawStartup(v3, "user", W, "database", "postgres", "options", "-c session_authorization=postgres"),
		"rewind, allowed then role":     rawStartup(v3, "user", W, "database", "postgres", "options", "-c statement_timeout=0 -c role=postgres"),
		"rewind, glued -c":              rawStartup(v3, "user", W, "database", "postgres", "options", "-c statement_timeout=1-c role=postgres"),
		"rewind, backslash space":       rawStartup(v3, "user", W, "database", "postgres", "options", `-c search_path=pg_catalog\ -c\ role=postgres`),
		"rewind, vertical tab":          rawStartup(v3, "user", W, "database", "postgres", "options", "-c statement_timeout=0\v-c role=postgres"),
		"rewind, search_path list":      rawStartup(v3, "user", W, "database", "postgres", "options", "-c search_path=pg_catalog,public"),
		"rewind, search_path quoted":    rawStartup(v3, "user", W, "database", "postgres", "options", "-c search_path='pg_catalog'"),
		"rewind, read-only off":         rawStartup(v3, "user", W, "database", "postgres", "options", "-c default_transaction_read_only=off"),
		"rewind, other database":        rawStartup(v3, "user", W, "database", "app"),
		"rewind, template1":             rawStartup(v3, "user", W, "database", "template1"),
		"rewind, no database":           rawStartup(v3, "user", W),
		"rewind, walsender":             rawStartup(v3, "user", W, "database", "postgres", "replication", "true"),
		"rewind, replication=database":  rawStartup(v3, "user", W, "database", "postgres", "replication", "database"),
		"rewind, replication=f":         rawStartup(v3, "user", W, "database", "postgres", "replication", "f"),
		"replication, SQL session":      rawStartup(v3, "user", R, "database", "postgres"),
		"replication, replication=off":  rawStartup(v3, "user", R, "database", "postgres", "replication", "off"),
		"replication, db walsender app": rawStartup(v3, "user", R, "database", "app", "replication", "database"),
		"replication, -c role":          rawStartup(v3, "user", R, "replication", "true", "options", "-c role=postgres"),
		"replication, GUC role":         rawStartup(v3, "user", R, "replication", "true", "role", "postgres"),
		"replication, trailing space":   rawStartup(v3, "user", R+" ", "replication", "true"),
		"upper-case role":               rawStartup(v3, "user", strings.ToUpper(R), "replication", "true"),
		"duplicate user, last postgres": rawStartup(v3, "user", R, "replication", "true", "user", "postgres"),
		"empty name mid-packet":         rawStartup(v3, "user", R, "replication", "true", "", "x", "user", "postgres"),
		"_pq_ extension":                rawStartup(v3, "user", R, "replication", "true", "_pq_.protocol_managed_params", "x"),
		"protocol 3.2":                  rawStartup(pgproto3.ProtocolVersion32, "user", R, "replication", "true"),
		"protocol 2.0":                  rawStartup(0x00020000, "user", R, "replication", "true"),
		"protocol 3.1":                  rawStartup(0x00030001, "user", R, "replication", "true"),
		"no user":                       rawStartup(v3, "database", "postgres"),
		"lc_messages GUC":               rawStartup(v3, "user", R, "replication", "true", "lc_messages", "C"),
		"extension GUC":                 rawStartup(v3, "user", R, "replication", "true", "pgaudit.log", "none"),
	}
	for n, raw := range cases {
		m, c := p.sendRaw(t, raw)
		e, ok := m.(*pgproto3.ErrorResponse)
		if !ok || e.Code != "28000" {
			// A protocol error closes without an ErrorResponse: also a refusal.
			if m != nil {
				t.Errorf("%s: got %T %+v, want a refusal", n, m, m)
				continue
			}
		}
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Errorf("%s: connection left open after the refusal", n)
		}
	}
	if got := p.pg.packets(); len(got) != 0 {
		for _, pkt := range got {
			t.Errorf("PostgreSQL saw %q", pkt)
		}
	}
}

// A StartupMessage may name "replication" twice. PostgreSQL 15 sets
// am_db_walsender on "database" and never clears it: a later "true" keeps
// a database walsender, on whatever database the packet names. pgproto3
// keeps the last value only, so the link sees a physical walsender (whose
// database PostgreSQL ignores) and admits a database walsender, which
// runs any SQL, on any database (pg_hba's "local replication" lines do not
// match database walsenders; with pgshield's single-node "local all all
// trust" appended, no password is asked).
func TestAttackDuplicateReplicationParameter(t *testing.T) {
	ctx, wg := withRun(t)
	ca := newTestCA(t, "cluster")
	p := startAttackPair(t, ctx, wg, ca, nil)
	raw := rawStartup(pgproto3.ProtocolVersion30, "user", patroni.ReplicationRole, "database", "app", "replication", "database", "replication", "true")
	m, _ := p.sendRaw(t, raw)
	if _, ok := m.(*pgproto3.AuthenticationOk); ok {
		s, err := pgView(p.pg.packets()[0])
		t.Fatalf("admitted; PostgreSQL 15 reads it as %+v (%v): %s", s, err, policyViolation(s))
	}
}

// Every combination of up to three name/value pairs from a hostile set:
// whatever the link's admission passes must, as PostgreSQL reads it, be
// within the policy (or be refused by PostgreSQL itself).
func TestAttackAdmitDifferential(t *testing.T) {
	R, W := patroni.ReplicationRole, patroni.RewindRole
	pairs := [][2]string{
		{"user", R}, {"user", W}, {"user", "postgres"},
		{"database", "postgres"}, {"database", "app"},
		{"replication", "true"}, {"replication", "database"}, {"replication", "false"},
		{"replication", "DATABASE"}, {"replication", "t"},
		{"Replication", "true"}, {"User", "postgres"}, {"Options", "-c role=postgres"},
		{"options", "-c search_path=pg_catalog"}, {"application_name", "x"},
	}
	bad := map[string]int{}
	var example = map[string]string{}
	var try func(prefix []string, depth int)
	try = func(prefix []string, depth int) {
		if len(prefix) > 0 {
			if pkt := admitBytes(rawStartup(pgproto3.ProtocolVersion30, prefix...)); pkt != nil {
				if s, err := pgView(pkt); err == nil {
					if v := policyViolation(s); v != "" {
						bad[v]++
						if _, ok := example[v]; !ok {
							example[v] = fmt.Sprintf("%q", prefix)
						}
					}
				}
			}
		}
		if depth == 0 {
			return
		}
		for _, kv := range pairs {
			try(append(append([]string(nil), prefix...), kv[0], kv[1]), depth-1)
		}
	}
	try(nil, 4)
	for v, n := range bad {
		t.Errorf("%d admitted packets PostgreSQL reads as %s, e.g. %s", n, v, example[v])
	}
}

// The link admits replication=database on Patroni's database: a database
// walsender, which in PostgreSQL 15 runs any SQL (simple query protocol)
// as the replication role. Patroni 3.0.2 only opens replication=1 between
// nodes (postgresql/__init__.py get_replication_connection_cursor), and
// pg_hba's replication lines do not cover database walsenders: they fall
// through to pgshield's own lines ("local all all trust" on a single
// node, and in the patroni package's tests).
func TestAttackReplicationDatabaseSQL(t *testing.T) {
	if err := Admit(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{
		"user": patroni.ReplicationRole, "database": "postgres", "replication": "database",
	}}, "postgres"); err == nil {
		t.Error("the replication role's database walsender (SQL) is admitted")
	}
	y, err := patroni.Generate(patroniSettings(t))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		PG struct {
			HBA []string `yaml:"pg_hba"`
		} `yaml:"postgresql"`
	}
	if err := yaml.Unmarshal(y, &d); err != nil {
		t.Fatal(err)
	}
	for _, l := range d.PG.HBA {
		f := strings.Fields(l)
		if len(f) >= 3 && f[1] != "replication" && (f[2] == patroni.ReplicationRole || f[2] == "all") {
			if f[len(f)-1] != "reject" {
				t.Errorf("pg_hba: a database walsender of %s first matches %q", patroni.ReplicationRole, l)
			}
			break
		}
	}
}

func patroniSettings(t *testing.T) patroni.Settings {
	return patroni.Settings{
		Scope: "prod", Node: "b",
		DataDir: "/var/lib/pgshield/volume/pgdata", BinDir: "/usr/lib/postgresql/15/bin",
		SocketDir: "/run/pgshield/pg", Port: 5432,
		LinkPort: 5501, PeerSocketDir: "/run/pgshield/peers", RestPort: 8101,
		PgpassFile:   filepath.Join(t.TempDir(), "pgpass"),
		RESTPassword: "rest-password",
		HBA:          []string{"local all all trust"},
		Etcd: patroni.EtcdClient{
			Endpoints: []string{"10.77.0.11:2379", "10.77.0.12:2379", "10.77.0.13:2379"},
			CACert:    "/etc/pgshield/etcd/ca.crt", ClientCert: "/etc/pgshield/etcd/client.crt", ClientKey: "/etc/pgshield/etcd/client.key",
		},
		Timings: patroni.TestTimings,
	}
}

// A compromised peer a streams WAL under another member's
// application_name (c's, or b's own): Patroni's synchronous_standby_names
// names members, so a's walsender can stand in as the synchronous standby
// and acknowledge commits c never received; a failover to c then loses
// them. The link knows the peer's verified name and does not bind the
// walsender's application_name to it.
func TestAttackApplicationNameSpoof(t *testing.T) {
	ctx, wg := withRun(t)
	ca := newTestCA(t, "cluster")
	p := startAttackPair(t, ctx, wg, ca, nil)
	for _, app := range []string{"c", "b"} {
		m, _ := p.sendRaw(t, rawStartup(pgproto3.ProtocolVersion30, "user", patroni.ReplicationRole, "replication", "true", "application_name", app))
		if _, ok := m.(*pgproto3.AuthenticationOk); ok {
			t.Errorf("peer a's walsender admitted as application_name %q", app)
		}
	}
}

// Names Admit allows case-insensitively but reads case-sensitively:
// "Options" is not checked against the options pattern, "Replication" not
// read as replication. PostgreSQL compares these four names exactly and
// takes "Options" for an unknown GUC (FATAL after authentication), so
// this is not exploitable against PostgreSQL 15; it is a hardening point.
func TestAttackCaseVariantNames(t *testing.T) {
	for _, kv := range [][]string{
		{"user", patroni.RewindRole, "database", "postgres", "Options", "-c role=postgres"},
		{"user", patroni.RewindRole, "database", "postgres", "Replication", "true"},
		{"user", patroni.RewindRole, "database", "postgres", "User", "postgres"},
		{"user", patroni.ReplicationRole, "replication", "true", "Database", "app"},
	} {
		if admitBytes(rawStartup(pgproto3.ProtocolVersion30, kv...)) != nil {
			t.Errorf("admitted %q", kv)
		}
	}
}

// Protocol tricks before and after the startup packet.
func TestAttackProtocolTricks(t *testing.T) {
	ctx, wg := withRun(t)
	ca := newTestCA(t, "cluster")
	p := startAttackPair(t, ctx, wg, ca, nil)
	enc := func(m interface{ Encode([]byte) ([]byte, error) }) []byte { b, _ := m.Encode(nil); return b }
	ssl, gss := enc(&pgproto3.SSLRequest{}), enc(&pgproto3.GSSEncRequest{})
	ok := rawStartup(pgproto3.ProtocolVersion30, "user", patroni.ReplicationRole, "replication", "true")
	bad := rawStartup(pgproto3.ProtocolVersion30, "user", "postgres", "database", "postgres")
	lenHdr := func(n uint32, code uint32) []byte {
		b := make([]byte, 8)
		binary.BigEndian.PutUint32(b, n)
		binary.BigEndian.PutUint32(b[4:], code)
		return b
	}
	refused := map[string][]byte{
		"SSLRequest loop":          bytes.Repeat(ssl, 50),
		"GSS, SSL, GSS":            append(append(append([]byte{}, gss...), ssl...), gss...),
		"SSLRequest with a body":   append(lenHdr(12, codeSSL), 0, 0, 0, 0),
		"cancel request":           enc(&pgproto3.CancelRequest{ProcessID: 1234, SecretKey: []byte{1, 2, 3, 4}}),
		"cancel after SSLRequest":  append(append([]byte{}, ssl...), enc(&pgproto3.CancelRequest{ProcessID: 1, SecretKey: []byte{0, 0, 0, 1}})...),
		"length 0":                 lenHdr(0, pgproto3.ProtocolVersion30),
		"length -1":                lenHdr(0xffffffff, pgproto3.ProtocolVersion30),
		"length 10001":             append(lenHdr(10001, pgproto3.ProtocolVersion30), make([]byte, 9993)...),
		"length 7":                 lenHdr(7, pgproto3.ProtocolVersion30),
		"unknown negotiation code": lenHdr(8, 80877199),
		"trailing bytes in packet": func() []byte {
			b := append(append([]byte{}, ok...), 'x', 0)
			binary.BigEndian.PutUint32(b, uint32(len(b)))
			return b
		}(),
		"refused role then admitted": append(append([]byte{}, bad...), ok...),
	}
	for n, raw := range refused {
		m, c := p.sendRaw(t, raw)
		if _, isOK := m.(*pgproto3.AuthenticationOk); isOK {
			t.Errorf("%s: admitted", n)
			continue
		}
		if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
			t.Errorf("%s: connection not closed: %v", n, err)
		}
	}
	if got := p.pg.packets(); len(got) != 0 {
		t.Fatalf("PostgreSQL saw %d startups", len(got))
	}

	// An admitted startup followed at once by a second startup (for the
	// superuser) and a query: the link reads exactly one packet; what
	// follows is PostgreSQL's stream (its authentication exchange), not a
	// second startup.
	extra := append(append([]byte{}, bad...), enc(&pgproto3.Query{String: "SELECT 1"})...)
	c, err := net.Dial("unix", p.bSocket())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(append(append([]byte{}, ok...), extra...)); err != nil {
		t.Fatal(err)
	}
	authOK, _ := (&pgproto3.AuthenticationOk{}).Encode(nil)
	got := make([]byte, len(authOK))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, authOK) {
		t.Fatalf("pipelined: %q, %v", got, err)
	}
	got = make([]byte, len(extra))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, extra) {
		t.Fatalf("bytes after the startup were not relayed untouched: %v", err)
	}
	pk := p.pg.packets()
	if len(pk) != 1 || !bytes.Equal(pk[0], ok) {
		t.Fatalf("PostgreSQL's startups: %q", pk)
	}

	// A startup split into one-byte writes within the timeout is read
	// whole; one that trickles past it is cut off.
	c2, err := net.Dial("unix", p.bSocket())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	_ = c2.SetDeadline(time.Now().Add(10 * time.Second))
	began := time.Now()
	var rerr error
	for _, b := range append(append([]byte{}, ssl...), ok...) {
		if _, rerr = c2.Write([]byte{b}); rerr != nil {
			break
		}
		time.Sleep(60 * time.Millisecond) // 30 bytes: 1.8 s, past b's 500 ms
	}
	var one [1]byte
	n, _ := io.ReadFull(c2, one[:])
	if n == 1 && one[0] == 'N' {
		m, err := pgproto3.NewFrontend(c2, c2).Receive()
		if err == nil {
			t.Fatalf("a startup trickled over %v was admitted: %T", time.Since(began), m)
		}
	}
	if len(p.pg.packets()) != 1 {
		t.Fatal("the trickled startup reached PostgreSQL")
	}
}

// ---------------------------------------------------------------------
// REST: methods, request forms and smuggling through the link.

// rawHTTP writes req on a fresh connection to a's REST port for b and
// returns everything read until the link closes it or 3 s pass.
func (p *attackPair) rawHTTP(t *testing.T, req string) string {
	t.Helper()
	c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(p.bRESTPort))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(c)
	return string(b)
}

func TestAttackRESTRequests(t *testing.T) {
	ctx, wg := withRun(t)
	ca := newTestCA(t, "cluster")
	p := startAttackPair(t, ctx, wg, ca, nil)
	hdr := "Host: 127.0.0.1\r\nConnection: close\r\n"
	cases := map[string]string{
		"POST /restart":      "POST /restart HTTP/1.1\r\n" + hdr + "Content-Length: 2\r\n\r\n{}",
		"lower-case post":    "post /restart HTTP/1.1\r\n" + hdr + "Content-Length: 2\r\n\r\n{}",
		"lower-case get":     "get /restart HTTP/1.1\r\n" + hdr + "\r\n",
		"PATCH /config":      "PATCH /config HTTP/1.1\r\n" + hdr + "Content-Length: 2\r\n\r\n{}",
		"PUT /config":        "PUT /config HTTP/1.1\r\n" + hdr + "Content-Length: 2\r\n\r\n{}",
		"DELETE /switchover": "DELETE /switchover HTTP/1.1\r\n" + hdr + "\r\n",
		"OPTIONS":            "OPTIONS / HTTP/1.1\r\n" + hdr + "\r\n",
		"CONNECT":            "CONNECT 127.0.0.1:22 HTTP/1.1\r\n" + hdr + "\r\n",
		"TRACE":              "TRACE / HTTP/1.1\r\n" + hdr + "\r\n",
		"GETX":               "GETX /restart HTTP/1.1\r\n" + hdr + "\r\n",
		"GET then pipelined POST": "GET /patroni HTTP/1.1\r\nHost: x\r\n\r\n" +
			"POST /reinitialize HTTP/1.1\r\n" + hdr + "Content-Length: 15\r\n\r\n{\"force\":true}\n",
		"TE.CL smuggle": "GET /patroni HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" +
			"0\r\n\r\nPOST /restart HTTP/1.1\r\n" + hdr + "\r\n",
		"obfuscated TE": "GET /patroni HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\nContent-Length: 40\r\n\r\n" +
			"POST /restart HTTP/1.1\r\n" + hdr + "\r\n",
		"header folding": "GET /patroni HTTP/1.1\r\nHost: x\r\nX: y\r\n POST /restart HTTP/1.1\r\n\r\n",
		"HTTP/0.9":       "GET /patroni\r\n\r\n",
		"huge header":    "GET /patroni HTTP/1.1\r\nHost: x\r\nX: " + strings.Repeat("a", 40000) + "\r\n\r\n",
	}
	for n, req := range cases {
		resp := p.rawHTTP(t, req)
		t.Logf("%s: %.60q", n, resp)
		if n == "huge header" && !strings.HasPrefix(resp, "HTTP/1.1 431") {
			t.Errorf("a 40 kB header: %.60q, want 431", resp)
		}
	}
	// Reads with hostile targets: still reads of b's own API at its address.
	for _, target := range []string{"http://evil.example/restart", "/../../restart", "//evil.example/patroni", "/patroni?x=%0d%0aPOST%20/restart"} {
		resp := p.rawHTTP(t, "GET "+target+" HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
		t.Logf("GET %s: %.60q", target, resp)
	}
	for _, s := range p.restCalls() {
		if s.Method != http.MethodGet && s.Method != http.MethodHead {
			t.Errorf("Patroni saw %s %s", s.Method, s.Path)
		}
		if s.Host != p.b.cfg.REST {
			t.Errorf("Patroni saw Host %q", s.Host)
		}
	}
}

// A GET or HEAD with a body is relayed with its body. Patroni 3.0.2 never
// reads a GET's body; it answers HTTP/1.0 and closes, so the body cannot
// become a second request today. A backend that keeps HTTP/1.1
// connections open would read it as the next request (request
// smuggling past the method filter).
func TestAttackRESTBodyOnRead(t *testing.T) {
	ctx, wg := withRun(t)
	ca := newTestCA(t, "cluster")
	p := startAttackPair(t, ctx, wg, ca, nil)
	smuggled := "POST /restart HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
	p.rawHTTP(t, "GET /patroni HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: "+strconv.Itoa(len(smuggled))+"\r\n\r\n"+smuggled)
	p.rawHTTP(t, "HEAD /patroni HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"+
		strconv.FormatInt(int64(len(smuggled)), 16)+"\r\n"+smuggled+"\r\n0\r\n\r\n")
	for _, s := range p.restCalls() {
		if s.Body != 0 {
			t.Errorf("Patroni got %s %s with a %d-byte body", s.Method, s.Path, s.Body)
		}
	}
}

// A slow REST client is cut off by the header timeout (5 s).
func TestAttackRESTSlowloris(t *testing.T) {
	ctx, wg := withRun(t)
	ca := newTestCA(t, "cluster")
	p := startAttackPair(t, ctx, wg, ca, nil)
	c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(p.bRESTPort))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	began := time.Now()
	req := "GET /patroni HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-A: b\r\n", 100)
	for i := 0; i < len(req); i++ {
		if _, err := c.Write([]byte{req[i]}); err != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
		if time.Since(began) > 9*time.Second {
			t.Fatal("a header trickled for 9 s is still read")
		}
	}
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	b, _ := io.ReadAll(c)
	if strings.Contains(string(b), "200 OK") {
		t.Fatal("a trickled request was served")
	}
	if d := time.Since(began); d > 8*time.Second {
		t.Fatalf("cut off only after %v", d)
	}
}

// ---------------------------------------------------------------------
// Attacker 3: a local unprivileged user on node a.

// Any local user can connect to the loopback REST port for b. The
// outbound slots are shared by REST and the PostgreSQL sockets, and a
// REST connection that sends a GET every minute is kept: MaxConns of them
// refuse the walreceiver, pg_basebackup and pg_rewind (all as postgres,
// who alone can open the socket). They also hold b's inbound slots,
// which every other peer of b shares.
func TestAttackLocalRESTExhaustsReplication(t *testing.T) {
	ctx, wg := withRun(t)
	ca := newTestCA(t, "cluster")
	p := startAttackPair(t, ctx, wg, ca, func(a, b *Config) { a.MaxConns = 2 })
	for range 2 {
		c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(p.bRESTPort))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "GET /patroni HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	m, _ := p.sendRaw(t, rawStartup(pgproto3.ProtocolVersion30, "user", patroni.ReplicationRole, "replication", "true"))
	if _, ok := m.(*pgproto3.AuthenticationOk); !ok {
		t.Fatalf("the walreceiver got %T while a local user held 2 REST connections", m)
	}
}

// The peer sockets and their directory: 0600 and 0700, owned by
// PostgreSQL's user; another local user cannot connect.
func TestAttackPeerSocketPermissions(t *testing.T) {
	ctx, wg := withRun(t)
	ca := newTestCA(t, "cluster")
	uid, gid := os.Getuid(), os.Getgid()
	if os.Geteuid() == 0 {
		uid, gid = 4242, 4242
	}
	p := startAttackPair(t, ctx, wg, ca, func(a, b *Config) { a.SocketUID, a.SocketGID = uid, gid })
	for path, mode := range map[string]os.FileMode{p.aPeerDir: 0o700, p.bSocket(): 0o600} {
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Perm() != mode || int(st.Uid) != uid || int(st.Gid) != gid {
			t.Errorf("%s: %v %d:%d, want %v %d:%d", path, fi.Mode(), st.Uid, st.Gid, mode, uid, gid)
		}
	}
	if os.Geteuid() == 0 {
		// Another local user (fsuid 65534) cannot connect; the owner can.
		if err := dialAsFsuid(65534, p.bSocket()); !errors.Is(err, syscall.EACCES) {
			t.Errorf("uid 65534 dialing the peer socket: %v, want EACCES", err)
		}
		if err := dialAsFsuid(uid, p.bSocket()); err != nil {
			t.Errorf("the socket's owner cannot dial it: %v", err)
		}
	}
}

// dialAsFsuid connects to a Unix socket with the file-system identity of
// uid (the calling thread only), as another local user would.
func dialAsFsuid(uid int, path string) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	syscall.RawSyscall(syscall.SYS_SETFSGID, uintptr(uid), 0, 0)
	syscall.RawSyscall(syscall.SYS_SETFSUID, uintptr(uid), 0, 0)
	defer syscall.RawSyscall(syscall.SYS_SETFSGID, 0, 0, 0)
	defer syscall.RawSyscall(syscall.SYS_SETFSUID, 0, 0, 0)
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	return syscall.Connect(fd, &syscall.SockaddrUnix{Name: path})
}

// A peer socket directory that exists already is adopted whatever its
// owner and whether it is a symlink: the link chmods and chowns what the
// path leads to. With a directory a local user made (in a world-writable
// parent, or left from before), or a symlink to one, that user keeps the
// directory's contents and races the chmod/chown.
func TestAttackPeerDirPreCreated(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a directory of another user")
	}
	ctx, wg := withRun(t)
	ca := newTestCA(t, "cluster")
	base, err := os.MkdirTemp("", "pgsh-atk-pre-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(base)
	evil := filepath.Join(base, "evil")
	if err := os.Mkdir(evil, 0o777); err != nil {
		t.Fatal(err)
	}
	_ = os.Chown(evil, 65534, 65534)
	link := filepath.Join(base, "peers")
	if err := os.Symlink(evil, link); err != nil {
		t.Fatal(err)
	}
	n, err := New(Config{Identity: ca.node(t, "a"), Listen: "127.0.0.1:0", Socket: "/nonexistent/s", REST: "127.0.0.1:1", Database: "postgres",
		PeerSocketDir: link, SocketUID: 4242, SocketGID: 4242,
		Peers: []Peer{{Name: "b", Addr: "127.0.0.1:1", PGPort: 5602, RESTPort: freePort(t)}}})
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	wg.Add(1)
	go func() { defer wg.Done(); errc <- n.Serve(cctx) }()
	select {
	case <-n.Ready():
		cancel()
		<-errc
		t.Errorf("the link served its peer sockets in %s, a symlink to a directory uid 65534 made", link)
	case err := <-errc:
		cancel()
		t.Logf("refused: %v", err)
	}
}

// listenUnix creates each socket in a directory already chowned to
// PostgreSQL's user, then chmods and chowns it by path, following
// symlinks. Whoever runs as that user (Patroni, PostgreSQL, anything they
// start) can swap the fresh socket for a symlink in between: the root
// daemon then chowns any file to that user (privilege escalation to root
// at the link's next start).
func TestAttackPeerSocketSymlinkRace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the race ends in a chown")
	}
	ctx, _ := withRun(t)
	ca := newTestCA(t, "cluster")
	id := ca.node(t, "a")
	dir, err := os.MkdirTemp("", "pgsh-atk-race-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	victimDir := t.TempDir()
	victim := filepath.Join(victimDir, "shadow")
	if err := os.WriteFile(victim, []byte("root:secret"), 0o640); err != nil {
		t.Fatal(err)
	}
	peers := filepath.Join(dir, "peers")
	sock := filepath.Join(peers, ".s.PGSQL.5602")
	restPort := freePort(t)

	// The attacker, as PostgreSQL's user would: watch for the socket and
	// rename a symlink over it.
	stop := make(chan struct{})
	var awg sync.WaitGroup
	awg.Add(1)
	go func() {
		defer awg.Done()
		tmp := filepath.Join(peers, "x")
		for {
			select {
			case <-stop:
				return
			default:
			}
			if fi, err := os.Lstat(sock); err == nil && fi.Mode()&os.ModeSocket != 0 {
				_ = os.Symlink(victim, tmp)
				_ = os.Rename(tmp, sock)
			}
		}
	}()
	won := 0
	tries := 0
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && won == 0; tries++ {
		n, err := New(Config{Identity: id, Listen: "127.0.0.1:0", Socket: "/nonexistent/s", REST: "127.0.0.1:1", Database: "postgres",
			PeerSocketDir: peers, SocketUID: 4242, SocketGID: 4242,
			Peers: []Peer{{Name: "b", Addr: "127.0.0.1:1", PGPort: 5602, RESTPort: restPort}}})
		if err != nil {
			t.Fatal(err)
		}
		cctx, cancel := context.WithCancel(ctx)
		errc := make(chan error, 1)
		go func() { errc <- n.Serve(cctx) }()
		select {
		case <-n.Ready():
		case <-errc:
			cancel()
			continue
		}
		cancel()
		<-errc
		var st syscall.Stat_t
		if syscall.Stat(victim, &st) == nil && st.Uid == 4242 {
			won++
		}
	}
	close(stop)
	awg.Wait()
	if won > 0 {
		t.Errorf("after %d link starts, %s (root's) belongs to uid 4242, PostgreSQL's user", tries, victim)
	} else {
		t.Logf("race not won in %d starts", tries)
	}
}

// A local user who binds a peer's REST port on loopback first: the link
// refuses to start rather than share it (fail closed). The squatter then
// answers Patroni's GET /patroni for that peer; see the report.
func TestAttackRESTPortSquat(t *testing.T) {
	ctx, wg := withRun(t)
	ca := newTestCA(t, "cluster")
	squat, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer squat.Close()
	port := squat.Addr().(*net.TCPAddr).Port
	n, err := New(Config{Identity: ca.node(t, "a"), Listen: "127.0.0.1:0", Socket: "/nonexistent/s", REST: "127.0.0.1:1", Database: "postgres",
		PeerSocketDir: t.TempDir(), Peers: []Peer{{Name: "b", Addr: "127.0.0.1:1", PGPort: 5602, RESTPort: port}}})
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	wg.Add(1)
	go func() { defer wg.Done(); errc <- n.Serve(ctx) }()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("Serve returned nil with its REST port taken")
		}
	case <-n.Ready():
		t.Fatal("the link started with its REST port held by someone else")
	case <-time.After(5 * time.Second):
		t.Fatal("Serve neither failed nor started")
	}
}

// Patroni's own REST API listens on the node's loopback with no
// authentication (restapi has no authentication in the generated YAML):
// any local user can POST /restart, /reinitialize (wipes the data
// directory and clones again), /switchover, /failover, PATCH /config,
// which the link's read-only filter keeps from peers.
func TestAttackPatroniRESTUnauthenticated(t *testing.T) {
	y, err := patroni.Generate(patroniSettings(t))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Restapi map[string]any `yaml:"restapi"`
	}
	if err := yaml.Unmarshal(y, &d); err != nil {
		t.Fatal(err)
	}
	if _, ok := d.Restapi["authentication"]; !ok {
		t.Errorf("restapi %v: no authentication for unsafe methods", d.Restapi)
	}
}
