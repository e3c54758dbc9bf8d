package gateway

// Benchmarks of relay designs, in process: a client over loopback TCP +
// TLS (the gateway's own tls.Config), the relay, and a fake backend on a
// Unix socket answering each Query with the reply to SELECT 1. They
// measure the relay's algorithm, not relay.go itself (which the pooling
// work is rewriting): rbBaseline mirrors relay.go's loops, the others
// are candidate changes (README, "Where the time goes").
//
//	go test -run '^$' -bench 'Relay' -benchmem ./internal/gateway
//
// BenchmarkRelayRoundTrip: ns per SELECT 1 round trip at one client.
// BenchmarkRelayIdle: heap bytes per idle relayed session (idle_B/session).

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"path/filepath"
	goruntime "runtime"
	"sync"
	"syscall"
	"testing"

	"github.com/pgshield/pgshield/internal/tlsconf"
	"github.com/pgshield/pgshield/internal/wire"
)

// rbRelay rbRelays between an established client and backend connection
// until either ends, and closes both.
type rbRelay func(client, backend net.Conn)

var rbRelays = []struct {
	name string
	fn   rbRelay
}{
	{"baseline", rbBaseline},
	{"pooled", rbPooled},
	{"small", rbSmall},
}

// rbBaseline is relay.go's design: io.Copy upstream (its own 32 KiB
// buffer), a 32 KiB buffer downstream with a Tracker; both buffers live as
// long as the session.
func rbBaseline(client, backend net.Conn) {
	done := make(chan struct{}, 2)
	go func() {
		_, _ = io.Copy(backend, client)
		done <- struct{}{}
	}()
	go func() {
		buf := make([]byte, 32<<10)
		var tr wire.Tracker
		for {
			n, err := backend.Read(buf)
			if n > 0 {
				tr.Advance(buf[:n])
				if _, werr := client.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		done <- struct{}{}
	}()
	<-done
	client.Close()
	backend.Close()
	<-done
}

// rbBufPool holds the 32 KiB buffers of rbPooled: a session holds one only
// while bytes flow.
var rbBufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// rbPooled holds no large buffer while idle. Downstream (the backend's
// Unix socket, no user-space buffering) it waits for readability without a
// buffer (RawConn.Read with a MSG_PEEK probe), then reads into a pooled
// buffer. Upstream (TLS, which buffers records itself, so readiness of the
// socket says nothing) it blocks in Read with a 2 KiB buffer and moves to a
// pooled 32 KiB one while reads fill it.
func rbPooled(client, backend net.Conn) {
	done := make(chan struct{}, 2)
	go func() {
		rbUpPooled(client, backend)
		done <- struct{}{}
	}()
	go func() {
		rbDownPooled(client, backend)
		done <- struct{}{}
	}()
	<-done
	client.Close()
	backend.Close()
	<-done
}

// rbSmall holds 2 KiB per direction while idle, with no readiness probe:
// both directions read as rbUpPooled does (a pooled 32 KiB buffer while
// reads fill the small one).
func rbSmall(client, backend net.Conn) {
	done := make(chan struct{}, 2)
	go func() {
		rbUpPooled(client, backend)
		done <- struct{}{}
	}()
	go func() {
		rbUpPooled(backend, client)
		done <- struct{}{}
	}()
	<-done
	client.Close()
	backend.Close()
	<-done
}

// rbUpPooled copies from src to dst with a 2 KiB buffer, and a pooled
// 32 KiB one while reads fill the buffer they are given.
func rbUpPooled(src, dst net.Conn) {
	client, backend := src, dst
	var small [2 << 10]byte
	var big *[]byte
	defer func() {
		if big != nil {
			rbBufPool.Put(big)
		}
	}()
	for {
		buf := small[:]
		if big != nil {
			buf = *big
		}
		n, err := client.Read(buf)
		if n > 0 {
			if _, werr := backend.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
		switch {
		case n == len(buf) && big == nil:
			big = rbBufPool.Get().(*[]byte) // a stream: read in large chunks
		case n < len(buf) && big != nil:
			rbBufPool.Put(big) // drained: back to the small buffer
			big = nil
		}
	}
}

func rbDownPooled(client, backend net.Conn) {
	sc, ok := backend.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	var probe [1]byte
	ready := func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), probe[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return !errors.Is(err, syscall.EAGAIN) // data, EOF or an error: let Read say which
	}
	var tr wire.Tracker
	for {
		if err := rc.Read(ready); err != nil {
			return
		}
		bp := rbBufPool.Get().(*[]byte)
		n, err := backend.Read(*bp)
		if n > 0 {
			tr.Advance((*bp)[:n])
			if _, werr := client.Write((*bp)[:n]); werr != nil {
				rbBufPool.Put(bp)
				return
			}
		}
		rbBufPool.Put(bp)
		if err != nil {
			return
		}
	}
}

// The reply to SELECT 1: RowDescription, DataRow, CommandComplete,
// ReadyForQuery, as PostgreSQL sends it in one write.
var rbReply = func() []byte {
	var out []byte
	msg := func(t byte, body []byte) {
		out = append(out, t)
		out = binary.BigEndian.AppendUint32(out, uint32(4+len(body)))
		out = append(out, body...)
	}
	rd := append([]byte{0, 1}, "?column?\x00"...)
	rd = append(rd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 23, 0, 4, 0xff, 0xff, 0xff, 0xff, 0, 0)
	msg('T', rd)
	msg('D', []byte{0, 1, 0, 0, 0, 1, '1'})
	msg('C', []byte("SELECT 1\x00"))
	msg('Z', []byte{'I'})
	return out
}()

var rbQuery = func() []byte {
	body := []byte("SELECT 1\x00")
	return append(binary.BigEndian.AppendUint32([]byte{'Q'}, uint32(4+len(body))), body...)
}()

// rbBackend answers every message on a Unix socket with rbReply.
func rbBackend(b *testing.B) string {
	path := filepath.Join(b.TempDir(), ".s.PGSQL.5432")
	ln, err := net.Listen("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var hdr [5]byte
				body := make([]byte, 256)
				for {
					if _, err := io.ReadFull(c, hdr[:]); err != nil {
						return
					}
					n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
					if n < 0 || n > len(body) {
						return
					}
					if _, err := io.ReadFull(c, body[:n]); err != nil {
						return
					}
					if _, err := c.Write(rbReply); err != nil {
						return
					}
				}
			}()
		}
	}()
	return path
}

// rbTLS is the gateway's server tls.Config with a fresh certificate.
func rbTLS(b *testing.B) *tls.Config {
	dir := b.TempDir()
	ca, cak, crt, key := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"), filepath.Join(dir, "s.crt"), filepath.Join(dir, "s.key")
	if err := tlsconf.GenerateCA(ca, cak, "bench"); err != nil {
		b.Fatal(err)
	}
	if err := tlsconf.GenerateServer(ca, cak, crt, key, []string{"127.0.0.1"}); err != nil {
		b.Fatal(err)
	}
	c, err := tlsconf.LoadCert(crt, key)
	if err != nil {
		b.Fatal(err)
	}
	return tlsconf.ServerConfig(c, tls.VersionTLS12, 0)
}

// rbGateway listens on loopback TCP and rbRelays each connection, after
// the TLS handshake, to the backend with fn; it returns the address.
func rbGateway(b *testing.B, fn rbRelay, cfg *tls.Config, backendPath string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	b.Cleanup(func() { ln.Close(); wg.Wait() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				tc := tls.Server(c, cfg)
				if err := tc.Handshake(); err != nil {
					c.Close()
					return
				}
				bc, err := net.Dial("unix", backendPath)
				if err != nil {
					tc.Close()
					return
				}
				fn(tc, bc)
			}()
		}
	}()
	return ln.Addr().String()
}

func rbDial(b *testing.B, addr string) *tls.Conn {
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // a benchmark's own certificate
	if err != nil {
		b.Fatal(err)
	}
	return c
}

func rbRoundTrip(c net.Conn, reply []byte) error {
	if _, err := c.Write(rbQuery); err != nil {
		return err
	}
	_, err := io.ReadFull(c, reply)
	return err
}

func BenchmarkRelayRoundTrip(b *testing.B) {
	cfg, backend := rbTLS(b), rbBackend(b)
	for _, r := range rbRelays {
		b.Run(r.name, func(b *testing.B) {
			c := rbDial(b, rbGateway(b, r.fn, cfg, backend))
			defer c.Close()
			reply := make([]byte, len(rbReply))
			for i := 0; i < 100; i++ { // warm up the connection
				if err := rbRoundTrip(c, reply); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := rbRoundTrip(c, reply); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRelayIdle opens b.N relayed sessions (at most 2,000), each after
// one round trip, and reports the heap the process holds per session: the
// client's side and the fake backend's too, the same for every design, so
// only differences between designs are the relay's.
func BenchmarkRelayIdle(b *testing.B) {
	cfg, backend := rbTLS(b), rbBackend(b)
	for _, r := range rbRelays {
		b.Run(r.name, func(b *testing.B) {
			addr := rbGateway(b, r.fn, cfg, backend)
			n := min(b.N, 2000)
			reply := make([]byte, len(rbReply))
			before := rbHeapInUse()
			conns := make([]*tls.Conn, 0, n)
			for i := 0; i < n; i++ {
				c := rbDial(b, addr)
				conns = append(conns, c)
				if err := rbRoundTrip(c, reply); err != nil {
					b.Fatal(err)
				}
			}
			after := rbHeapInUse()
			b.ReportMetric(float64(after-before)/float64(n), "idle_B/session")
			b.ReportMetric(0, "ns/op") // b.N only sizes the sample
			for _, c := range conns {
				c.Close()
			}
		})
	}
}

// rbHeapInUse is the live heap and goroutine stacks after a GC.
func rbHeapInUse() int64 {
	goruntime.GC()
	var m goruntime.MemStats
	goruntime.ReadMemStats(&m)
	return int64(m.HeapInuse + m.StackInuse)
}
