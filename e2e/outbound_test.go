package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sys/unix"
)

// listenIn opens a TCP listener inside a test namespace that accepts and
// closes connections until the test ends.
func listenIn(t *testing.T, ns *netns, addr string) {
	t.Helper()
	errc := make(chan error, 1)
	var ln net.Listener
	go func() {
		// This thread enters the namespace and is never handed back to
		// the scheduler (no UnlockOSThread): it dies with the goroutine.
		runtime.LockOSThread()
		f, err := os.Open(filepath.Join("/var/run/netns", ns.name))
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		ln, err = net.Listen("tcp", addr)
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatalf("listening in %s on %s: %v", ns.name, addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for i := 0; i < 10000; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

// probeFromPostgres makes PostgreSQL itself (a program it runs, as only a
// superuser harness can) open a TCP connection; nil if it connected.
func probeFromPostgres(t *testing.T, s *server, addr string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=5432 user=postgres dbname=postgres sslmode=disable",
		filepath.Join(s.dataDir, "run", "pg")))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	host, port, _ := net.SplitHostPort(addr)
	_, err = conn.Exec(ctx, fmt.Sprintf(`COPY (SELECT 1) TO PROGRAM 'timeout 3 bash -c "exec 3<>/dev/tcp/%s/%s"'`, host, port))
	return err
}

func TestOutboundRules(t *testing.T) {
	ns := newNetns(t)
	dst := ns.ClientV4[0]
	listenIn(t, ns, dst+":7777")
	listenIn(t, ns, dst+":7778")
	s := startedServer(t, "outbound")
	if err := probeFromPostgres(t, s, dst+":7777"); err == nil {
		t.Fatalf("PostgreSQL reached %s:7777 with no outbound rule", dst)
	}
	mustCLI(t, s, "network-rule", "create", "--name", "to-ns", "--priority", "100", "--access", "Allow",
		"--direction", "Outbound", "--destination-address-prefix", dst+"/32", "--destination-port-range", "7777")
	if err := probeFromPostgres(t, s, dst+":7777"); err != nil {
		t.Fatalf("PostgreSQL cannot reach %s:7777 although an outbound rule allows it: %v", dst, err)
	}
	if err := probeFromPostgres(t, s, dst+":7778"); err == nil {
		t.Fatalf("PostgreSQL reached port 7778, which no rule allows")
	}
	// A crash-restarted postmaster (a new namespace) gets the path again.
	pid := pidOf(s.status(t)["postgres"].(map[string]any)["pid"])
	_ = unix.Kill(pid, unix.SIGKILL)
	deadline := time.Now().Add(60 * time.Second)
	for {
		pg := s.status(t)["postgres"].(map[string]any)
		if pg["state"] == "Running" && pidOf(pg["pid"]) != pid {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("postmaster not restarted")
		}
		time.Sleep(300 * time.Millisecond)
	}
	if err := probeFromPostgres(t, s, dst+":7777"); err != nil {
		t.Fatalf("after a postmaster restart the outbound path is gone: %v", err)
	}
	mustCLI(t, s, "network-rule", "delete", "--name", "to-ns")
	if err := probeFromPostgres(t, s, dst+":7777"); err == nil {
		t.Fatalf("PostgreSQL still reaches %s:7777 after the rule was deleted", dst)
	}
	if out, err := s.cli("down"); err != nil {
		t.Fatalf("down: %v %s", err, out)
	}
	if b, _ := os.ReadFile("/proc/net/dev"); strings.Contains(string(b), "pgso") {
		t.Fatalf("outbound veth left after down")
	}
}
