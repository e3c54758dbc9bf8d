// Package api is pgshield's management API: JSON over HTTP on a root-only
// Unix socket in the data directory. The CLI is its only client.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

// Error is the body of every non-2xx answer.
type Error struct {
	Message string `json:"error"`
	// Code is a stable machine-readable kind: invalid, not_found, unavailable, internal.
	Code string `json:"code"`
}

func (e *Error) Error() string { return e.Message }

// Error codes.
const (
	CodeInvalid     = "invalid"
	CodeNotFound    = "not_found"
	CodeUnavailable = "unavailable"
	CodeInternal    = "internal"
)

// Errorf makes an API error of a kind.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ParameterValue is one parameter as the API reports it.
type ParameterValue struct {
	Name  string `json:"name"`
	Value string `json:"value"`
	// Source is "pgshield" for the gateway's own parameters, "postgresql" otherwise.
	Source string `json:"source"`
	// Context is "dynamic" or "static" (needs a restart), as managed services say.
	Context        string `json:"context"`
	PendingRestart bool   `json:"pending_restart"`
	Unit           string `json:"unit,omitempty"`
	Description    string `json:"description,omitempty"`
	Default        string `json:"default,omitempty"`
}

// SetParameterRequest is the body of PUT /v1/parameters/{name}.
type SetParameterRequest struct {
	Value string `json:"value"`
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

// Client talks to the daemon over its socket.
type Client struct {
	Socket string
	http   *http.Client
}

// ErrNotRunning means nothing answers on the socket.
var ErrNotRunning = errors.New("pgshield is not running (start it with 'pgshield up')")

// NewClient makes a client for the socket at path.
func NewClient(path string) *Client {
	return &Client{Socket: path, http: &http.Client{
		Timeout: 2 * time.Minute,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}},
	}}
}

// Do sends a request with an optional JSON body and decodes the answer into out.
func (c *Client) Do(ctx context.Context, method, route string, in, out any) error {
	b, err := c.roundTrip(ctx, method, route, in)
	if err != nil || out == nil {
		return err
	}
	return json.Unmarshal(b, out)
}

// Get returns the body of a GET as is (e.g. metrics in Prometheus' format).
func (c *Client) Get(ctx context.Context, route string) ([]byte, error) {
	return c.roundTrip(ctx, "GET", route, nil)
}

func (c *Client) roundTrip(ctx context.Context, method, route string, in any) ([]byte, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytesReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://pgshield"+route, body)
	if err != nil {
		return nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ne *net.OpError
		if errors.As(err, &ne) && ne.Op == "dial" {
			return nil, ErrNotRunning
		}
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		var e Error
		if json.Unmarshal(b, &e) == nil && e.Message != "" {
			return nil, &e
		}
		return nil, fmt.Errorf("pgshield API: %s", resp.Status)
	}
	return b, nil
}
