// Package mgmt serves pgshield's management API: JSON over HTTP on a
// root-only Unix socket in the data directory. Routes lists every route
// with the permission it needs and a thin handler that decodes the
// request, calls the daemon (a Backend) and encodes the answer; this file
// is the HTTP plumbing around them: the socket, the peer check, the
// refusal of browsers, strict request bodies and the error body. The
// request and response types are in internal/apitype, the client is
// internal/apiclient.
package mgmt

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/clienterr"
)

// Permission is what a route asks of its caller.
//
// Only root reaches the handler at all (RootOnly, and the socket's mode),
// and root holds both permissions; a route's permission decides whether
// its calls are audited (Options.OnWrite).
type Permission uint8

const (
	// PermitRead: the route only reads state.
	PermitRead Permission = iota + 1
	// PermitWrite: the route changes state.
	PermitWrite
)

func (p Permission) String() string {
	switch p {
	case PermitRead:
		return "read"
	case PermitWrite:
		return "write"
	}
	return fmt.Sprintf("Permission(%d)", p)
}

// HandlerFunc serves one route: it returns the value to encode as JSON, or
// an error; a clienterr.Error with an API code reaches the client as it is.
type HandlerFunc func(r *http.Request) (any, error)

// Route is one entry of the route table.
type Route struct {
	Method, Pattern string
	Permission      Permission
	Handler         HandlerFunc
	// Raw, if set, serves the route itself (metrics in Prometheus' text
	// format) instead of Handler's JSON.
	Raw http.Handler
}

// Options configure NewHandler.
type Options struct {
	Log *slog.Logger
	// OnWrite, if set, is called after each call of a PermitWrite route
	// with the request and the handler's error (the daemon audits it).
	OnWrite func(r *http.Request, err error)
}

// NewHandler builds the API's HTTP handler from a route table. Requests
// that carry Origin or Referer are refused: only a browser sends them, and
// a page must not drive the API through a proxy to the socket.
func NewHandler(routes []Route, o Options) http.Handler {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	mux := http.NewServeMux()
	for _, rt := range routes {
		if rt.Raw != nil {
			mux.Handle(rt.Method+" "+rt.Pattern, rt.Raw)
			continue
		}
		h, write := rt.Handler, rt.Permission == PermitWrite
		mux.HandleFunc(rt.Method+" "+rt.Pattern, func(w http.ResponseWriter, r *http.Request) {
			v, err := h(r)
			if write && o.OnWrite != nil {
				o.OnWrite(r, err)
			}
			if err != nil {
				writeError(w, err, log)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(v)
		})
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Origin") != "" || r.Header.Get("Referer") != "" {
			writeError(w, clienterr.New(apitype.CodeInvalid, "browser requests are not accepted"), log)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// writeError sends err as the API's error body. Only a clienterr.Error with
// an API code is shown as it is; anything else, a SQLSTATE-coded one
// included, is logged and sent as internal with its text.
func writeError(w http.ResponseWriter, err error, log *slog.Logger) {
	e, ok := clienterr.As(err)
	if !ok || !apitype.IsCode(e.Code) {
		log.Error("API request failed.", "error", err)
		e = clienterr.New(apitype.CodeInternal, "%s", err.Error())
	}
	status := http.StatusInternalServerError
	switch e.Code {
	case apitype.CodeInvalid:
		status = http.StatusBadRequest
	case apitype.CodeNotFound:
		status = http.StatusNotFound
	case apitype.CodeUnavailable:
		status = http.StatusServiceUnavailable
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(e)
}

// DecodeBody strictly decodes a JSON request body: an unknown field is an
// error, and so are a body over 1 MiB and anything after the first value
// (`{"name":"a"}{"name":"b"}` would otherwise act on "a" alone).
func DecodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return clienterr.New(apitype.CodeInvalid, "invalid request body: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return clienterr.New(apitype.CodeInvalid, "invalid request body: data after the JSON value")
	}
	return nil
}

// decodeOptionalBody is DecodeBody for routes whose body may be left out
// (POST /v1/backups, /v1/key/set and rotate): v keeps its zero value then.
func decodeOptionalBody(r *http.Request, v any) error {
	if r.ContentLength == 0 {
		return nil
	}
	return DecodeBody(r, v)
}

// Listen opens the API socket: dial it first, and refuse if someone answers;
// otherwise remove a stale file, listen, and restrict it to root.
func Listen(path string) (net.Listener, error) {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("%s is already in use: is pgshield already running?", path)
	}
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// RootOnly wraps a listener so that only connections from uid 0 are served,
// checked with SO_PEERCRED; the socket's 0600 mode is the first fence.
type RootOnly struct {
	net.Listener
	Log *slog.Logger
}

// Accept returns the next connection from root, closing any other.
func (l RootOnly) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if cred, ok := peerCred(c); ok && cred.Uid == 0 {
			return c, nil
		}
		l.Log.Warn("Refused a management API connection from a non-root peer.")
		c.Close()
	}
}

// Peer is an API caller as the kernel vouches for it (SO_PEERCRED).
type Peer struct {
	UID, PID int32
}

type peerKey struct{}

// ConnContext is an http.Server's ConnContext: it keeps the caller's
// SO_PEERCRED in the connection's context, for PeerFrom.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	cred, ok := peerCred(c)
	if !ok {
		return ctx
	}
	return context.WithValue(ctx, peerKey{}, Peer{UID: int32(cred.Uid), PID: cred.Pid})
}

// PeerFrom returns the caller of a request served with ConnContext.
func PeerFrom(ctx context.Context) (Peer, bool) {
	p, ok := ctx.Value(peerKey{}).(Peer)
	return p, ok
}

// peerCred returns the SO_PEERCRED of a Unix socket connection's peer.
func peerCred(c net.Conn) (*unix.Ucred, bool) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, false
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, false
	}
	var cred *unix.Ucred
	_ = raw.Control(func(fd uintptr) {
		cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	return cred, err == nil && cred != nil
}
