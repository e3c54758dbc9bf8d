package gateway

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/pgshield/pgshield/internal/tlsconf"
	"github.com/pgshield/pgshield/internal/wire"
)

// tlsRecordHandshake is the first byte of a TLS ClientHello: a client using
// PostgreSQL 17's sslnegotiation=direct starts with it.
const tlsRecordHandshake = 0x16

// errBufferedAfterSSLRequest: bytes sent behind an SSLRequest, before the
// client could have seen our answer, would be read as if they came over TLS
// (CVE-2021-23214). The connection is closed.
var errBufferedAfterSSLRequest = errors.New("received unencrypted data after SSL request")

// admitted is a connection after TLS negotiation and the startup packet.
type admitted struct {
	conn    net.Conn // TLS or plain; the caller closes it
	tls     *tls.ConnectionState
	startup *wire.Startup
	direct  bool
}

// admit negotiates encryption and reads the StartupMessage, as in
// sqlproxyccl's frontend admitter. It always returns the connection the
// caller must close. A CancelRequest comes back as a startup of KindCancel.
func admit(conn net.Conn, tlsCfg *tls.Config) (admitted, error) {
	a := admitted{conn: conn}
	var first [1]byte
	if _, err := io.ReadFull(conn, first[:]); err != nil {
		return a, err
	}
	if first[0] == tlsRecordHandshake {
		a.direct = true
		tc := tls.Server(&prefixConn{Conn: conn, prefix: first[:]}, tlsCfg)
		a.conn = tc
		if err := tc.Handshake(); err != nil {
			return a, fmt.Errorf("direct TLS handshake: %w", err)
		}
		cs := tc.ConnectionState()
		if cs.NegotiatedProtocol != tlsconf.ALPN {
			return a, errors.New("direct TLS connection without ALPN \"postgresql\"")
		}
		a.tls = &cs
		return readStartupAfterTLS(a)
	}
	r := io.MultiReader(bytes.NewReader(first[:]), conn)
	for i := 0; i < 3; i++ { // SSLRequest/GSSENCRequest, then the real packet
		s, err := wire.ReadStartup(r)
		if err != nil {
			return a, err
		}
		switch s.Kind {
		case wire.KindGSSEncRequest:
			if _, err := conn.Write([]byte{'N'}); err != nil {
				return a, err
			}
			r = conn
			continue
		case wire.KindSSLRequest:
			if pendingInput(conn) {
				return a, errBufferedAfterSSLRequest
			}
			if _, err := conn.Write([]byte{'S'}); err != nil {
				return a, err
			}
			tc := tls.Server(conn, tlsCfg)
			a.conn = tc
			if err := tc.Handshake(); err != nil {
				return a, fmt.Errorf("TLS handshake: %w", err)
			}
			cs := tc.ConnectionState()
			a.tls = &cs
			return readStartupAfterTLS(a)
		}
		a.startup = s
		return a, nil
	}
	return a, fmt.Errorf("%w: too many negotiation requests", wire.ErrProtocolError)
}

func readStartupAfterTLS(a admitted) (admitted, error) {
	s, err := wire.ReadStartup(a.conn)
	if err != nil {
		return a, err
	}
	if s.Kind == wire.KindSSLRequest || s.Kind == wire.KindGSSEncRequest {
		return a, fmt.Errorf("%w: encryption requested inside an encrypted connection", wire.ErrProtocolError)
	}
	a.startup = s
	return a, nil
}

// pendingInput reports whether the kernel already holds bytes from the
// client, without consuming them. Nothing is buffered in user space before
// this point: admit reads exactly the packet's length.
func pendingInput(conn net.Conn) bool {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	pending := false
	_ = raw.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		pending = err == nil && n > 0
		return true // never wait
	})
	return pending
}

// prefixConn replays bytes already read before the rest of the stream.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}
