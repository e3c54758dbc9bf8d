package proxyproto

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
)

// Signatures that open a header. The v1 one is the text up to the first
// space; the v2 one is binary and cannot occur in a v1 line.
var (
	sigV1 = []byte("PROXY ")
	sigV2 = []byte("\r\n\r\n\x00\r\nQUIT\n")
)

const (
	// MaxV1Len is the longest v1 header, CRLF included (spec section 2.1).
	MaxV1Len = 107
	// MaxV2Len caps the length field of a v2 header: the address block and
	// the TLVs after the 16 fixed bytes. The protocol allows 65535; the
	// largest address block is 216 bytes and pgshield has no use for long
	// TLVs, so anything above this is refused before it is allocated.
	MaxV2Len = 4096
	// v2FixedLen is the signature, version/command, family and length.
	v2FixedLen = 16
)

var (
	// ErrNotProxy means the stream does not start with a PROXY protocol
	// signature: a peer that should have sent a header sent something
	// else, typically a PostgreSQL packet.
	ErrNotProxy = errors.New("not a PROXY protocol header")
	// ErrInvalid means the stream starts with a PROXY protocol signature but
	// the header is malformed, truncated, too long or of an unsupported
	// kind.
	ErrInvalid = errors.New("invalid PROXY protocol header")
)

// invalid wraps ErrInvalid with an explanation. The explanation may quote
// bytes the peer sent, at most MaxV1Len of them.
func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// Command says whether a header relays another host's connection.
type Command uint8

const (
	// Local is a connection the proxy made on its own behalf, such as a
	// health check (v2 LOCAL). The connection's own endpoints apply.
	Local Command = iota
	// Proxy is a connection relayed for a client (v1, and v2 PROXY).
	Proxy
)

func (c Command) String() string {
	switch c {
	case Local:
		return "LOCAL"
	case Proxy:
		return "PROXY"
	}
	return fmt.Sprintf("Command(%d)", uint8(c))
}

// Header is a parsed PROXY protocol header.
type Header struct {
	// Version is 1 (text) or 2 (binary).
	Version int
	// Command is Local or Proxy.
	Command Command
	// Source is the client's address and Destination the address it
	// connected to, as the proxy saw them. Both are valid together or not
	// at all: they are the zero AddrPort for Local, for v1 UNKNOWN and for
	// a v2 PROXY of an unspecified or AF_UNIX family, where the
	// connection's own endpoints apply. IPv4-mapped IPv6 addresses are
	// unmapped, each on its own, so an IPv4 client always appears as IPv4
	// (and a TCP6 header may yield an IPv4 Source).
	Source, Destination netip.AddrPort
}

// HasAddresses reports whether the header carries the client's addresses.
func (h *Header) HasAddresses() bool { return h.Source.IsValid() }

// HasSignature reports whether first begins with a complete v1 or v2
// signature.
func HasSignature(first []byte) bool {
	return bytes.HasPrefix(first, sigV1) || bytes.HasPrefix(first, sigV2)
}

// Detect reports which header version prefix begins with. A prefix shorter
// than a signature is accepted when it agrees with that signature so far, so
// one peeked byte is enough to tell a PROXY header ('P' or '\r') from a
// PostgreSQL packet, whose first byte (the length's high byte) is 0; a
// caller must not wait for more bytes than the peer may have sent. ok is
// false for an empty prefix or one that matches neither signature.
func Detect(prefix []byte) (version int, ok bool) {
	if len(prefix) == 0 {
		return 0, false
	}
	for v, sig := range [...][]byte{1: sigV1, 2: sigV2} {
		n := min(len(prefix), len(sig))
		if sig != nil && bytes.Equal(prefix[:n], sig[:n]) {
			return v, true
		}
	}
	return 0, false
}

// ReadHeader reads one PROXY protocol header of either version from r and
// leaves every byte after it unread. It never reads ahead: a v1 header is
// read one byte at a time (through io.ByteReader when r has it) up to its
// CRLF, a v2 header as its 16 fixed bytes and then exactly its length.
//
// Errors: io.EOF (wrapped) when r ends before the first byte; ErrNotProxy
// when the bytes are no PROXY signature, after consuming at most 16 of them
// (one for a PostgreSQL packet, whose first byte is 0); ErrInvalid
// for a bad header, with io.ErrUnexpectedEOF also wrapped when it was cut
// short; any other read error wrapped as it is, so a deadline still shows as
// a timeout. After an error the stream is unusable and the caller closes it.
//
// ReadHeader does not set deadlines; the caller bounds the wait on r.
func ReadHeader(r io.Reader) (*Header, error) {
	br, ok := r.(io.ByteReader)
	if !ok {
		br = &oneByteReader{r: r}
	}
	b, err := br.ReadByte()
	if err != nil {
		return nil, fmt.Errorf("reading PROXY protocol header: %w", err)
	}
	switch b {
	case sigV1[0]:
		return readV1(br)
	case sigV2[0]:
		return readV2(r)
	}
	return nil, fmt.Errorf("%w: first byte %#02x", ErrNotProxy, b)
}

// readErr wraps an error met after the first byte of a header.
func readErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: truncated header: %w", ErrInvalid, io.ErrUnexpectedEOF)
	}
	return fmt.Errorf("reading PROXY protocol header: %w", err)
}

// oneByteReader gives a plain io.Reader the io.ByteReader method without
// buffering anything.
type oneByteReader struct {
	r io.Reader
	b [1]byte
}

var _ io.ByteReader = (*oneByteReader)(nil)

func (o *oneByteReader) ReadByte() (byte, error) {
	if _, err := io.ReadFull(o.r, o.b[:]); err != nil {
		return 0, err
	}
	return o.b[0], nil
}
