// Package outbound opens PostgreSQL's otherwise empty network namespace to
// the destinations that outbound network rules allow, without making the
// host a router: a veth pair carries the namespace's TCP connections to the
// host, where an nftables tproxy rule hands each one to pgshield's own
// transparent listener. pgshield checks the original destination against
// the rules and, if allowed, connects to it from the host and relays.
// Nothing is forwarded; everything else from the namespace is dropped. With
// no outbound Allow rule there is no veth at all. TCP only.
package outbound

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pgshield/pgshield/internal/netpolicy"
)

// maxConns bounds the relayed outbound connections at once.
const maxConns = 256

// Path is the outbound path of one server.
type Path struct {
	// ID names the interfaces, the nftables table and the routing table;
	// unique per server.
	ID string
	// Allow decides each connection by its original destination.
	Allow func(dst netip.Addr, port uint16) bool
	Log   *slog.Logger

	mu     sync.Mutex
	pid    int // the namespace the veth goes into; 0 if none
	ln     net.Listener
	port   int
	active sync.WaitGroup
	sem    chan struct{}
}

func (p *Path) hostIf() string { return "pgso" + p.ID[:8] }
func (p *Path) nsIf() string   { return "pgsi" + p.ID[:8] }
func (p *Path) table() string  { return "pgshield_out_" + p.ID }

func (p *Path) hash() [32]byte { return sha256.Sum256([]byte(p.ID)) }

// addrs derives a /30 in 169.254.0.0/16 from the ID (link-local: never
// routed beyond the host), so servers on one host do not collide.
func (p *Path) addrs() (host, ns netip.Addr) {
	h := p.hash()
	third, fourth := 1+h[0]%254, (h[1]%63)*4
	return netip.AddrFrom4([4]byte{169, 254, third, fourth + 1}), netip.AddrFrom4([4]byte{169, 254, third, fourth + 2})
}

// mark and routing table for the tproxy'd packets.
func (p *Path) mark() uint32 {
	h := p.hash()
	return 0x70670000 | uint32(binary.BigEndian.Uint16(h[2:]))
}
func (p *Path) rtable() int { h := p.hash(); return 20000 + int(binary.BigEndian.Uint16(h[4:]))%10000 }

func run(name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// active returns the outbound rules in force, by priority, and whether any
// of them allows something.
func active(rules []netpolicy.NetworkRule, now time.Time) (out []netpolicy.NetworkRule, anyAllow bool) {
	for _, r := range rules {
		if r.Direction != netpolicy.DirectionOutbound || r.Expired(now) {
			continue
		}
		out = append(out, r)
		anyAllow = anyAllow || r.Access == netpolicy.AccessAllow
	}
	for i := 1; i < len(out); i++ { // a handful of rules: insertion sort
		for j := i; j > 0 && out[j].Priority < out[j-1].Priority; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out, anyAllow
}

// Apply makes the path match rules for the PostgreSQL whose postmaster is
// pid (0 if it is not running). The rules are enforced twice: in nftables,
// so a denied destination's SYN is dropped and the connection never opens,
// and again by Allow when the transparent listener accepts.
func (p *Path) Apply(pid int, rules []netpolicy.NetworkRule) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	act, anyAllow := active(rules, time.Now())
	if !anyAllow || pid == 0 {
		return p.removeLocked()
	}
	if p.ln == nil {
		if err := p.listenLocked(); err != nil {
			return err
		}
	}
	host, ns := p.addrs()
	if p.pid == pid && linkExists(p.hostIf()) {
		return p.applyTable(host, act)
	}
	_ = run("ip", "link", "del", p.hostIf())
	netns, err := openNetns(pid)
	if err != nil {
		_ = p.removeLocked()
		return err
	}
	defer netns.Close()
	steps := [][]string{
		{"ip", "link", "add", p.hostIf(), "type", "veth", "peer", "name", p.nsIf(), "netns", fmt.Sprint(pid)},
		{"ip", "addr", "add", host.String() + "/30", "dev", p.hostIf()},
		{"ip", "link", "set", p.hostIf(), "up"},
		{"nsenter", "ip", "addr", "add", ns.String() + "/30", "dev", p.nsIf()},
		{"nsenter", "ip", "link", "set", p.nsIf(), "up"},
		{"nsenter", "ip", "route", "replace", "default", "via", host.String()},
		// tproxy'd packets are delivered locally through this table.
		{"ip", "route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table", fmt.Sprint(p.rtable())},
	}
	for _, s := range steps {
		run := run
		if s[0] == "nsenter" { // in PostgreSQL's namespace (netns.go)
			run = func(_ string, args ...string) error { return runInNetns(netns, args...) }
		}
		if err := run(s[0], s[1:]...); err != nil {
			_ = p.removeLocked()
			return err
		}
	}
	_ = run("ip", "rule", "del", "fwmark", fmt.Sprint(p.mark()), "lookup", fmt.Sprint(p.rtable())) // a stale one
	if err := run("ip", "rule", "add", "fwmark", fmt.Sprint(p.mark()), "lookup", fmt.Sprint(p.rtable())); err != nil {
		_ = p.removeLocked()
		return err
	}
	if err := p.applyTable(host, act); err != nil {
		_ = p.removeLocked()
		return err
	}
	p.pid = pid
	return nil
}

func linkExists(name string) bool {
	_, err := os.Stat("/sys/class/net/" + name)
	return err == nil
}

// Ruleset renders the nftables table (exported for tests): outbound rules
// in priority order, Allow as tproxy to pgshield, Deny as drop, then drop.
func (p *Path) Ruleset(host netip.Addr, rules []netpolicy.NetworkRule) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n", p.table())
	fmt.Fprintf(&b, "  chain prerouting {\n    type filter hook prerouting priority mangle; policy accept;\n")
	for _, r := range rules {
		match := ""
		if d := r.DestinationPrefix; d != "" && d != netpolicy.Any {
			if strings.Contains(d, ":") {
				continue // IPv6 destinations: the namespace has no IPv6 path
			}
			match += " ip daddr " + d
		}
		if ports := r.DestinationPorts; ports != "" && ports != netpolicy.Any {
			match += " tcp dport { " + strings.ReplaceAll(ports, ",", ", ") + " }"
		}
		if r.Access == netpolicy.AccessDeny {
			fmt.Fprintf(&b, "    iifname %q meta l4proto tcp%s drop comment %q\n", p.hostIf(), match, r.Name)
			continue
		}
		fmt.Fprintf(&b, "    iifname %q meta l4proto tcp%s meta mark set %#x tproxy ip to %s:%d accept comment %q\n",
			p.hostIf(), match, p.mark(), host, p.port, r.Name)
	}
	fmt.Fprintf(&b, "    iifname %q drop\n  }\n}\n", p.hostIf())
	return b.String()
}

func (p *Path) applyTable(host netip.Addr, rules []netpolicy.NetworkRule) error {
	// Declaring, deleting and re-adding in one nft transaction replaces the
	// table atomically, whether or not it existed.
	script := fmt.Sprintf("table inet %s\ndelete table inet %s\n%s", p.table(), p.table(), p.Ruleset(host, rules))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// listenLocked opens the transparent listener on the host side's address
// (IP_FREEBIND: before the veth exists). Accepted connections carry their
// original destination as their local address.
func (p *Path) listenLocked() error {
	host, _ := p.addrs()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1); serr == nil {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1)
			}
		})
		return errors.Join(err, serr)
	}}
	ln, err := lc.Listen(context.Background(), "tcp4", host.String()+":0")
	if err != nil {
		return fmt.Errorf("outbound listener: %w", err)
	}
	p.ln, p.port = ln, ln.Addr().(*net.TCPAddr).Port
	p.sem = make(chan struct{}, maxConns)
	go p.serve(ln)
	return nil
}

func (p *Path) serve(ln net.Listener) {
	_, ns := p.addrs()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		src, _ := netip.ParseAddrPort(c.RemoteAddr().String())
		dst, _ := netip.ParseAddrPort(c.LocalAddr().String())
		// Only PostgreSQL's namespace reaches this listener (tproxy from
		// its veth); anything else is refused.
		if src.Addr().Unmap() != ns || !p.Allow(dst.Addr().Unmap(), dst.Port()) {
			p.Log.Info("Outbound connection refused by network rules.", "destination", dst.String())
			c.Close()
			continue
		}
		select {
		case p.sem <- struct{}{}:
		default:
			c.Close()
			continue
		}
		p.active.Add(1)
		go func() {
			defer p.active.Done()
			defer func() { <-p.sem }()
			p.relay(c, dst)
		}()
	}
}

func (p *Path) relay(c net.Conn, dst netip.AddrPort) {
	defer c.Close()
	d := net.Dialer{Timeout: 10 * time.Second}
	up, err := d.Dial("tcp", dst.String())
	if err != nil {
		p.Log.Info("Outbound connection failed.", "destination", dst.String(), "error", err)
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
	c.Close()
	up.Close()
	<-done
}

// Close takes the path down and stops the listener.
func (p *Path) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	err := p.removeLocked()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	return err
}

func (p *Path) removeLocked() error {
	var errs []error
	if linkExists(p.hostIf()) {
		// The veth also goes when PostgreSQL's namespace does; losing
		// that race is not an error.
		if err := run("ip", "link", "del", p.hostIf()); err != nil && linkExists(p.hostIf()) {
			errs = append(errs, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "nft", "list", "table", "inet", p.table()).CombinedOutput(); err == nil && len(out) > 0 {
		errs = append(errs, run("nft", "delete", "table", "inet", p.table()))
	}
	for i := 0; i < 10; i++ { // duplicates from earlier starts, if any
		if run("ip", "rule", "del", "fwmark", fmt.Sprint(p.mark()), "lookup", fmt.Sprint(p.rtable())) != nil {
			break
		}
	}
	_ = run("ip", "route", "flush", "table", fmt.Sprint(p.rtable()))
	p.pid = 0
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("removing the outbound path: %w", err)
	}
	return nil
}
