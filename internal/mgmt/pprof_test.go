package mgmt

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestPprofRoute: the profiles are a read route of the one table, served
// like every other route (a browser is refused) and only to root on the
// root-only socket.
func TestPprofRoute(t *testing.T) {
	var found *Route
	routes := Routes(nopBackend{})
	for i, rt := range routes {
		if rt.Pattern == "/debug/pprof/{name}" {
			found = &routes[i]
		}
	}
	if found == nil || found.Method != "GET" || found.Permission != PermitRead || found.Raw == nil {
		t.Fatalf("route GET /debug/pprof/{name} = %+v; want a Raw read route", found)
	}
	h := NewHandler(routes, Options{})

	for _, tc := range []struct {
		path       string
		wantStatus int
		wantBody   string
	}{
		{"/debug/pprof/goroutine?debug=1", 200, "goroutine profile:"},
		{"/debug/pprof/heap?debug=1", 200, "heap profile:"},
		{"/debug/pprof/cmdline", 200, ""},
		{"/debug/pprof/nosuch", 404, "Unknown profile"},
		{"/debug/pprof/", 404, ""}, // no index page: the CLI names the profile
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", tc.path, nil))
		if rec.Code != tc.wantStatus || !strings.Contains(rec.Body.String(), tc.wantBody) {
			t.Errorf("GET %s = %d %.60q; want %d containing %q", tc.path, rec.Code, rec.Body.String(), tc.wantStatus, tc.wantBody)
		}
	}
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "/debug/pprof/goroutine", nil)
	req.Header.Set("Origin", "http://evil.example")
	h.ServeHTTP(rec, req)
	if rec.Code != 400 {
		t.Errorf("GET /debug/pprof/goroutine from a browser = %d; want 400", rec.Code)
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", "/debug/pprof/goroutine", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST /debug/pprof/goroutine = %d; want 405", rec.Code)
	}
}

// TestPprofRootOnly serves the table as the daemon does (Listen, RootOnly)
// and asks for a profile as root, then as another user: the socket's mode
// refuses the connection, and with the mode opened up, the peer check
// closes it unanswered. It needs root to switch users.
func TestPprofRootOnly(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	sock := filepath.Join(t.TempDir(), "api.sock")
	// t.TempDir is DIR/NNN, both 0700: let nobody reach the socket, so
	// that only its own mode and the peer check stand in the way.
	for _, d := range []string{filepath.Dir(sock), filepath.Dir(filepath.Dir(sock))} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: NewHandler(Routes(nopBackend{}), Options{})}
	go func() { _ = srv.Serve(RootOnly{Listener: ln, Log: slog.New(slog.DiscardHandler)}) }()
	t.Cleanup(func() { srv.Close() })

	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode = %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	resp, err := hc.Get("http://pgshield/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), "goroutine profile:") {
		t.Errorf("GET /debug/pprof/goroutine as root = %d %.60q; want 200, a goroutine profile", resp.StatusCode, b)
	}

	if err := asNobody(sock); !errors.Is(err, unix.EACCES) {
		t.Errorf("connect as nobody to the 0600 socket: %v; want EACCES", err)
	}
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	// Closed unanswered: EOF, or a reset as the request was left unread.
	if err := asNobody(sock); !errors.Is(err, io.EOF) && !errors.Is(err, unix.ECONNRESET) {
		t.Errorf("GET /debug/pprof/goroutine as nobody on an open socket: %v; want it closed unanswered by RootOnly", err)
	}
}

// asNobody connects to sock with effective uid 65534 on one OS thread (the
// kernel records the connecting thread's credentials for SO_PEERCRED),
// sends a profile request and returns the error of connect or of the read
// of the answer. The thread is never unlocked, so Go discards it rather
// than reuse it if switching back failed.
func asNobody(sock string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Per-thread setresuid: the raw syscall, not unix.Setresuid, which
		// Go applies to every thread of the process.
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), 65534, ^uintptr(0)); e != 0 {
			errc <- e
			return
		}
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			err = unix.Connect(fd, &unix.SockaddrUnix{Name: sock})
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, ^uintptr(0), 0, ^uintptr(0)); e != 0 {
			errc <- fmt.Errorf("switching the thread back to root: %w", e) // the thread stays locked
			return
		}
		runtime.UnlockOSThread()
		if fd >= 0 && err != nil {
			unix.Close(fd)
		}
		if err != nil {
			errc <- err
			return
		}
		f := os.NewFile(uintptr(fd), "api")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			errc <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(30 * time.Second)) // a bound, not a measurement
		_, _ = io.WriteString(c, "GET /debug/pprof/goroutine?debug=1 HTTP/1.1\r\nHost: pgshield\r\n\r\n")
		if n, err := c.Read(make([]byte, 1)); n > 0 {
			errc <- errors.New("the server answered")
		} else {
			errc <- err
		}
	}()
	return <-errc
}
