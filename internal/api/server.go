package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"

	"golang.org/x/sys/unix"
)

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

// HandlerFunc serves one route: it decodes nothing itself and returns the
// value to encode or an error.
type HandlerFunc func(r *http.Request) (any, error)

// Route is one entry of the route table.
type Route struct {
	Method, Pattern string
	// Write marks routes that change state.
	Write   bool
	Handler HandlerFunc
	// Raw, if set, serves the route itself (e.g. metrics in Prometheus'
	// text format) instead of Handler's JSON.
	Raw http.Handler
}

// NewHandler builds the API's HTTP handler from a route table. Only root may
// call it (peer credentials); browsers are turned away.
func NewHandler(routes []Route, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	// Profiles for diagnosing the daemon; the socket is root-only.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	for _, rt := range routes {
		if rt.Raw != nil {
			mux.Handle(rt.Method+" "+rt.Pattern, rt.Raw)
			continue
		}
		h := rt.Handler
		mux.HandleFunc(rt.Method+" "+rt.Pattern, func(w http.ResponseWriter, r *http.Request) {
			v, err := h(r)
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
			writeError(w, Errorf(CodeInvalid, "browser requests are not accepted"), log)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func writeError(w http.ResponseWriter, err error, log *slog.Logger) {
	var e *Error
	if !errors.As(err, &e) {
		log.Error("API request failed.", "error", err)
		e = Errorf(CodeInternal, "%s", err.Error())
	}
	status := http.StatusInternalServerError
	switch e.Code {
	case CodeInvalid:
		status = http.StatusBadRequest
	case CodeNotFound:
		status = http.StatusNotFound
	case CodeUnavailable:
		status = http.StatusServiceUnavailable
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(e)
}

// DecodeBody strictly decodes a JSON request body.
func DecodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return Errorf(CodeInvalid, "invalid request body: %v", err)
	}
	return nil
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
		if cred, ok := PeerCred(c); ok && cred.Uid == 0 {
			return c, nil
		}
		l.Log.Warn("Refused a management API connection from a non-root peer.")
		c.Close()
	}
}

// PeerCred returns the SO_PEERCRED of a Unix socket connection's peer: who
// is calling, as the kernel vouches for it.
func PeerCred(c net.Conn) (*unix.Ucred, bool) {
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
