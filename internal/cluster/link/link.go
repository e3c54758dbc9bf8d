// Package link is the channel between the nodes of a pgshield
// high-availability cluster: mutual TLS 1.3 with node certificates from the
// cluster CA, each end pinned to the other's node name.
//
// PostgreSQL has no TCP port on any node, so what Patroni runs between
// nodes goes through the link:
//
//   - PostgreSQL connections (walreceiver, pg_basebackup, pg_rewind, and
//     Patroni's checks of the leader): a replica connects to a Unix socket
//     per peer, <PeerSocketDir>/.s.PGSQL.<peer's port>, which the link
//     relays over TLS to that peer; the receiving link reads the startup
//     packet, admits only the replication and rewind roles (Admit), and
//     relays to its own PostgreSQL socket, where pg_hba asks for SCRAM.
//   - Patroni's REST calls: Patroni 3.0.2 serves and calls its REST API over
//     TCP only (patroni/api.py binds with getaddrinfo; patroni/request.py
//     is urllib3 on api_url). Each node's Patroni listens on loopback of
//     the node, on a port of its own; every other node's link listens on
//     its own loopback at that port and relays to it. The receiving link
//     passes reads only (rest.go).
//
// How Patroni is made to use the per-peer sockets, and why Patroni and
// PostgreSQL run in different network namespaces, is in
// internal/cluster/patroni (Settings.PeerSocketDir).
package link

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"
)

// Peer is another node of the cluster.
type Peer struct {
	Name string
	// Addr is host:port of the peer's link listener.
	Addr string
	// PGPort names the peer's socket here: <PeerSocketDir>/.s.PGSQL.<PGPort>.
	// It is the port in the peer's advertised postgresql.connect_address.
	PGPort int
	// RESTPort is where the peer's Patroni REST API is reached on this
	// node's loopback (the peer's restapi.connect_address).
	RESTPort int
}

// Config is one node's link.
type Config struct {
	Identity *Identity
	// Listen is host:port of this node's link listener (its cluster
	// address; never PostgreSQL's namespace).
	Listen string
	// Socket is this node's own PostgreSQL socket file.
	Socket string
	// REST is host:port of this node's own Patroni REST API (loopback).
	REST string
	// Database is the database the rewind role may open (Patroni's
	// postgresql.database, "postgres").
	Database string
	Peers    []Peer
	// PeerSocketDir holds one socket per peer (see Peer.PGPort); 0700,
	// owned by SocketUID/SocketGID (Patroni's and PostgreSQL's user).
	PeerSocketDir        string
	SocketUID, SocketGID int

	// MaxConns bounds admitted connections of each protocol (PostgreSQL,
	// REST) in each direction (64 when zero): REST keep-alives, which any
	// local user can open, never take PostgreSQL's slots. Inbound, a
	// connection takes its slot only once TLS and admission are done.
	MaxConns int
	// MaxHandshakes bounds inbound connections still in the TLS handshake
	// or the startup packet (32 when zero), MaxHandshakesPerSource those
	// from one source address (8 when zero): anyone who reaches the port
	// can hold these until HandshakeTimeout, never an admitted peer's slot.
	MaxHandshakes, MaxHandshakesPerSource int
	// HandshakeTimeout bounds the TLS handshake and, inbound, the startup
	// packet (5 s when zero).
	HandshakeTimeout time.Duration
	// DialTimeout bounds each dial, to a peer or to the local socket (5 s
	// when zero).
	DialTimeout time.Duration
	// Secrets, if set, is the cluster's secrets bundle, given over
	// ProtoSecrets to a peer joining (`init --ha`) while AllowJoin has a
	// window open for it, once; nil refuses every asker.
	Secrets func() []byte
	Log     *slog.Logger
}

// CheckAndSetDefaults fails on missing settings and fills in defaults.
func (c *Config) CheckAndSetDefaults() error {
	if c.Identity == nil {
		return errors.New("link: no identity")
	}
	if c.Listen == "" || c.Socket == "" || c.REST == "" || c.Database == "" || c.PeerSocketDir == "" {
		return errors.New("link: listen address, socket, REST address, database and peer socket directory are required")
	}
	seen := map[string]bool{c.Identity.Name: true}
	ports := map[int]bool{}
	for _, p := range c.Peers {
		if !ValidNodeName(p.Name) || seen[p.Name] {
			return fmt.Errorf("link: peer name %q invalid or used twice", p.Name)
		}
		seen[p.Name] = true
		if p.PGPort <= 0 || p.PGPort > 65535 || p.RESTPort <= 0 || p.RESTPort > 65535 || ports[p.PGPort] || ports[-p.RESTPort] {
			return fmt.Errorf("link: peer %s: ports %d/%d invalid or used twice", p.Name, p.PGPort, p.RESTPort)
		}
		ports[p.PGPort], ports[-p.RESTPort] = true, true
	}
	if c.MaxConns <= 0 {
		c.MaxConns = 64
	}
	if c.MaxHandshakes <= 0 {
		c.MaxHandshakes = 32
	}
	if c.MaxHandshakesPerSource <= 0 {
		c.MaxHandshakesPerSource = 8
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = 5 * time.Second
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 5 * time.Second
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Node runs one node's link: the inbound listener and, for each peer, the
// socket and REST port that relay to it.
type Node struct {
	cfg Config
	// slots bound admitted connections per direction and protocol.
	slots map[slotKey]chan struct{}
	// handshakes bounds inbound connections before admission; hs counts
	// them per source address.
	handshakes chan struct{}
	hs         struct {
		sync.Mutex
		bySource map[string]int
	}
	rest *restProxy
	// join holds the open join windows (AllowJoin), by peer.
	joinMu sync.Mutex
	join   map[string]time.Time
	wg     sync.WaitGroup
	ready  chan struct{}
	// warnMu guards lastWarn and suppressed: refusals and failures are
	// logged at most once a second per message, since anyone who reaches
	// the port (before authentication), a compromised peer (after it) or a
	// local user (the REST port's dials) can cause them at will.
	warnMu     sync.Mutex
	lastWarn   map[string]time.Time
	suppressed map[string]int
	mu         struct {
		sync.Mutex
		conns  map[net.Conn]struct{}
		closed bool
		addr   net.Addr
	}
}

// New checks cfg and makes a Node; Serve runs it.
func New(cfg Config) (*Node, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, slots: map[slotKey]chan struct{}{}, handshakes: make(chan struct{}, cfg.MaxHandshakes), ready: make(chan struct{})}
	for _, k := range []slotKey{{true, ProtoPostgres}, {true, ProtoREST}, {false, ProtoPostgres}, {false, ProtoREST}} {
		n.slots[k] = make(chan struct{}, cfg.MaxConns)
	}
	n.hs.bySource = map[string]int{}
	n.mu.conns = map[net.Conn]struct{}{}
	n.lastWarn = map[string]time.Time{}
	n.suppressed = map[string]int{}
	n.rest = newRESTProxy(cfg.REST, cfg.DialTimeout, cfg.Log)
	return n, nil
}

// warnLimited logs msg at most once a second, with how many were left
// out since the last one.
func (n *Node) warnLimited(log *slog.Logger, msg string, args ...any) {
	n.warnMu.Lock()
	now := time.Now()
	if now.Sub(n.lastWarn[msg]) < time.Second {
		n.suppressed[msg]++
		n.warnMu.Unlock()
		return
	}
	n.lastWarn[msg] = now
	dropped := n.suppressed[msg]
	delete(n.suppressed, msg)
	n.warnMu.Unlock()
	if dropped > 0 {
		args = append(args, "suppressed", dropped)
	}
	log.Warn(msg, args...)
}

// Ready is closed once every listener is up.
func (n *Node) Ready() <-chan struct{} { return n.ready }

// Addr is the inbound listener's address, once Ready.
func (n *Node) Addr() net.Addr {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.mu.addr
}

// Serve listens until ctx ends, then closes every listener and connection
// and returns once all its goroutines have.
func (n *Node) Serve(ctx context.Context) error {
	var lns []net.Listener
	closeAll := func() {
		for _, l := range lns {
			_ = l.Close()
		}
	}
	lc := net.ListenConfig{KeepAlive: 15 * time.Second}
	in, err := lc.Listen(ctx, "tcp", n.cfg.Listen)
	if err != nil {
		return fmt.Errorf("link: listen: %w", err)
	}
	lns = append(lns, in)
	n.mu.Lock()
	n.mu.addr = in.Addr()
	n.mu.Unlock()
	dir, err := n.openPeerDir()
	if err != nil {
		closeAll()
		return err
	}
	type outbound struct {
		ln    net.Listener
		peer  Peer
		proto string
	}
	var outs []outbound
	for _, p := range n.cfg.Peers {
		sock, err := n.listenUnix(dir, ".s.PGSQL."+strconv.Itoa(p.PGPort))
		if err != nil {
			_ = dir.Close()
			closeAll()
			return err
		}
		lns = append(lns, sock)
		rest, err := lc.Listen(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p.RESTPort)))
		if err != nil {
			_ = dir.Close()
			closeAll()
			return fmt.Errorf("link: REST port for %s: %w", p.Name, err)
		}
		lns = append(lns, rest)
		outs = append(outs, outbound{sock, p, ProtoPostgres}, outbound{rest, p, ProtoREST})
	}
	if err := n.handPeerDir(dir); err != nil {
		closeAll()
		return err
	}
	n.cfg.Log.Info("Node link listening.", "node", n.cfg.Identity.Name, "listen", in.Addr().String(), "peers", len(n.cfg.Peers))
	close(n.ready)

	n.wg.Add(2 + len(outs))
	go func() { defer n.wg.Done(); n.rest.serve() }()
	go func() {
		defer n.wg.Done()
		n.acceptLoop(in, n.takeHandshake, func(c net.Conn, handshakeDone func()) { n.handleInbound(ctx, c, handshakeDone) })
	}()
	for _, o := range outs {
		take := func(net.Conn) (func(), bool) { return n.takeSlot(slotKey{false, o.proto}) }
		go func() {
			defer n.wg.Done()
			n.acceptLoop(o.ln, take, func(c net.Conn, _ func()) { n.handleOutbound(ctx, c, o.peer, o.proto) })
		}()
	}
	<-ctx.Done()
	n.mu.Lock()
	n.mu.closed = true
	for c := range n.mu.conns {
		_ = c.Close()
	}
	n.mu.Unlock()
	closeAll()
	n.rest.close()
	n.wg.Wait()
	return nil
}

// slotKey names a pool of connection slots: inbound or outbound, by
// protocol.
type slotKey struct {
	inbound bool
	proto   string
}

// takeSlot takes a slot of k without waiting; release gives it back (once).
func (n *Node) takeSlot(k slotKey) (release func(), ok bool) {
	slots := n.slots[k]
	select {
	case slots <- struct{}{}:
		return sync.OnceFunc(func() { <-slots }), true
	default:
		return nil, false
	}
}

// takeHandshake takes a slot for c's handshake and admission, within the
// global and the per-source bounds; release gives it back (once).
func (n *Node) takeHandshake(c net.Conn) (release func(), ok bool) {
	src := c.RemoteAddr().String()
	if h, _, err := net.SplitHostPort(src); err == nil {
		src = h
	}
	select {
	case n.handshakes <- struct{}{}:
	default:
		return nil, false
	}
	n.hs.Lock()
	if n.hs.bySource[src] >= n.cfg.MaxHandshakesPerSource {
		n.hs.Unlock()
		<-n.handshakes
		return nil, false
	}
	n.hs.bySource[src]++
	n.hs.Unlock()
	return sync.OnceFunc(func() {
		n.hs.Lock()
		if n.hs.bySource[src]--; n.hs.bySource[src] <= 0 {
			delete(n.hs.bySource, src)
		}
		n.hs.Unlock()
		<-n.handshakes
	}), true
}

// acceptLoop runs handle for each connection take admits; a connection it
// refuses is closed at once. handle gets the release of what take took, to
// give it back early (it is given back when handle returns anyway).
func (n *Node) acceptLoop(ln net.Listener, take func(net.Conn) (func(), bool), handle func(net.Conn, func())) {
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			return // closed
		}
		release, ok := take(c)
		if !ok {
			n.warnLimited(n.cfg.Log, "Node link connection refused: too many connections.", "max", n.cfg.MaxConns,
				"max_handshakes", n.cfg.MaxHandshakes, "max_handshakes_per_source", n.cfg.MaxHandshakesPerSource)
			_ = c.Close()
			continue
		}
		if !n.track(c) {
			release()
			_ = c.Close()
			return
		}
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			defer release()
			defer n.untrack(c)
			handle(c, release)
		}()
	}
}

// track registers c so that Serve's end closes it; false once closing.
func (n *Node) track(c net.Conn) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.mu.closed {
		return false
	}
	n.mu.conns[c] = struct{}{}
	return true
}

func (n *Node) untrack(c net.Conn) {
	n.mu.Lock()
	delete(n.mu.conns, c)
	n.mu.Unlock()
	_ = c.Close()
}

// handleInbound admits a peer's connection and relays it.
// handshakeDone gives back the handshake slot; the connection takes a slot
// of its protocol once admitted, or is closed when none is free.
func (n *Node) handleInbound(ctx context.Context, raw net.Conn, handshakeDone func()) {
	log := n.cfg.Log.With("remote", raw.RemoteAddr().String())
	_ = raw.SetDeadline(time.Now().Add(n.cfg.HandshakeTimeout))
	tc := tls.Server(raw, n.cfg.Identity.serverConfig(n.peerSet()))
	if err := tc.Handshake(); err != nil {
		n.warnLimited(log, "Node link handshake refused.", "error", err)
		return
	}
	cs := tc.ConnectionState()
	log = log.With("peer", PeerName(cs), "proto", cs.NegotiatedProtocol)
	var backend net.Conn
	var err error
	switch cs.NegotiatedProtocol {
	case ProtoPostgres:
		var pkt []byte
		pkt, err = n.admit(tc, PeerName(cs))
		if err != nil {
			var r *Refusal
			if errors.As(err, &r) {
				_, _ = tc.Write(refusal(r.Message))
			}
			n.warnLimited(log, "Node link connection refused.", "error", err)
			return
		}
		release, ok := n.takeSlot(slotKey{true, ProtoPostgres})
		if !ok {
			n.warnLimited(log, "Node link connection refused: too many PostgreSQL connections.", "max", n.cfg.MaxConns)
			return
		}
		defer release()
		handshakeDone()
		backend, err = net.DialTimeout("unix", n.cfg.Socket, n.cfg.DialTimeout)
		if err == nil {
			_, err = backend.Write(pkt)
		}
	case ProtoREST, ProtoSecrets:
		release, ok := n.takeSlot(slotKey{true, ProtoREST})
		if !ok {
			n.warnLimited(log, "Node link connection refused: too many REST connections.", "max", n.cfg.MaxConns)
			return
		}
		defer release()
		handshakeDone()
		if cs.NegotiatedProtocol == ProtoSecrets {
			n.giveSecrets(log, tc, PeerName(cs)) // within the handshake's deadline
			return
		}
		// Reads only, through an HTTP proxy (rest.go), not a byte relay.
		_ = raw.SetDeadline(time.Time{})
		n.rest.handle(ctx, tc)
		return
	default:
		n.warnLimited(log, "Node link connection refused: no protocol agreed.")
		return
	}
	if err != nil {
		if backend != nil {
			_ = backend.Close()
		}
		n.warnLimited(log, "Node link backend unreachable.", "error", err)
		return
	}
	_ = raw.SetDeadline(time.Time{})
	n.relay(log, tc, backend)
}

// admit reads the startup packet of peer (its verified node name) and
// decides it.
func (n *Node) admit(c net.Conn, peer string) ([]byte, error) {
	pkt, m, err := negotiate(c)
	if err != nil {
		return nil, err
	}
	if err := Admit(m, n.cfg.Database); err != nil {
		return nil, err
	}
	if err := AdmitPeer(m, peer); err != nil {
		return nil, err
	}
	return pkt, nil
}

// handleOutbound relays a local connection to peer.
func (n *Node) handleOutbound(ctx context.Context, local net.Conn, peer Peer, proto string) {
	log := n.cfg.Log.With("peer", peer.Name, "proto", proto)
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: n.cfg.DialTimeout, KeepAlive: 15 * time.Second}, Config: n.cfg.Identity.clientConfig(peer.Name, proto)}
	hctx, cancel := context.WithTimeout(ctx, n.cfg.DialTimeout+n.cfg.HandshakeTimeout)
	remote, err := d.DialContext(hctx, "tcp", peer.Addr)
	cancel()
	if err != nil {
		n.warnLimited(log, "Node link dial failed.", "error", err)
		return
	}
	n.relay(log, local, remote)
}

// relay copies both ways until either side ends, then closes both.
func (n *Node) relay(log *slog.Logger, a, b net.Conn) {
	began := time.Now()
	if !n.track(b) {
		_ = b.Close()
		return
	}
	defer n.untrack(b)
	errc := make(chan error, 2)
	cp := func(dst, src net.Conn) {
		_, err := io.Copy(dst, src)
		errc <- err
		// The first side to end ends the other.
		_ = a.Close()
		_ = b.Close()
	}
	go cp(a, b)
	go cp(b, a)
	err := <-errc
	<-errc
	log.Debug("Node link connection closed.", "duration", time.Since(began).Round(time.Millisecond), "error", err)
}

func (n *Node) peerSet() map[string]bool {
	m := make(map[string]bool, len(n.cfg.Peers))
	for _, p := range n.cfg.Peers {
		m[p.Name] = true
	}
	return m
}

// maxSecrets bounds the secrets bundle a joining node reads.
const maxSecrets = 64 << 10

// FetchSecrets asks peer (its link listener at addr) for the cluster's
// secrets bundle, as node id, over mutual TLS: the peer gives it only to
// a node it lists, and id takes it only from the node it named.
func FetchSecrets(ctx context.Context, id *Identity, peer, addr string) ([]byte, error) {
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: id.clientConfig(peer, ProtoSecrets)}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("node %s (%s): %w", peer, addr, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	b, err := io.ReadAll(io.LimitReader(c, maxSecrets+1))
	if err != nil {
		return nil, fmt.Errorf("node %s (%s): %w", peer, addr, err)
	}
	if len(b) == 0 {
		return nil, fmt.Errorf("node %s (%s) gave no secrets (it refused: see its log)", peer, addr)
	}
	if len(b) > maxSecrets {
		return nil, fmt.Errorf("node %s (%s): secrets bundle over %d bytes", peer, addr, maxSecrets)
	}
	return b, nil
}

// giveSecrets answers a joining peer's request for the cluster's secrets:
// the bundle if a join window is open for it (closing it), else nothing.
func (n *Node) giveSecrets(log *slog.Logger, tc *tls.Conn, peer string) {
	if n.cfg.Secrets == nil || !n.takeJoin(peer) {
		n.warnLimited(log, "Node link: a peer asked for the cluster's secrets with no join window open for it; refused (cluster allow-join).")
		return
	}
	if _, err := tc.Write(n.cfg.Secrets()); err != nil {
		n.warnLimited(log, "Node link: sending the cluster's secrets failed.", "error", err)
		return
	}
	_ = tc.CloseWrite()
	// Once per window: a warning, so it stands out.
	log.Warn("Node link: gave the cluster's secrets to a joining peer; its join window is closed.")
}

// AllowJoin opens peer's join window until until: peer, a node this one
// lists, may then ask for the cluster's secrets once.
func (n *Node) AllowJoin(peer string, until time.Time) error {
	if !n.peerSet()[peer] {
		return fmt.Errorf("%q is not a peer of this node", peer)
	}
	n.joinMu.Lock()
	defer n.joinMu.Unlock()
	if n.join == nil {
		n.join = map[string]time.Time{}
	}
	n.join[peer] = until
	return nil
}

// takeJoin closes peer's join window and reports whether it was open.
func (n *Node) takeJoin(peer string) bool {
	n.joinMu.Lock()
	defer n.joinMu.Unlock()
	until, ok := n.join[peer]
	delete(n.join, peer)
	return ok && time.Now().Before(until)
}
