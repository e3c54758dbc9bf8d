package proxyproto

import (
	"bytes"
	"fmt"
	"io"
	"net/netip"
	"strings"
)

// readV1 reads the rest of a v1 line whose 'P' has been read, one byte at a
// time so nothing after the CRLF is consumed.
func readV1(br io.ByteReader) (*Header, error) {
	var buf [MaxV1Len]byte
	buf[0] = sigV1[0]
	n := 1
	for n < MaxV1Len && buf[n-1] != '\n' {
		c, err := br.ReadByte()
		if err != nil {
			return nil, readErr(err)
		}
		if n < len(sigV1) && c != sigV1[n] {
			return nil, fmt.Errorf("%w: starts with %q", ErrNotProxy, append(buf[:n:n], c))
		}
		buf[n] = c
		n++
	}
	line := buf[:n]
	if !bytes.HasSuffix(line, []byte("\n")) {
		return nil, invalid("v1 header has no CRLF within %d bytes", MaxV1Len)
	}
	if !bytes.HasSuffix(line, []byte("\r\n")) {
		return nil, invalid("v1 header %q ends in LF without CR", line)
	}
	return parseV1(string(line[len(sigV1) : n-2]))
}

// parseV1 parses a v1 line between "PROXY " and the CRLF.
func parseV1(s string) (*Header, error) {
	proto, rest, _ := strings.Cut(s, " ")
	var want4 bool
	switch proto {
	case "UNKNOWN":
		// The sender could not fill in the line; the rest up to the CRLF
		// is to be ignored and the connection's endpoints apply.
		return &Header{Version: 1, Command: Proxy}, nil
	case "TCP4":
		want4 = true
	case "TCP6":
	default:
		return nil, invalid("v1 protocol %q is not TCP4, TCP6 or UNKNOWN", proto)
	}
	f := strings.Split(rest, " ")
	if len(f) != 4 {
		return nil, invalid("v1 %s line %q does not have 4 fields separated by single spaces", proto, rest)
	}
	src, err := parseV1Addr(f[0], want4)
	if err != nil {
		return nil, err
	}
	dst, err := parseV1Addr(f[1], want4)
	if err != nil {
		return nil, err
	}
	sport, err := parseV1Port(f[2])
	if err != nil {
		return nil, err
	}
	dport, err := parseV1Port(f[3])
	if err != nil {
		return nil, err
	}
	return &Header{
		Version:     1,
		Command:     Proxy,
		Source:      netip.AddrPortFrom(src, sport),
		Destination: netip.AddrPortFrom(dst, dport),
	}, nil
}

// parseV1Addr parses an address of the family the line announced.
func parseV1Addr(s string, want4 bool) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, invalid("v1 address %q is not an IP address", s)
	}
	if a.Is4() != want4 {
		return netip.Addr{}, invalid("v1 address %q does not match the announced family", s)
	}
	return a.Unmap(), nil
}

// parseV1Port parses a decimal port in [0, 65535] without sign or leading
// zeros.
func parseV1Port(s string) (uint16, error) {
	if s == "" || len(s) > 5 || (len(s) > 1 && s[0] == '0') {
		return 0, invalid("v1 port %q is not a port number", s)
	}
	var v uint32
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, invalid("v1 port %q is not a port number", s)
		}
		v = v*10 + uint32(c-'0')
	}
	if v > 65535 {
		return 0, invalid("v1 port %q is out of range", s)
	}
	return uint16(v), nil
}
