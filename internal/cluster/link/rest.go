package link

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"time"
)

// restProxy serves the REST protocol of admitted link connections: an HTTP
// reverse proxy to this node's Patroni that passes reads only.
//
// What Patroni 3.0.2 itself sends another node during its HA loop is GET
// /patroni (Ha.fetch_node_status, before a promotion); POST /failsafe is
// only with failsafe_mode, which pgshield keeps off, and POST /citus only
// with Citus. Anything that changes a node (restart, reinitialize, which
// wipes the data directory, switchover, failover, PATCH /config) is refused
// with 403: those are pgshield's to order on the node itself, and a peer's
// loopback port for this node is open to every local user there.
type restProxy struct {
	srv   *http.Server
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

// maxRESTHeader bounds a request's header; Patroni's are a few hundred bytes.
const maxRESTHeader = 16 << 10

func newRESTProxy(target string, dialTimeout time.Duration, log *slog.Logger) *restProxy {
	u := &url.URL{Scheme: "http", Host: target}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			r.Out.Host = target
		},
		Transport: &http.Transport{
			DialContext:           (&net.Dialer{Timeout: dialTimeout}).DialContext,
			ResponseHeaderTimeout: 30 * time.Second,
			MaxIdleConns:          4,
			IdleConnTimeout:       30 * time.Second,
		},
	}
	p := &restProxy{conns: make(chan net.Conn), done: make(chan struct{})}
	p.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodGet && r.Method != http.MethodHead {
				http.Error(w, "only reads of Patroni's API are relayed between nodes", http.StatusForbidden)
				return
			}
			// A read has no body. One relayed to a backend that keeps
			// HTTP/1.1 connections open and ignores a GET's body would be
			// read as the next request (smuggling past the method check);
			// Patroni 3.0.2 closes after each answer, but nothing it sends
			// between nodes has a body.
			if r.ContentLength != 0 || len(r.TransferEncoding) > 0 {
				w.Header().Set("Connection", "close")
				http.Error(w, "a read with a body is not relayed between nodes", http.StatusBadRequest)
				return
			}
			rp.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    maxRESTHeader,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return p
}

// serve runs the proxy until close; it returns once every connection it
// was given is closed.
func (p *restProxy) serve() { _ = p.srv.Serve(p) }

// handle gives c to the proxy and returns once the proxy has closed it.
func (p *restProxy) handle(ctx context.Context, c net.Conn) {
	nc := &notifyConn{Conn: c, closed: make(chan struct{})}
	select {
	case p.conns <- nc:
	case <-p.done:
		_ = c.Close()
		return
	case <-ctx.Done():
		_ = c.Close()
		return
	}
	select {
	case <-nc.closed:
	case <-p.done:
		_ = c.Close()
	}
}

func (p *restProxy) close() {
	p.once.Do(func() { close(p.done) })
	_ = p.srv.Close()
}

// Accept, Close and Addr make restProxy the server's listener.
func (p *restProxy) Accept() (net.Conn, error) {
	select {
	case c := <-p.conns:
		return c, nil
	case <-p.done:
		return nil, net.ErrClosed
	}
}

func (p *restProxy) Close() error {
	p.once.Do(func() { close(p.done) })
	return nil
}

func (p *restProxy) Addr() net.Addr { return restAddr{} }

type restAddr struct{}

func (restAddr) Network() string { return "link" }
func (restAddr) String() string  { return "link-rest" }

var _ net.Listener = (*restProxy)(nil)

// notifyConn tells handle when the HTTP server is done with a connection.
type notifyConn struct {
	net.Conn
	once   sync.Once
	closed chan struct{}
}

func (c *notifyConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { close(c.closed) })
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
