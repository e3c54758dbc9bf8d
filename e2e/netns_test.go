package e2e

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// netns is a network namespace made by a test: a client host joined to the
// root namespace by a veth pair. Addresses live only inside 10.77.0.0/16 and
// fd77::/16; nothing is routed anywhere else.
type netns struct {
	name     string
	hostIf   string
	n        int
	HostV4   string // the root namespace's side, where the gateway listens
	ClientV4 []string
	HostV6   string
	ClientV6 string
}

func runCmd(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return strings.TrimSpace(out.String()), err
}

// newNetns creates a namespace with two IPv4 client addresses and one IPv6
// address; t.Cleanup removes it even if the test fails.
func newNetns(t *testing.T) *netns {
	t.Helper()
	n := 10 + rand.IntN(200)
	ns := &netns{
		name: fmt.Sprintf("pgsh-e2e-%d-%d", os.Getpid()%10000, n), hostIf: fmt.Sprintf("pgsh%dh", n), n: n,
		HostV4:   fmt.Sprintf("10.77.%d.1", n),
		ClientV4: []string{fmt.Sprintf("10.77.%d.2", n), fmt.Sprintf("10.77.%d.3", n)},
		HostV6:   fmt.Sprintf("fd77:%x::1", n), ClientV6: fmt.Sprintf("fd77:%x::2", n),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = runCmd(ctx, "ip", "link", "del", ns.hostIf)
		_, _ = runCmd(ctx, "ip", "netns", "del", ns.name)
	})
	peer := fmt.Sprintf("pgsh%dc", n)
	steps := [][]string{
		{"ip", "netns", "add", ns.name},
		{"ip", "link", "add", ns.hostIf, "type", "veth", "peer", "name", peer},
		{"ip", "link", "set", peer, "netns", ns.name},
		{"ip", "addr", "add", ns.HostV4 + "/24", "dev", ns.hostIf},
		{"ip", "-6", "addr", "add", ns.HostV6 + "/64", "dev", ns.hostIf, "nodad"},
		{"ip", "link", "set", ns.hostIf, "up"},
		{"ip", "netns", "exec", ns.name, "ip", "addr", "add", ns.ClientV4[0] + "/24", "dev", peer},
		{"ip", "netns", "exec", ns.name, "ip", "addr", "add", ns.ClientV4[1] + "/24", "dev", peer},
		{"ip", "netns", "exec", ns.name, "ip", "-6", "addr", "add", ns.ClientV6 + "/64", "dev", peer, "nodad"},
		{"ip", "netns", "exec", ns.name, "ip", "link", "set", peer, "up"},
		{"ip", "netns", "exec", ns.name, "ip", "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if out, err := runCmd(ctx, s[0], s[1:]...); err != nil {
			t.Fatalf("%v: %v %s", s, err, out)
		}
	}
	return ns
}

// psqlFrom runs psql inside the namespace, bound to a source address.
func (ns *netns) psqlFrom(t *testing.T, src, host string, port int, user, password string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dsn := fmt.Sprintf("host=%s port=%d user=%s dbname=postgres sslmode=require connect_timeout=5", host, port, user)
	argv := []string{"netns", "exec", ns.name}
	if src != "" {
		// libpq cannot bind a source address; a host route with a
		// preferred source inside the namespace chooses it.
		argv = append(argv, "sh", "-c", fmt.Sprintf(`ip route replace %s dev pgsh%dc src %s || exit 99; exec "$@"`, host, ns.n, src), "sh")
	}
	argv = append(argv, "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", dsn)
	argv = append(argv, args...)
	cmd := exec.CommandContext(ctx, "ip", argv...)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+password)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return strings.TrimSpace(out.String()), err
}
