package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/pgshield/pgshield/internal/clienterr"
)

// Protocol codes carried where a startup packet's version would be.
const (
	ProtocolV3     = 3 << 16
	sslRequestCode = 80877103
	gssEncCode     = 80877104
	cancelCode     = 80877102
)

// MaxStartupPacketLen caps a startup packet against malicious clients; it is
// PostgreSQL's own limit.
const MaxStartupPacketLen = 10000

// ErrProtocolError marks input that breaks the protocol. Callers answer it
// with SQLSTATE 08P01 and close.
var ErrProtocolError = errors.New("protocol violation")

// protoErr wraps ErrProtocolError with a client-safe explanation.
func protoErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocolError, fmt.Sprintf(format, args...))
}

// Kind is the type of the first packet of a connection.
type Kind int

const (
	// KindStartup is a StartupMessage.
	KindStartup Kind = iota
	// KindSSLRequest asks to negotiate TLS.
	KindSSLRequest
	// KindGSSEncRequest asks for GSSAPI encryption, which pgshield declines.
	KindGSSEncRequest
	// KindCancel is a CancelRequest.
	KindCancel
)

// Param is one startup parameter, kept in the client's order.
type Param struct{ Key, Value string }

// Startup is a parsed first packet.
type Startup struct {
	Kind  Kind
	Minor uint16 // protocol 3.x minor version the client asked for
	// Params are the startup parameters in order, without duplicates.
	Params []Param
	// Unrecognized holds the _pq_. protocol options, which pgshield does not
	// support and reports in NegotiateProtocolVersion.
	Unrecognized []string
	// CancelPID and CancelKey are set for KindCancel.
	CancelPID, CancelKey uint32
}

// Get returns a startup parameter's value.
func (s *Startup) Get(key string) (string, bool) {
	for _, p := range s.Params {
		if p.Key == key {
			return p.Value, true
		}
	}
	return "", false
}

// User is the user name the client asked for.
func (s *Startup) User() string { v, _ := s.Get("user"); return v }

// Database is the database asked for; like PostgreSQL it defaults to the
// user name.
func (s *Startup) Database() string {
	if v, ok := s.Get("database"); ok && v != "" {
		return v
	}
	return s.User()
}

// ReadStartup reads one length-prefixed first packet and parses it.
func ReadStartup(r io.Reader) (*Startup, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n < 8 || n > MaxStartupPacketLen {
		return nil, protoErr("invalid length of startup packet")
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	return ParseStartup(body)
}

// ParseStartup parses a first packet's body (after the length word). A
// malformed packet is an ErrProtocolError, another protocol major version
// an *UnsupportedVersionError, and a well-formed packet pgshield refuses (no
// user name, replication) a *clienterr.Error with SQLSTATE 28000.
func ParseStartup(body []byte) (*Startup, error) {
	if len(body) < 4 || len(body) > MaxStartupPacketLen-4 {
		return nil, protoErr("invalid length of startup packet")
	}
	code := binary.BigEndian.Uint32(body)
	rest := body[4:]
	switch code {
	case sslRequestCode:
		if len(rest) != 0 {
			return nil, protoErr("invalid length of SSLRequest")
		}
		return &Startup{Kind: KindSSLRequest}, nil
	case gssEncCode:
		if len(rest) != 0 {
			return nil, protoErr("invalid length of GSSENCRequest")
		}
		return &Startup{Kind: KindGSSEncRequest}, nil
	case cancelCode:
		if len(rest) != 8 {
			return nil, protoErr("invalid length of CancelRequest")
		}
		return &Startup{Kind: KindCancel,
			CancelPID: binary.BigEndian.Uint32(rest), CancelKey: binary.BigEndian.Uint32(rest[4:])}, nil
	}
	major, minor := code>>16, uint16(code&0xffff)
	if major != 3 {
		return nil, &UnsupportedVersionError{Major: uint16(major), Minor: minor}
	}
	s := &Startup{Kind: KindStartup, Minor: minor}
	seen := map[string]bool{}
	for {
		i := bytes.IndexByte(rest, 0)
		if i < 0 {
			return nil, protoErr("invalid startup packet layout: expected terminator as last byte")
		}
		if i == 0 {
			if len(rest) != 1 {
				return nil, protoErr("invalid startup packet layout: data after terminator")
			}
			break
		}
		key := string(rest[:i])
		rest = rest[i+1:]
		j := bytes.IndexByte(rest, 0)
		if j < 0 {
			return nil, protoErr("invalid startup packet layout: missing value for %q", key)
		}
		val := string(rest[:j])
		rest = rest[j+1:]
		if seen[key] {
			return nil, protoErr("duplicate startup parameter %q", key)
		}
		seen[key] = true
		if strings.HasPrefix(key, "_pq_.") {
			s.Unrecognized = append(s.Unrecognized, key)
			continue
		}
		s.Params = append(s.Params, Param{Key: key, Value: val})
	}
	if u, ok := s.Get("user"); !ok || u == "" {
		return nil, &clienterr.Error{Code: CodeInvalidAuthSpec, Message: "no PostgreSQL user name specified in startup packet"}
	}
	if v, ok := s.Get("replication"); ok && !isFalse(v) {
		return nil, &clienterr.Error{Code: CodeInvalidAuthSpec, Message: "replication connections are not accepted through pgshield"}
	}
	return s, nil
}

func isFalse(v string) bool {
	switch strings.ToLower(v) {
	case "false", "off", "no", "0":
		return true
	}
	return false
}

// UnsupportedVersionError is a startup packet of a protocol major version
// other than 3.
type UnsupportedVersionError struct{ Major, Minor uint16 }

func (e *UnsupportedVersionError) Error() string {
	return fmt.Sprintf("unsupported frontend protocol %d.%d: server supports 3.0 to 3.0", e.Major, e.Minor)
}
