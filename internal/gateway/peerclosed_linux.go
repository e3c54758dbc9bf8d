package gateway

import (
	"errors"
	"net"
	"syscall"
)

// peerGone reports, without waiting, that an idle backend connection has
// something to read: PostgreSQL closed it (pg_terminate_backend sends its
// FATAL, then EOF; idle_session_timeout; a restart) or sent what an idle
// backend never should. Transaction pooling hands a parked backend back to
// its last client without a round trip, so it checks this first (one
// non-blocking MSG_PEEK) rather than have that client's next query fail.
func peerGone(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	gone := false
	_ = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		gone = n > 0 || (err == nil && n == 0) || (err != nil && !errors.Is(err, syscall.EAGAIN) && !errors.Is(err, syscall.EINTR))
		return true // never wait
	})
	return gone
}
