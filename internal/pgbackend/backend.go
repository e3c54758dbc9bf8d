package pgbackend

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// maxBackendStartupMsg bounds one message the backend sends before
// ReadyForQuery; ParameterStatus and errors are small.
const maxBackendStartupMsg = 1 << 20

// BackendError is an ErrorResponse the backend sent during startup (such as
// "database does not exist"); it is safe to relay to the client, and the
// gateway relays Msg verbatim. It is the one client-bound error that is not
// a clienterr.Error, on purpose: PostgreSQL's response carries more than a
// code, a message and a detail (its severity, hint, routine, ...), and
// rebuilding it from a clienterr.Error would change what the client sees.
type BackendError struct{ Msg *pgproto3.ErrorResponse }

func (e *BackendError) Error() string { return e.Msg.Severity + ": " + e.Msg.Message }

// Backend is a backend session that has reached ReadyForQuery.
type Backend struct {
	Conn net.Conn
	// PID and Key are the backend's own cancel key; they never leave the gateway.
	PID uint32
	Key []byte
	// Params are the ParameterStatus messages in the order received.
	Params []*pgproto3.ParameterStatus
	// TxStatus is the ReadyForQuery status byte.
	TxStatus byte

	// bindKey is the key SetClient gave pgshield_guard for this backend
	// (nil without one), bindSeq the last BindClient's number.
	bindKey []byte
	bindSeq uint64
	mac     hash.Hash // HMAC-SHA-256 under bindKey, reused by each bind
	// cancelUnconfirmed: a CancelRequest for this backend was sent but the
	// postmaster did not confirm it (close the connection) in time, so the
	// signal may still arrive: the backend must serve no other client.
	cancelUnconfirmed atomic.Bool
}

// MarkCancelUnconfirmed records that a cancel for b may still be on its way.
func (b *Backend) MarkCancelUnconfirmed() { b.cancelUnconfirmed.Store(true) }

// CancelUnconfirmed reports whether a cancel for b may still be on its way
// (see MarkCancelUnconfirmed): such a backend is never handed to another
// client.
func (b *Backend) CancelUnconfirmed() bool { return b.cancelUnconfirmed.Load() }

// ErrCancelUnconfirmed is Cancel's error when the postmaster did not close
// the connection in time: the cancel may still be delivered later.
var ErrCancelUnconfirmed = errors.New("the postmaster did not confirm the cancel request in time")

// SocketPath is the path of the postmaster's Unix socket for port in dir,
// named as libpq names it.
func SocketPath(dir string, port int) string {
	return filepath.Join(dir, fmt.Sprintf(".s.PGSQL.%d", port))
}

// Dialer opens backend sessions over the postmaster's private Unix socket.
type Dialer struct {
	// Socket is the socket's path (SocketPath).
	Socket string
	// CancelWait bounds how long Cancel waits for the postmaster to confirm
	// a cancel by closing the connection; 0 means 5 s.
	CancelWait time.Duration
}

// Connect opens a backend session with the client's startup parameters
// (the role among them, and the client's identity if SetClient put it
// there). The socket is private and trusted, and asks for no
// authentication: see the hba comment in internal/postgres.
func (d *Dialer) Connect(ctx context.Context, params map[string]string) (*Backend, error) {
	var nd net.Dialer
	conn, err := nd.DialContext(ctx, "unix", d.Socket)
	if err != nil {
		return nil, fmt.Errorf("connecting to PostgreSQL: %w", err)
	}
	b, err := handshake(ctx, conn, params)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return b, nil
}

func handshake(ctx context.Context, conn net.Conn, params map[string]string) (*Backend, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	} else {
		_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	}
	sm := &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: params}
	buf, err := sm.Encode(nil)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Write(buf); err != nil {
		return nil, fmt.Errorf("sending startup to PostgreSQL: %w", err)
	}
	b := &Backend{Conn: conn, bindKey: bindKeyFrom(params)}
	authed := false
	for i := 0; i < 1000; i++ { // a backend sends a few dozen messages at most
		typ, body, err := readBackendMessage(conn)
		if err != nil {
			return nil, fmt.Errorf("reading startup reply from PostgreSQL: %w", err)
		}
		switch typ {
		case 'R':
			var m pgproto3.AuthenticationOk
			if err := m.Decode(body); err != nil {
				return nil, errors.New("PostgreSQL asked for authentication on the private socket")
			}
			authed = true
		case 'S':
			m := &pgproto3.ParameterStatus{}
			if err := m.Decode(body); err != nil {
				return nil, err
			}
			b.Params = append(b.Params, m)
		case 'K':
			var m pgproto3.BackendKeyData
			if err := m.Decode(body); err != nil {
				return nil, err
			}
			b.PID, b.Key = m.ProcessID, m.SecretKey
		case 'E':
			m := &pgproto3.ErrorResponse{}
			if err := m.Decode(body); err != nil {
				return nil, err
			}
			return nil, &BackendError{Msg: m}
		case 'N': // NoticeResponse during startup: nothing to keep
		case 'Z':
			if !authed || len(body) != 1 {
				return nil, errors.New("unexpected ReadyForQuery from PostgreSQL")
			}
			b.TxStatus = body[0]
			_ = conn.SetDeadline(time.Time{})
			return b, nil
		default:
			return nil, fmt.Errorf("unexpected message %q from PostgreSQL during startup", typ)
		}
	}
	return nil, errors.New("PostgreSQL sent too many startup messages")
}

func readBackendMessage(r io.Reader) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n < 4 || n-4 > maxBackendStartupMsg {
		return 0, nil, errors.New("invalid message length from PostgreSQL")
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, err
	}
	return hdr[0], body, nil
}

// Cancel sends a CancelRequest for a backend.
func (d *Dialer) Cancel(ctx context.Context, pid uint32, key []byte) error {
	var nd net.Dialer
	conn, err := nd.DialContext(ctx, "unix", d.Socket)
	if err != nil {
		return err
	}
	defer conn.Close()
	msg := &pgproto3.CancelRequest{ProcessID: pid, SecretKey: key}
	buf, err := msg.Encode(nil)
	if err != nil {
		return err
	}
	_, err = conn.Write(buf)
	if err != nil {
		return err
	}
	// Wait for the postmaster to close, so the cancel is delivered before we
	// return; a timeout means it may still be, later.
	wait := d.CancelWait
	if wait <= 0 {
		wait = 5 * time.Second
	}
	_ = conn.SetReadDeadline(time.Now().Add(wait))
	_, err = conn.Read(make([]byte, 1))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return ErrCancelUnconfirmed
	}
	return nil
}
