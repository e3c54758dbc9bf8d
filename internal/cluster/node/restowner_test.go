package node

import (
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestRESTOwner: the REST port is trusted only when the given pid holds
// the listening socket.
func TestRESTOwner(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := restListenerIsPatroni(port, os.Getpid()); err != nil {
		t.Fatalf("the holder: %v", err)
	}
	// Another process (a squatter's pid standing for Patroni's).
	cmd := exec.Command("sleep", "10")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	if err := restListenerIsPatroni(port, cmd.Process.Pid); err == nil || !strings.Contains(err.Error(), "other than Patroni") {
		t.Fatalf("a port held by another process: %v", err)
	}
	ln.Close()
	if err := restListenerIsPatroni(port, os.Getpid()); err == nil || !strings.Contains(err.Error(), "nothing listens") {
		t.Fatalf("no listener: %v", err)
	}
	if err := restListenerIsPatroni(port, 0); err == nil {
		t.Fatal("no Patroni: no error")
	}
}
