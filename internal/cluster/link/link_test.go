package link

import (
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
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/cluster/patroni"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/tlsconf"
)

// checkGoroutines fails the test if goroutines it started still run 2 s
// after it ends. Call it first so that its cleanup runs last.
func checkGoroutines(t *testing.T) {
	t.Helper()
	base := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(2 * time.Second)
		for runtime.NumGoroutine() > base {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<16)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("%d goroutines still running, %d before the test:\n%s", runtime.NumGoroutine(), base, buf)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// testCA is a cluster CA in files, as the etcd package writes it.
type testCA struct {
	dir, cert, key string
	ca             *x509.Certificate
	caKey          *ecdsa.PrivateKey
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	ca, key, err := tlsconf.NewCA("test CA "+name, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	c := &testCA{dir: dir, cert: filepath.Join(dir, "ca.crt"), key: filepath.Join(dir, "ca.key"), ca: ca, caKey: key}
	kp, _ := tlsconf.EncodeKey(key)
	if err := config.WriteFileAtomic(c.key, kp, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := config.WriteFileAtomic(c.cert, tlsconf.EncodeCert(ca.Raw), 0o600); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *testCA) node(t *testing.T, name string) *Identity {
	t.Helper()
	cert, key := filepath.Join(c.dir, name, "node.crt"), filepath.Join(c.dir, name, "node.key")
	if err := IssueNode(c.cert, c.key, name, cert, key, time.Now()); err != nil {
		t.Fatal(err)
	}
	id, err := LoadIdentity(name, c.cert, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// member is a certificate like an etcd member's: the cluster CA, both
// usages, an IP address and the node's name as common name.
func (c *testCA) member(t *testing.T, cn string) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.ca, &key.PublicKey, c.caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// fakePG is a PostgreSQL socket that records startup users and answers
// AuthenticationOk, then echoes.
type fakePG struct {
	path string
	mu   sync.Mutex
	seen []map[string]string
}

func startFakePG(t *testing.T, ctx context.Context, wg *sync.WaitGroup) *fakePG {
	dir, err := os.MkdirTemp("", "pgsh-link-") // short: socket paths are limited to 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	f := &fakePG{path: filepath.Join(dir, ".s.PGSQL.5432")}
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
				go func() { <-ctx.Done(); c.Close() }()
				pkt, err := readStartup(c)
				if err != nil {
					return
				}
				var m pgproto3.StartupMessage
				if m.Decode(pkt[4:]) != nil {
					return
				}
				f.mu.Lock()
				f.seen = append(f.seen, m.Parameters)
				f.mu.Unlock()
				// AuthenticationOk alone: whatever follows is the echo.
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

func (f *fakePG) users() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, p := range f.seen {
		out = append(out, p["user"])
	}
	return out
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func startNode(t *testing.T, ctx context.Context, wg *sync.WaitGroup, cfg Config) *Node {
	t.Helper()
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	wg.Add(1)
	go func() { defer wg.Done(); errc <- n.Serve(ctx) }()
	select {
	case <-n.Ready():
	case err := <-errc:
		t.Fatalf("Serve: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("the link is not ready after 5 s")
	}
	return n
}

func startupPacket(params map[string]string) []byte {
	b, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: params}).Encode(nil)
	return b
}

// connectVia sends a startup packet (after an SSLRequest, as libpq's
// sslmode=prefer does over TCP) on c and returns the first message back.
func connectVia(t *testing.T, c net.Conn, params map[string]string, sslFirst bool) pgproto3.BackendMessage {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if sslFirst {
		b, _ := (&pgproto3.SSLRequest{}).Encode(nil)
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		var a [1]byte
		if _, err := io.ReadFull(c, a[:]); err != nil || a[0] != 'N' {
			t.Fatalf("SSLRequest answer %q, %v; want 'N'", a[0], err)
		}
	}
	if _, err := c.Write(startupPacket(params)); err != nil {
		t.Fatal(err)
	}
	fe := pgproto3.NewFrontend(c, c)
	m, err := fe.Receive()
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	return m
}

type pair struct {
	a, b       *Node
	pg         *fakePG
	bRESTPort  int // where a reaches b's REST API
	bPGPort    int
	aPeerDir   string
	rest       *http.Server
	restCalled chan string
}

func (p *pair) bSocket() string {
	return filepath.Join(p.aPeerDir, ".s.PGSQL."+strconv.Itoa(p.bPGPort))
}

// startPair runs nodes a and b on loopback, b with a fake PostgreSQL and a
// fake Patroni REST API.
func startPair(t *testing.T, ctx context.Context, wg *sync.WaitGroup, ca *testCA, mod func(a, b *Config)) *pair {
	t.Helper()
	p := &pair{pg: startFakePG(t, ctx, wg), restCalled: make(chan string, 8)}
	restLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.rest = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.restCalled <- r.URL.Path
		fmt.Fprint(w, `{"state":"running"}`)
	}), ReadHeaderTimeout: 5 * time.Second}
	wg.Add(1)
	go func() { defer wg.Done(); _ = p.rest.Serve(restLn) }()
	go func() { <-ctx.Done(); p.rest.Close() }()

	peerDirB, err := os.MkdirTemp("", "pgsh-link-b-")
	if err != nil {
		t.Fatal(err)
	}
	p.aPeerDir, err = os.MkdirTemp("", "pgsh-link-a-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(peerDirB); os.RemoveAll(p.aPeerDir) })
	p.bPGPort, p.bRESTPort = 5602, freePort(t)
	bCfg := Config{
		Identity: ca.node(t, "b"), Listen: "127.0.0.1:0", Socket: p.pg.path, REST: restLn.Addr().String(), Database: "postgres",
		Peers:         []Peer{{Name: "a", Addr: "127.0.0.1:1", PGPort: 5601, RESTPort: freePort(t)}},
		PeerSocketDir: peerDirB, HandshakeTimeout: 500 * time.Millisecond,
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

func withRun(t *testing.T) (context.Context, *sync.WaitGroup) {
	checkGoroutines(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	return ctx, &wg
}

func TestLinkRelaysAdmittedRoles(t *testing.T) {
	ctx, wg := withRun(t)
	ca := newTestCA(t, "cluster")
	p := startPair(t, ctx, wg, ca, nil)

	cases := []struct {
		name   string
		params map[string]string
		ok     bool
	}{
		{"walreceiver", map[string]string{"user": patroni.ReplicationRole, "replication": "true", "application_name": "a"}, true},
		{"walreceiver named as another member", map[string]string{"user": patroni.ReplicationRole, "replication": "true", "application_name": "node1"}, false},
		{"walreceiver, Application_Name of b", map[string]string{"user": patroni.ReplicationRole, "replication": "true", "Application_Name": "b"}, false},
		{"rewind role, any application_name", map[string]string{"user": patroni.RewindRole, "database": "postgres", "application_name": "pg_rewind"}, true},
		{"pg_basebackup", map[string]string{"user": patroni.ReplicationRole, "database": "replication", "replication": "true", "application_name": "pg_basebackup"}, true},
		{"database walsender (runs SQL)", map[string]string{"user": patroni.ReplicationRole, "database": "postgres", "replication": "database"}, false},
		{"walreceiver, replication=on", map[string]string{"user": patroni.ReplicationRole, "replication": "on"}, true},
		{"replication role, replication=o", map[string]string{"user": patroni.ReplicationRole, "replication": "o"}, false},
		{"rewind role, replication=of", map[string]string{"user": patroni.RewindRole, "database": "postgres", "replication": "off"}, false},
		{"pg_rewind", map[string]string{"user": patroni.RewindRole, "database": "postgres", "options": "-c statement_timeout=0"}, true},
		{"patroni check", map[string]string{"user": patroni.RewindRole, "database": "postgres", "options": "-c statement_timeout=2000 -c search_path=pg_catalog", "fallback_application_name": "Patroni"}, true},
		{"rewind role, search_path elsewhere", map[string]string{"user": patroni.RewindRole, "database": "postgres", "options": "-c search_path=public"}, false},
		{"superuser", map[string]string{"user": "postgres", "database": "postgres"}, false},
		{"an administrator", map[string]string{"user": "pgadmin", "database": "postgres"}, false},
		{"replication role, SQL session", map[string]string{"user": patroni.ReplicationRole, "database": "postgres"}, false},
		{"replication role, another database", map[string]string{"user": patroni.ReplicationRole, "database": "app", "replication": "database"}, false},
		{"rewind role, another database", map[string]string{"user": patroni.RewindRole, "database": "app"}, false},
		{"rewind role, walsender", map[string]string{"user": patroni.RewindRole, "replication": "true"}, false},
		{"rewind role, role option", map[string]string{"user": patroni.RewindRole, "database": "postgres", "options": "-c role=postgres"}, false},
		{"unknown parameter", map[string]string{"user": patroni.RewindRole, "database": "postgres", "search_path": "evil"}, false},
		{"protocol extension", map[string]string{"user": patroni.ReplicationRole, "replication": "true", "_pq_.x": "1"}, false},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("unix", p.bSocket())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			m := connectVia(t, c, tc.params, i%2 == 0)
			switch m := m.(type) {
			case *pgproto3.AuthenticationOk:
				if !tc.ok {
					t.Fatalf("%v admitted", tc.params)
				}
			case *pgproto3.ErrorResponse:
				if tc.ok || m.Code != "28000" || m.Severity != "FATAL" {
					t.Fatalf("%v: ErrorResponse %s %s %q", tc.params, m.Severity, m.Code, m.Message)
				}
				if _, err := c.Read(make([]byte, 1)); err == nil {
					t.Fatal("the link did not close a refused connection")
				}
			default:
				t.Fatalf("first message %T", m)
			}
		})
	}
	got := p.pg.users()
	want := 0
	for _, tc := range cases {
		if tc.ok {
			want++
		}
	}
	if len(got) != want {
		t.Fatalf("PostgreSQL saw %d startups %v, want %d", len(got), got, want)
	}

	// After admission the stream is PostgreSQL's: bytes after the startup
	// message reach it untouched (the fake echoes them).
	c, err := net.Dial("unix", p.bSocket())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	connectVia(t, c, cases[0].params, false)
	msg := bytes.Repeat([]byte("wal"), 50000)
	go c.Write(msg)
	got2 := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got2); err != nil || !bytes.Equal(got2, msg) {
		t.Fatalf("relay: %v", err)
	}

	// REST: a's loopback port for b reaches b's Patroni.
	cl := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	resp, err := cl.Get("http://127.0.0.1:" + strconv.Itoa(p.bRESTPort) + "/patroni")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "running") || <-p.restCalled != "/patroni" {
		t.Fatalf("REST through the link: %d %s", resp.StatusCode, body)
	}
	// Nothing that changes a node is relayed: b's Patroni never sees it.
	for _, m := range []string{http.MethodPost, http.MethodPatch, http.MethodDelete, http.MethodPut} {
		req, _ := http.NewRequest(m, "http://127.0.0.1:"+strconv.Itoa(p.bRESTPort)+"/reinitialize", strings.NewReader(`{"force":true}`))
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s /reinitialize through the link: %d, want 403", m, resp.StatusCode)
		}
	}
	// Keep-alive: two reads on one connection both reach b.
	kc := &http.Client{Timeout: 5 * time.Second}
	for range 2 {
		resp, err := kc.Get("http://127.0.0.1:" + strconv.Itoa(p.bRESTPort) + "/health")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if got := <-p.restCalled; got != "/health" {
			t.Fatalf("b's REST API saw %q", got)
		}
	}
	kc.CloseIdleConnections()
	select {
	case path := <-p.restCalled:
		t.Fatalf("b's REST API saw %s", path)
	default:
	}
}

// dialB opens a TLS 1.3 connection to b's link with cert (none when nil)
// and reports whether b accepted it (an answer to an SSLRequest came).
func dialB(t *testing.T, addr string, roots *x509.CertPool, cert *tls.Certificate, mod func(*tls.Config)) error {
	t.Helper()
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots, ServerName: NodeDNSName("b"), NextProtos: []string{ProtoPostgres}}
	if cert != nil {
		// Sent whatever CAs b names as acceptable, as an attacker would.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	if mod != nil {
		mod(cfg)
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	b, _ := (&pgproto3.SSLRequest{}).Encode(nil)
	if _, err := c.Write(b); err != nil {
		return err
	}
	var a [1]byte
	if _, err := io.ReadFull(c, a[:]); err != nil {
		return err
	}
	return nil
}

func TestLinkRefusesOtherCertificates(t *testing.T) {
	ctx, wg := withRun(t)
	ca := newTestCA(t, "cluster")
	other := newTestCA(t, "other")
	p := startPair(t, ctx, wg, ca, nil)
	addr := p.b.Addr().String()
	roots := x509.NewCertPool()
	roots.AddCert(ca.ca)

	leaf := func(id *Identity) *tls.Certificate { c := id.cert; return &c }
	if err := dialB(t, addr, roots, leaf(ca.node(t, "a")), nil); err != nil {
		t.Fatalf("node a's own certificate: %v", err)
	}
	member := ca.member(t, "a")
	refused := map[string]struct {
		cert *tls.Certificate
		mod  func(*tls.Config)
	}{
		"no certificate":                 {nil, nil},
		"another CA's node a":            {leaf(other.node(t, "a")), nil},
		"the cluster CA's node c":        {leaf(ca.node(t, "c")), nil},
		"node b itself":                  {leaf(ca.node(t, "b")), nil},
		"an etcd member certificate (a)": {&member, nil},
		"TLS 1.2":                        {leaf(ca.node(t, "a")), func(c *tls.Config) { c.MaxVersion = tls.VersionTLS12 }},
		"no ALPN":                        {leaf(ca.node(t, "a")), func(c *tls.Config) { c.NextProtos = nil }},
		"unknown ALPN":                   {leaf(ca.node(t, "a")), func(c *tls.Config) { c.NextProtos = []string{"postgresql"} }},
	}
	for name, tc := range refused {
		if err := dialB(t, addr, roots, tc.cert, tc.mod); err == nil {
			t.Errorf("%s: accepted", name)
		} else {
			t.Logf("%s: refused (%v)", name, err)
		}
	}
	if got := p.pg.users(); len(got) != 0 {
		t.Fatalf("PostgreSQL saw %v", got)
	}
}

// The dialing side pins the peer's name: a listener with the cluster CA's
// certificate for another node gets no relayed connection.
func TestLinkPinsPeerName(t *testing.T) {
	ctx, wg := withRun(t)
	ca := newTestCA(t, "cluster")
	// c poses as b: a's peer "b" points at c's listener.
	p := startPair(t, ctx, wg, ca, func(a, b *Config) {
		b.Identity = ca.node(t, "c")
	})
	c, err := net.Dial("unix", p.bSocket())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = c.Write(startupPacket(map[string]string{"user": patroni.ReplicationRole, "replication": "true"}))
	if n, err := c.Read(make([]byte, 64)); err == nil {
		t.Fatalf("a relayed to a node that is not b: %d bytes back", n)
	}
	if got := p.pg.users(); len(got) != 0 {
		t.Fatalf("PostgreSQL saw %v", got)
	}
}

func TestLinkBounds(t *testing.T) {
	ctx, wg := withRun(t)
	ca := newTestCA(t, "cluster")
	p := startPair(t, ctx, wg, ca, func(a, b *Config) { b.MaxConns = 1 })
	addr := p.b.Addr().String()

	// A peer that never finishes the handshake is cut off.
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	_ = raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := raw.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a silent peer was not cut off: %v", err)
	}
	if d := time.Since(began); d > 3*time.Second {
		t.Fatalf("cut off after %v, want about the 500 ms handshake timeout", d)
	}
	raw.Close()

	// A node that sends a startup packet longer than PostgreSQL allows.
	c1, err := net.Dial("unix", p.bSocket())
	if err != nil {
		t.Fatal(err)
	}
	hdr := make([]byte, 8)
	binary.BigEndian.PutUint32(hdr, 1<<20)
	binary.BigEndian.PutUint32(hdr[4:], pgproto3.ProtocolVersionNumber)
	_, _ = c1.Write(hdr)
	_ = c1.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c1.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("an oversized startup packet was not refused: %v", err)
	}
	c1.Close()

	// One connection at a time: the second is closed while the first lives.
	// (The refused connections above free their slot just after closing.)
	var held net.Conn
	for deadline := time.Now().Add(3 * time.Second); ; {
		c, err := net.Dial("unix", p.bSocket())
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = c.Write(startupPacket(map[string]string{"user": patroni.ReplicationRole, "replication": "true"}))
		if m, err := pgproto3.NewFrontend(c, c).Receive(); err == nil {
			if _, ok := m.(*pgproto3.AuthenticationOk); !ok {
				t.Fatalf("first connection: %T", m)
			}
			held = c
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("first connection not admitted")
		}
		time.Sleep(50 * time.Millisecond)
	}
	defer held.Close()
	c2, err := net.Dial("unix", p.bSocket())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	_ = c2.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = c2.Write(startupPacket(map[string]string{"user": patroni.ReplicationRole, "replication": "true"}))
	if n, err := c2.Read(make([]byte, 64)); err == nil {
		t.Fatalf("a connection over the limit was relayed: %d bytes", n)
	}
}

func TestNegotiate(t *testing.T) {
	enc := func(m interface{ Encode([]byte) ([]byte, error) }) []byte { b, _ := m.Encode(nil); return b }
	startup := startupPacket(map[string]string{"user": "u"})
	cases := map[string]struct {
		in      []byte
		answers string
		err     bool
	}{
		"startup":               {startup, "", false},
		"ssl then startup":      {append(enc(&pgproto3.SSLRequest{}), startup...), "N", false},
		"gss, ssl then startup": {append(append(enc(&pgproto3.GSSEncRequest{}), enc(&pgproto3.SSLRequest{})...), startup...), "NN", false},
		"three negotiations":    {append(append(enc(&pgproto3.SSLRequest{}), enc(&pgproto3.SSLRequest{})...), enc(&pgproto3.SSLRequest{})...), "NN", true},
		"cancel":                {enc(&pgproto3.CancelRequest{ProcessID: 1, SecretKey: []byte{1, 2, 3, 4}}), "", true},
		"short":                 {[]byte{0, 0, 0, 4}, "", true},
		"truncated":             {startup[:len(startup)-3], "", true},
		"bad version":           {[]byte{0, 0, 0, 8, 0, 2, 0, 0}, "", true},
	}
	for name, tc := range cases {
		var out bytes.Buffer
		rw := struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(tc.in), &out}
		pkt, m, err := negotiate(rw)
		if (err != nil) != tc.err || out.String() != tc.answers {
			t.Errorf("%s: negotiate = %v, answers %q; want error %v, answers %q", name, err, out.String(), tc.err, tc.answers)
			continue
		}
		if err == nil && (m.Parameters["user"] != "u" || !bytes.Equal(pkt, startup)) {
			t.Errorf("%s: packet %x, want %x", name, pkt, startup)
		}
	}
}

func FuzzNegotiate(f *testing.F) {
	f.Add(startupPacket(map[string]string{"user": patroni.ReplicationRole, "replication": "true"}))
	f.Add([]byte{0, 0, 0, 8, 4, 210, 22, 47})
	f.Fuzz(func(t *testing.T, b []byte) {
		rw := struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(b), io.Discard}
		pkt, m, err := negotiate(rw)
		if err == nil {
			if len(pkt) > maxStartupLen {
				t.Fatalf("packet of %d bytes", len(pkt))
			}
			_ = Admit(m, "postgres")
		}
	})
}

func TestIdentity(t *testing.T) {
	ca := newTestCA(t, "cluster")
	id := ca.node(t, "node1")
	if id.Name != "node1" || id.cert.Leaf.DNSNames[0] != "node1.node.pgshield.invalid" {
		t.Fatalf("identity %s %v", id.Name, id.cert.Leaf.DNSNames)
	}
	for _, f := range []string{filepath.Join(ca.dir, "node1", "node.key"), filepath.Join(ca.dir, "node1", "node.crt")} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v", f, fi.Mode(), err)
		}
	}
	if fi, _ := os.Stat(filepath.Join(ca.dir, "node1")); fi.Mode().Perm() != 0o700 {
		t.Errorf("directory mode %v", fi.Mode())
	}
	// Node 1's certificate cannot be loaded as node 2's.
	if _, err := LoadIdentity("node2", ca.cert, filepath.Join(ca.dir, "node1", "node.crt"), filepath.Join(ca.dir, "node1", "node.key")); err == nil {
		t.Fatal("node1's certificate loaded as node2's")
	}
	if err := IssueNode(ca.cert, ca.key, "Bad_Name", filepath.Join(ca.dir, "x.crt"), filepath.Join(ca.dir, "x.key"), time.Now()); err == nil {
		t.Fatal("bad node name accepted")
	}
	other := newTestCA(t, "other")
	if err := IssueNode(ca.cert, other.key, "n", filepath.Join(ca.dir, "y", "n.crt"), filepath.Join(ca.dir, "y", "n.key"), time.Now()); err == nil {
		t.Fatal("issued with another CA's key")
	}
}

// An existing peer socket directory of another user, or writable by
// others, is refused rather than adopted (the hostile review's
// pre-created directory; the symlink case is TestAttackPeerDirPreCreated).
func TestPeerDirRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a directory of another user")
	}
	ca := newTestCA(t, "cluster")
	cases := map[string]struct {
		uid  int
		mode os.FileMode
		ok   bool
	}{
		"another user's":      {65534, 0o700, false},
		"root's, 0777":        {0, 0o777, false},
		"root's, 0700":        {0, 0o700, true},
		"the socket user's":   {4242, 0o700, true},
		"socket user's, 0770": {4242, 0o770, false},
	}
	for name, tc := range cases {
		d := filepath.Join(t.TempDir(), "peers")
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		_ = os.Chmod(d, tc.mode)
		_ = os.Chown(d, tc.uid, tc.uid)
		n, err := New(Config{Identity: ca.node(t, "a"), Listen: "127.0.0.1:0", Socket: "/nonexistent/s", REST: "127.0.0.1:1", Database: "postgres",
			PeerSocketDir: d, SocketUID: 4242, SocketGID: 4242})
		if err != nil {
			t.Fatal(err)
		}
		dir, err := n.openPeerDir()
		if (err == nil) != tc.ok {
			t.Errorf("%s: openPeerDir error = %v; want ok %v", name, err, tc.ok)
		}
		if err == nil {
			_ = dir.Close()
		}
	}
}

// Connections still in the handshake are bounded per source address: a
// third silent connection from one address is closed at once while two
// hold their slots.
func TestLinkHandshakesPerSource(t *testing.T) {
	ctx, wg := withRun(t)
	ca := newTestCA(t, "cluster")
	p := startPair(t, ctx, wg, ca, func(a, b *Config) { b.MaxHandshakesPerSource = 2; b.HandshakeTimeout = 3 * time.Second })
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range 2 {
		c, err := net.Dial("tcp", p.b.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	time.Sleep(100 * time.Millisecond)
	c, err := net.Dial("tcp", p.b.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a third handshake from one address was kept: %v", err)
	}
}

// A compromised peer's refused startups (after authentication) are
// logged at most once a second, with a count of those left out.
func TestLinkRefusalLogLimited(t *testing.T) {
	ctx, wg := withRun(t)
	ca := newTestCA(t, "cluster")
	var buf lockedBuffer
	p := startAttackPair(t, ctx, wg, ca, func(a, b *Config) {
		b.Log = slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	for range 30 {
		m, _ := p.sendRaw(t, startupPacket(map[string]string{"user": "postgres", "database": "postgres"}))
		if _, ok := m.(*pgproto3.ErrorResponse); !ok {
			t.Fatalf("superuser startup: %T, want a refusal", m)
		}
	}
	if n := strings.Count(buf.String(), "Node link connection refused."); n == 0 || n > 3 {
		t.Errorf("30 refusals logged %d times, want 1 to 3:\n%s", n, buf.String())
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A peer socket directory whose parent is missing is made, parent too.
func TestPeerDirMadeWithParent(t *testing.T) {
	ca := newTestCA(t, "cluster")
	d := filepath.Join(t.TempDir(), "run", "peers")
	n, err := New(Config{Identity: ca.node(t, "a"), Listen: "127.0.0.1:0", Socket: "/nonexistent/s", REST: "127.0.0.1:1", Database: "postgres",
		PeerSocketDir: d, SocketUID: os.Getuid(), SocketGID: os.Getgid()})
	if err != nil {
		t.Fatal(err)
	}
	dir, err := n.openPeerDir()
	if err != nil {
		t.Fatal(err)
	}
	if err := n.handPeerDir(dir); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(d); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Fatalf("%s: %v %v, want a 0700 directory", d, fi, err)
	}
}

// TestLinkSecrets: a node gives the cluster's secrets only to a peer it
// lists, only while a join window is open for it, once; to no other node
// of the CA, nor another CA's; never without Secrets set; refusals hold
// no slot; the joining node takes them only from the node it named.
func TestLinkSecrets(t *testing.T) {
	ctx, wg := withRun(t)
	ca := newTestCA(t, "cluster")
	bundle := []byte(`{"replication":"r-0123456789abcdef","rewind":"w-0123456789abcdef","config":"c-0123456789abcdef"}`)
	p := startPair(t, ctx, wg, ca, func(a, b *Config) {
		b.Secrets = func() []byte { return bundle }
		b.MaxConns = 2
	})
	bAddr := p.b.Addr().String()
	aID := ca.node(t, "a")
	// No window: refused, many times over (more than b's slots).
	for range 5 {
		if got, err := FetchSecrets(ctx, aID, "b", bAddr); err == nil || len(got) != 0 {
			t.Fatalf("a got %q with no join window open", got)
		}
	}
	if err := p.b.AllowJoin("x", time.Now().Add(time.Minute)); err == nil {
		t.Error("a join window opened for a node b does not list")
	}
	if err := p.b.AllowJoin("a", time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	// Another node of the same CA, not b's peer: refused in the handshake,
	// and the window stays open.
	if got, err := FetchSecrets(ctx, ca.node(t, "x"), "b", bAddr); err == nil {
		t.Errorf("a node b does not list got %q", got)
	}
	// Another CA's node named a: refused.
	if got, err := FetchSecrets(ctx, newTestCA(t, "other").node(t, "a"), "b", bAddr); err == nil {
		t.Errorf("another CA's node got %q", got)
	}
	// b's address answered by a node that is not the one named: refused.
	if got, err := FetchSecrets(ctx, ca.node(t, "b"), "a", bAddr); err == nil {
		t.Errorf("a node asking for a's secrets at b's address got %q", got)
	}
	got, err := FetchSecrets(ctx, aID, "b", bAddr)
	if err != nil || string(got) != string(bundle) {
		t.Fatalf("a (b's peer, window open) got %q, %v", got, err)
	}
	// Once: the window closed with it.
	if got, err := FetchSecrets(ctx, aID, "b", bAddr); err == nil {
		t.Errorf("a got the secrets twice in one window: %q", got)
	}
	// A window past its end gives nothing.
	if err := p.b.AllowJoin("a", time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	if got, err := FetchSecrets(ctx, aID, "b", bAddr); err == nil {
		t.Errorf("a got the secrets in a window that had ended: %q", got)
	}
	// a serves no secrets (Secrets nil), window or not.
	if err := p.a.AllowJoin("b", time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if got, err := FetchSecrets(ctx, ca.node(t, "b"), "a", p.a.Addr().String()); err == nil || len(got) != 0 {
		t.Errorf("a node without Secrets gave %q, %v", got, err)
	}
}
