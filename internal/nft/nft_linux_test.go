package nft

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

const (
	testTable = "pgshield_test"
	testPort  = 5432
	// deniedWait is how long a dial waits for a SYN-ACK that must not come.
	deniedWait = 1500 * time.Millisecond
	// allowedWait bounds a dial that must succeed.
	allowedWait = 5 * time.Second
)

// ip runs iproute2's ip with args.
func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %q: %v: %s", args, err, bytes.TrimSpace(out))
	}
	return nil
}

// inNetNS runs fn on a fresh OS thread that has joined the network namespace
// fd refers to, and waits for it. The thread stays locked, so the runtime
// discards it when fn returns and nothing else ever runs in the namespace.
// Sockets fn creates stay in the namespace after it returns.
func inNetNS(fd int, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread is in another namespace.
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// testNet is a server and a client namespace joined by a veth pair.
type testNet struct {
	r             int // third octet of 10.77.r.0/24
	srvFd, cliFd  int
	srv4, srv6    netip.Addr
	cli4s, cli6s  []netip.Addr // client source addresses
	listenerAddrs string
}

// newTestNet builds the namespaces and a listener on testPort in the server
// one that answers "pg" to every connection. Everything is undone in
// t.Cleanup, even if the test fails half-way.
func newTestNet(t *testing.T) *testNet {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: network namespaces and nftables need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skipf("skipping: iproute2's ip is not installed: %v", err)
	}
	n := &testNet{r: 1 + rand.IntN(254)}
	id := fmt.Sprintf("%06x", rand.Uint32()&0xffffff)
	srv, cli := "pgsh-nft-srv-"+id, "pgsh-nft-cli-"+id
	if err := ip("netns", "add", srv); err != nil {
		t.Skipf("skipping: cannot create a network namespace: %v", err)
	}
	t.Cleanup(func() {
		if err := ip("netns", "del", srv); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	if err := ip("netns", "add", cli); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ip("netns", "del", cli); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	n.srv4 = netip.AddrFrom4([4]byte{10, 77, byte(n.r), 1})
	n.srv6 = netip.MustParseAddr("fd77::1")
	n.cli4s = []netip.Addr{netip.AddrFrom4([4]byte{10, 77, byte(n.r), 2}), netip.AddrFrom4([4]byte{10, 77, byte(n.r), 3})}
	n.cli6s = []netip.Addr{netip.MustParseAddr("fd77::2"), netip.MustParseAddr("fd77::3")}
	// The veth is created inside the server namespace with its peer moved
	// straight to the client one, so nothing appears in the host's.
	steps := [][]string{
		{"-n", srv, "link", "add", "veth-srv", "type", "veth", "peer", "name", "veth-cli", "netns", cli},
		{"-n", srv, "addr", "add", n.srv4.String() + "/24", "dev", "veth-srv"},
		{"-n", srv, "addr", "add", n.srv6.String() + "/64", "dev", "veth-srv", "nodad"},
		{"-n", cli, "addr", "add", n.cli4s[0].String() + "/24", "dev", "veth-cli"},
		{"-n", cli, "addr", "add", n.cli4s[1].String() + "/24", "dev", "veth-cli"},
		{"-n", cli, "addr", "add", n.cli6s[0].String() + "/64", "dev", "veth-cli", "nodad"},
		{"-n", cli, "addr", "add", n.cli6s[1].String() + "/64", "dev", "veth-cli", "nodad"},
		{"-n", srv, "link", "set", "lo", "up"},
		{"-n", cli, "link", "set", "lo", "up"},
		{"-n", srv, "link", "set", "veth-srv", "up"},
		{"-n", cli, "link", "set", "veth-cli", "up"},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			t.Fatal(err)
		}
	}
	for name, p := range map[string]*int{srv: &n.srvFd, cli: &n.cliFd} {
		fd, err := unix.Open("/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		*p = fd
		t.Cleanup(func() { unix.Close(fd) })
	}

	var ln net.Listener
	if err := inNetNS(n.srvFd, func() (err error) {
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", testPort))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait() // the accept loop and its handlers are gone: no leak
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(allowedWait))
				c.Write([]byte("pg"))
			}()
		}
	}()
	return n
}

// dial connects from src in the client namespace to the server's address of
// the same family, waiting at most wait, and reads the greeting.
func (n *testNet) dial(src netip.Addr, wait time.Duration) error {
	dst := n.srv4
	if src.Is6() {
		dst = n.srv6
	}
	return inNetNS(n.cliFd, func() error {
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), Timeout: wait}
		c, err := d.Dial("tcp", netip.AddrPortFrom(dst, testPort).String())
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(wait))
		b := make([]byte, 2)
		if _, err := io.ReadFull(c, b); err != nil {
			return fmt.Errorf("reading greeting: %w", err)
		}
		if string(b) != "pg" {
			return fmt.Errorf("greeting = %q; want %q", b, "pg")
		}
		return nil
	})
}

// expect checks which of the client's addresses can connect.
func (n *testNet) expect(t *testing.T, step string, allowed map[netip.Addr]bool) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(map[netip.Addr]error)
	var mu sync.Mutex
	for src, ok := range allowed {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wait := deniedWait
			if ok {
				wait = allowedWait
			}
			start := time.Now()
			err := n.dial(src, wait)
			if err == nil && time.Since(start) > wait {
				err = fmt.Errorf("took %v", time.Since(start))
			}
			mu.Lock()
			errs[src] = err
			mu.Unlock()
		}()
	}
	wg.Wait()
	for src, ok := range allowed {
		err := errs[src]
		var ne net.Error
		switch {
		case ok && err != nil:
			t.Errorf("%s: connect from %s error = %v; want success", step, src, err)
		case !ok && err == nil:
			t.Errorf("%s: connect from %s succeeded; want the SYN dropped", step, src)
		case !ok && (!errors.As(err, &ne) || !ne.Timeout()):
			// A refusal or reset would mean a reply got through.
			t.Errorf("%s: connect from %s error = %v; want a timeout", step, src, err)
		}
	}
}

// tableElems reads the elements of a set of the test table in the server
// namespace, as the kernel holds them.
func (n *testNet) tableElems(t *testing.T, set string) []string {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(n.srvFd))
	if err != nil {
		t.Fatal(err)
	}
	tbl := &nftables.Table{Name: testTable, Family: nftables.TableFamilyINet}
	s, err := c.GetSetByName(tbl, set)
	if err != nil {
		t.Fatalf("GetSetByName(%s) error = %v", set, err)
	}
	if !s.Interval {
		t.Errorf("set %s is not an interval set", set)
	}
	elems, err := c.GetSetElements(s)
	if err != nil {
		t.Fatalf("GetSetElements(%s) error = %v", set, err)
	}
	var out []string
	for _, e := range elems {
		a, _ := netip.AddrFromSlice(e.Key)
		if e.IntervalEnd {
			out = append(out, "end "+a.String())
		} else {
			out = append(out, a.String())
		}
	}
	slices.Sort(out)
	return out
}

// hasTable reports whether the server namespace has the test table.
func (n *testNet) hasTable(t *testing.T) bool {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(n.srvFd))
	if err != nil {
		t.Fatal(err)
	}
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	return slices.ContainsFunc(ts, func(tb *nftables.Table) bool { return tb.Name == testTable })
}

func TestApplyInNamespace(t *testing.T) {
	n := newTestNet(t)
	c4a, c4b, c6a, c6b := n.cli4s[0], n.cli4s[1], n.cli6s[0], n.cli6s[1]
	all := func(v bool) map[netip.Addr]bool { return map[netip.Addr]bool{c4a: v, c4b: v, c6a: v, c6b: v} }

	// Without rules everyone connects, which shows the network works and
	// that a later timeout is the rules' doing.
	n.expect(t, "before Apply", all(true))
	if t.Failed() {
		t.FailNow()
	}

	only := Rules{Port: testPort, AllowV4: []Range{AddrRange(c4a)}, AllowV6: []Range{AddrRange(c6a)}}
	if err := Apply(testTable, only, WithNetNS(n.srvFd)); err != nil {
		t.Fatalf("Apply(%+v) error = %v", only, err)
	}
	n.expect(t, "allow .2 and ::2", map[netip.Addr]bool{c4a: true, c4b: false, c6a: true, c6b: false})
	if got, want := n.tableElems(t, set4Name), []string{c4a.String(), "end " + c4a.Next().String()}; !slices.Equal(got, want) {
		t.Errorf("allow4 elements = %q; want %q", got, want)
	}

	// Replacing the table with ranges lets the second addresses in.
	wide := Rules{Port: testPort,
		AllowV4: []Range{{From: c4a, To: c4b}},
		AllowV6: []Range{PrefixRange(netip.MustParsePrefix("fd77::/64"))}}
	if err := Apply(testTable, wide, WithNetNS(n.srvFd)); err != nil {
		t.Fatalf("Apply(%+v) error = %v", wide, err)
	}
	n.expect(t, "allow ranges", all(true))

	// Another port's rules leave this one open.
	other := Rules{Port: testPort + 1}
	if err := Apply(testTable, other, WithNetNS(n.srvFd)); err != nil {
		t.Fatalf("Apply(%+v) error = %v", other, err)
	}
	n.expect(t, "rules for another port", map[netip.Addr]bool{c4b: true, c6b: true})

	// Empty lists drop everyone, over both families.
	none := Rules{Port: testPort}
	if err := Apply(testTable, none, WithNetNS(n.srvFd)); err != nil {
		t.Fatalf("Apply(%+v) error = %v", none, err)
	}
	n.expect(t, "allow nobody", map[netip.Addr]bool{c4a: false, c6a: false})

	// Apply and Remove also work in the calling thread's namespace.
	if err := inNetNS(n.srvFd, func() error { return Apply(testTable, only) }); err != nil {
		t.Fatalf("Apply(%+v) in the current namespace error = %v", only, err)
	}
	n.expect(t, "allow .2 again", map[netip.Addr]bool{c4a: true, c4b: false})
	if err := inNetNS(n.srvFd, func() error { return Remove(testTable) }); err != nil {
		t.Fatalf("Remove(%q) error = %v", testTable, err)
	}
	if n.hasTable(t) {
		t.Errorf("table %s still present after Remove", testTable)
	}
	n.expect(t, "after Remove", map[netip.Addr]bool{c4b: true, c6b: true})
	if err := Remove(testTable, WithNetNS(n.srvFd)); err != nil {
		t.Errorf("Remove(%q) of an absent table error = %v; want nil", testTable, err)
	}
}

// TestApplyLarge installs the largest allowed lists, with adjacent and
// overlapping ranges, and checks what the kernel holds.
func TestApplyLarge(t *testing.T) {
	n := newTestNet(t)
	r := Rules{Port: testPort}
	for i := range MaxRanges {
		// Pairs of ranges: i even covers 4 addresses, i odd overlaps it.
		base := uint32(0x0a000000) + uint32(i/2)*16
		if i%2 == 1 {
			base += 2
		}
		a := netip.AddrFrom4([4]byte{byte(base >> 24), byte(base >> 16), byte(base >> 8), byte(base)})
		r.AllowV4 = append(r.AllowV4, Range{From: a, To: a.Next().Next().Next()})
		b := netip.AddrFrom16([16]byte{0xfd, 0x77, 15: byte(i), 14: byte(i >> 8), 13: 1})
		r.AllowV6 = append(r.AllowV6, AddrRange(b))
	}
	// The last address of each family, which has no interval end.
	r.AllowV4[0] = Range{From: netip.MustParseAddr("255.255.255.0"), To: netip.MustParseAddr("255.255.255.255")}
	if err := Apply(testTable, r, WithNetNS(n.srvFd)); err != nil {
		t.Fatalf("Apply(%d+%d ranges) error = %v", len(r.AllowV4), len(r.AllowV6), err)
	}
	v4, v6, err := r.check()
	if err != nil {
		t.Fatal(err)
	}
	for set, iv := range map[string][]interval{set4Name: v4, set6Name: v6} {
		var want []string
		for _, e := range elements(iv) {
			a, _ := netip.AddrFromSlice(e.Key)
			if e.IntervalEnd {
				want = append(want, "end "+a.String())
			} else {
				want = append(want, a.String())
			}
		}
		slices.Sort(want)
		if got := n.tableElems(t, set); !slices.Equal(got, want) {
			t.Errorf("%s holds %d elements; want %d: got %q..., want %q...", set, len(got), len(want), got[:min(4, len(got))], want[:min(4, len(want))])
		}
	}
	// Overlapping ranges merge: range 0 was replaced by the top of the
	// space, so range 1 stands alone and ranges 2..1023 make 511 pairs.
	if len(v4) != MaxRanges/2+1 {
		t.Errorf("v4 merged to %d intervals; want %d", len(v4), MaxRanges/2+1)
	}
}

func TestApplyBadInput(t *testing.T) {
	// Validation happens before any netlink call, so this needs no root.
	if err := Apply("bad name", Rules{Port: 1}); err == nil {
		t.Errorf("Apply(bad name) error = nil; want an error")
	}
	if err := Apply(testTable, Rules{}); err == nil {
		t.Errorf("Apply(port 0) error = nil; want an error")
	}
	if err := Remove(""); err == nil {
		t.Errorf("Remove(\"\") error = nil; want an error")
	}
}
