package daemon

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSdNotify: the state reaches a service manager's socket as one
// datagram, as sd_notify(3) sends it.
func TestSdNotify(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := sdNotify(path, "STOPPING=1\nEXTEND_TIMEOUT_USEC=150000000"); err != nil {
		t.Fatal(err)
	}
	_ = ln.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	n, err := ln.Read(buf)
	if err != nil || string(buf[:n]) != "STOPPING=1\nEXTEND_TIMEOUT_USEC=150000000" {
		t.Errorf("read %q, %v; want the state as sent", buf[:n], err)
	}
	if err := sdNotify(filepath.Join(t.TempDir(), "none"), "READY=1"); err == nil {
		t.Errorf("sdNotify to a missing socket succeeded")
	}
}

// TestRefusal: new sessions are refused while the server shuts down or
// restarts, with PostgreSQL's words.
func TestRefusal(t *testing.T) {
	d := &Daemon{}
	if err := d.refusal(); err != nil {
		t.Errorf("running: refusal() = %v; want nil", err)
	}
	d.life.phase.Store(phaseShuttingDown)
	if err := d.refusal(); err == nil || err.Error() != "the database system is shutting down" {
		t.Errorf("shutting down: refusal() = %v", err)
	}
	d.life.phase.Store(phaseRestarting)
	if err := d.refusal(); err == nil || !strings.HasPrefix(err.Error(), "the database system is restarting") {
		t.Errorf("restarting: refusal() = %v", err)
	}
}
