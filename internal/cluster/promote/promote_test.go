package promote

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

type fakeVolume struct {
	mu       sync.Mutex
	guards   []error // returned in turn; the last one repeats
	check    error
	hang     bool
	panicky  bool
	checked  int
	deadline bool // Check saw a deadline on its context
}

func (v *fakeVolume) Guard() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.panicky {
		panic("boom")
	}
	if len(v.guards) == 0 {
		return nil
	}
	err := v.guards[0]
	if len(v.guards) > 1 {
		v.guards = v.guards[1:]
	}
	return err
}

func (v *fakeVolume) Check(ctx context.Context) error {
	v.mu.Lock()
	v.checked++
	_, v.deadline = ctx.Deadline()
	hang, err := v.hang, v.check
	v.mu.Unlock()
	if hang {
		<-ctx.Done()
		return ctx.Err()
	}
	return err
}

type fakeKeys struct{ err error }

func (k fakeKeys) SessionsAllowed() error { return k.err }

func TestCheck(t *testing.T) {
	locked := errors.New("server is locked")
	tests := []struct {
		name string
		v    *fakeVolume
		k    Keys
		want error
	}{
		{"available", &fakeVolume{}, fakeKeys{}, nil},
		{"keys locked", &fakeVolume{}, fakeKeys{locked}, ErrKeysUnavailable},
		{"volume locked", &fakeVolume{guards: []error{errors.New("encrypted volume is locked")}}, fakeKeys{}, ErrVolumeNotReady},
		{"key revoked", &fakeVolume{check: errors.New("AccessDeniedException")}, fakeKeys{}, ErrKeyDoesNotOpen},
		{"KMS hangs", &fakeVolume{hang: true}, fakeKeys{}, ErrKeyDoesNotOpen},
		{"locked during the unwrap", &fakeVolume{guards: []error{nil, errors.New("encrypted volume is locked")}}, fakeKeys{}, ErrVolumeNotReady},
		{"panic", &fakeVolume{panicky: true}, fakeKeys{}, ErrCheckFailed},
		{"no volume", nil, fakeKeys{}, ErrCheckFailed},
		{"no keys", &fakeVolume{}, nil, ErrCheckFailed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var v Volume
			if tc.v != nil {
				v = tc.v
			}
			err := Check(context.Background(), v, tc.k, 100*time.Millisecond)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Check = %v, want nil", err)
				}
				if tc.v.checked != 1 || !tc.v.deadline {
					t.Errorf("unwrap checked %d times, deadline %v; want once, with a deadline", tc.v.checked, tc.v.deadline)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Check = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestCommand(t *testing.T) {
	got, err := Command("/usr/bin/pgshield", "/var/lib/pgshield/run/promote.sock")
	if want := "/usr/bin/pgshield cluster pre-promote --socket /var/lib/pgshield/run/promote.sock"; err != nil || got != want {
		t.Fatalf("Command = %q, %v; want %q", got, err, want)
	}
	for _, bad := range [][2]string{{"pgshield", "/s"}, {"/usr/bin/pgshield", "run/p.sock"}, {"/usr/bin/pg shield", "/s"},
		{"/usr/bin/pgshield", "/a'b"}, {"/usr/bin/pgshield", "/a\"b"}, {"/usr/bin/pgshield", "/a\\b"}, {"/usr/bin/pgshield", "/a\nb"}} {
		if got, err := Command(bad[0], bad[1]); err == nil {
			t.Errorf("Command(%q, %q) = %q, want an error", bad[0], bad[1], got)
		}
	}
}

// serve runs a Server on a socket in a temporary 0700 directory.
func serve(t *testing.T, s *Server) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "promote")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "p.sock")
	ln, err := Listen(path, os.Getuid())
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode: %v %v", fi.Mode(), err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Serve = %v", err)
		}
	})
	return path
}

func TestAskAllowed(t *testing.T) {
	path := serve(t, &Server{Volume: &fakeVolume{}, Keys: fakeKeys{}, UID: os.Getuid()})
	if err := Ask(context.Background(), path); err != nil {
		t.Fatalf("Ask = %v", err)
	}
	// A second daemon on the same socket is refused.
	if _, err := Listen(path, os.Getuid()); err == nil {
		t.Error("Listen on a live socket succeeded")
	}
}

func TestAskRefused(t *testing.T) {
	secret := "kms-token-s3cr3t"
	path := serve(t, &Server{Volume: &fakeVolume{check: errors.New("denied by " + secret)}, Keys: fakeKeys{}, UID: os.Getuid()})
	err := Ask(context.Background(), path)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), ErrKeyDoesNotOpen.Error()) {
		t.Fatalf("Ask = %v, want a refusal naming the key", err)
	}
	// The client gets the reason, never the error behind it.
	if strings.Contains(err.Error(), secret) {
		t.Errorf("the refusal carries the daemon's error: %v", err)
	}
}

func TestAskWrongUser(t *testing.T) {
	s := &Server{Volume: &fakeVolume{}, Keys: fakeKeys{}, UID: 4242}
	s.testPeer = func(*net.UnixConn) (int, int, error) { return 1234, 1, nil }
	path := serve(t, s)
	if err := Ask(context.Background(), path); !errors.Is(err, ErrRefused) {
		t.Fatalf("Ask as another user = %v, want a refusal", err)
	}
}

func TestMalformedRequest(t *testing.T) {
	path := serve(t, &Server{Volume: &fakeVolume{}, Keys: fakeKeys{}, UID: os.Getuid()})
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write([]byte("promote please\n"))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 16)
	if n, _ := c.Read(b); n != 0 {
		t.Fatalf("answered a malformed request: %q", b[:n])
	}
}

func TestAskNoDaemon(t *testing.T) {
	if err := Ask(context.Background(), filepath.Join(t.TempDir(), "none.sock")); err == nil {
		t.Fatal("Ask without a daemon = nil")
	}
}

func TestParseAnswer(t *testing.T) {
	if err := parseAnswer([]byte("ok\n")); err != nil {
		t.Fatalf("parseAnswer(ok) = %v", err)
	}
	for _, b := range []string{"", "ok", "OK\n", "ok\nok\n", " ok\n", "refused: x\n", "refused: \x1b[2J\n", "yes\n", strings.Repeat("a", 300)} {
		if err := parseAnswer([]byte(b)); err == nil {
			t.Errorf("parseAnswer(%q) = nil", b)
		} else if strings.ContainsRune(err.Error(), '\x1b') {
			t.Errorf("parseAnswer(%q) passes a control character on: %q", b, err)
		}
	}
}

func FuzzParseAnswer(f *testing.F) {
	f.Add([]byte("ok\n"))
	f.Add([]byte("refused: the encrypted volume is not unlocked\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, b []byte) {
		err := parseAnswer(b)
		if (err == nil) != (string(b) == "ok\n") {
			t.Fatalf("parseAnswer(%q) = %v", b, err)
		}
		if err != nil {
			for _, r := range err.Error() {
				if r < 0x20 || r > 0x7e {
					t.Fatalf("parseAnswer(%q): unprintable %q in the error", b, r)
				}
			}
		}
	})
}
