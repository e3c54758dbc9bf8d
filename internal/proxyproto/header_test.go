package proxyproto

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

// trailer stands for the PostgreSQL bytes that follow a header: an
// SSLRequest.
var trailer = []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func intp(n int) *int { return &n }

func TestReadHeaderValid(t *testing.T) {
	long := strings.Repeat("x", MaxV1Len-len("PROXY UNKNOWN \r\n"))
	tests := []struct {
		name string
		in   []byte
		want Header
	}{
		{"v1 tcp4", []byte("PROXY TCP4 192.0.2.1 198.51.100.2 56324 5432\r\n"),
			Header{1, Proxy, ap("192.0.2.1:56324"), ap("198.51.100.2:5432")}},
		{"v1 tcp4 extremes", []byte("PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n"),
			Header{1, Proxy, ap("255.255.255.255:65535"), ap("0.0.0.0:0")}},
		{"v1 tcp6", []byte("PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n"),
			Header{1, Proxy, ap("[2001:db8::1]:1"), ap("[2001:db8::2]:65535")}},
		{"v1 tcp6 mapped is unmapped", []byte("PROXY TCP6 ::ffff:192.0.2.1 ::ffff:192.0.2.2 10 20\r\n"),
			Header{1, Proxy, ap("192.0.2.1:10"), ap("192.0.2.2:20")}},
		{"v1 longest tcp6", []byte("PROXY TCP6 ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n"),
			Header{}}, // replaced below
		{"v1 unknown", []byte("PROXY UNKNOWN\r\n"), Header{Version: 1, Command: Proxy}},
		{"v1 unknown with junk", []byte("PROXY UNKNOWN ffff::1 \x00\r junk\r\n"), Header{Version: 1, Command: Proxy}},
		{"v1 unknown of max length", []byte("PROXY UNKNOWN " + long + "\r\n"), Header{Version: 1, Command: Proxy}},
		{"v2 tcp4", v2Proxy(ap("192.0.2.1:56324"), ap("198.51.100.2:5432")).encode(),
			Header{2, Proxy, ap("192.0.2.1:56324"), ap("198.51.100.2:5432")}},
		{"v2 tcp6", v2Proxy(ap("[2001:db8::1]:1"), ap("[2001:db8::2]:5432")).encode(),
			Header{2, Proxy, ap("[2001:db8::1]:1"), ap("[2001:db8::2]:5432")}},
		{"v2 tcp6 mapped is unmapped", v2Proxy(ap("[::ffff:192.0.2.1]:1"), ap("[::ffff:192.0.2.2]:2")).encode(),
			Header{2, Proxy, ap("192.0.2.1:1"), ap("192.0.2.2:2")}},
		{"v2 tcp6 half mapped", v2Proxy(ap("[::ffff:192.0.2.1]:1"), ap("[2001:db8::2]:2")).encode(),
			Header{2, Proxy, ap("192.0.2.1:1"), ap("[2001:db8::2]:2")}},
		{"v2 tcp4 with tlvs", v2Proxy(ap("192.0.2.1:1"), ap("192.0.2.2:2")).
			tlv(0x02, []byte("db.example")).tlv(0x04, make([]byte, 100)).tlv(0xe0, nil).encode(),
			Header{2, Proxy, ap("192.0.2.1:1"), ap("192.0.2.2:2")}},
		{"v2 tcp6 with crc", v2Proxy(ap("[2001:db8::1]:1"), ap("[2001:db8::2]:2")).tlv(0x04, []byte{0}).withCRC(0),
			Header{2, Proxy, ap("[2001:db8::1]:1"), ap("[2001:db8::2]:2")}},
		{"v2 local", v2Header{verCmd: 0x20}.encode(), Header{Version: 2, Command: Local}},
		{"v2 local ignores family and block", v2Header{verCmd: 0x20, fam: 0xff, body: []byte{1, 2, 3}}.encode(),
			Header{Version: 2, Command: Local}},
		{"v2 proxy unspec", v2Header{verCmd: 0x21, fam: famUnspec}.encode(), Header{Version: 2, Command: Proxy}},
		{"v2 proxy unspec with tlv", v2Header{verCmd: 0x21}.tlv(0x01, []byte("h2")).encode(), Header{Version: 2, Command: Proxy}},
		{"v2 proxy unix", v2Header{verCmd: 0x21, fam: famUnixStream, body: make([]byte, 216)}.encode(),
			Header{Version: 2, Command: Proxy}},
		{"v2 max length", v2Proxy(ap("192.0.2.1:1"), ap("192.0.2.2:2")).tlv(0x04, make([]byte, MaxV2Len-12-3)).encode(),
			Header{2, Proxy, ap("192.0.2.1:1"), ap("192.0.2.2:2")}},
	}
	// The longest v1 line the spec allows for TCP6 (104 bytes).
	f := strings.Repeat("ffff:", 7) + "ffff"
	tests[4].in = []byte("PROXY TCP6 " + f + " " + f + " 65535 65535\r\n")
	tests[4].want = Header{1, Proxy, netip.AddrPortFrom(netip.MustParseAddr(f), 65535), netip.AddrPortFrom(netip.MustParseAddr(f), 65535)}
	if n := len(tests[7].in); n != MaxV1Len {
		t.Fatalf("max-length v1 case is %d bytes; want %d", n, MaxV1Len)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			readers := map[string]func(io.Reader) io.Reader{
				"bytes.Reader":  func(r io.Reader) io.Reader { return r },
				"OneByteReader": iotest.OneByteReader,
				"HalfReader":    iotest.HalfReader,
			}
			for rname, wrap := range readers {
				in := append(append([]byte(nil), tt.in...), trailer...)
				br := bytes.NewReader(in)
				h, err := ReadHeader(wrap(br))
				if err != nil {
					t.Fatalf("%s: ReadHeader(%q) error = %v; want nil", rname, tt.in, err)
				}
				if *h != tt.want {
					t.Errorf("%s: ReadHeader(%q) = %+v; want %+v", rname, tt.in, *h, tt.want)
				}
				if h.HasAddresses() != tt.want.Source.IsValid() {
					t.Errorf("%s: HasAddresses() = %v", rname, h.HasAddresses())
				}
				rest, _ := io.ReadAll(br)
				if !bytes.Equal(rest, trailer) {
					t.Errorf("%s: ReadHeader(%q) left %q unread; want %q", rname, tt.in, rest, trailer)
				}
			}
			if v, ok := Detect(tt.in[:1]); !ok || v != tt.want.Version {
				t.Errorf("Detect(%q) = %d, %v; want %d, true", tt.in[:1], v, ok, tt.want.Version)
			}
			if !HasSignature(tt.in) {
				t.Errorf("HasSignature(%q) = false; want true", tt.in)
			}
		})
	}
}

func TestReadHeaderInvalid(t *testing.T) {
	tcp4 := v2Proxy(ap("192.0.2.1:1"), ap("192.0.2.2:2"))
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		// v1.
		{"v1 no CRLF within 107", []byte("PROXY UNKNOWN " + strings.Repeat("x", 100) + "\r\n"), ErrInvalid},
		{"v1 LF without CR", []byte("PROXY TCP4 192.0.2.1 192.0.2.2 1 2\n"), ErrInvalid},
		{"v1 CR without LF", []byte("PROXY TCP4 192.0.2.1 192.0.2.2 1 2\rX\r\n"), ErrInvalid},
		{"v1 empty protocol", []byte("PROXY \r\n"), ErrInvalid},
		{"v1 lower-case protocol", []byte("PROXY tcp4 192.0.2.1 192.0.2.2 1 2\r\n"), ErrInvalid},
		{"v1 UDP4", []byte("PROXY UDP4 192.0.2.1 192.0.2.2 1 2\r\n"), ErrInvalid},
		{"v1 UNKNOWNX", []byte("PROXY UNKNOWNX\r\n"), ErrInvalid},
		{"v1 missing field", []byte("PROXY TCP4 192.0.2.1 192.0.2.2 1\r\n"), ErrInvalid},
		{"v1 extra field", []byte("PROXY TCP4 192.0.2.1 192.0.2.2 1 2 3\r\n"), ErrInvalid},
		{"v1 double space", []byte("PROXY TCP4 192.0.2.1  192.0.2.2 1 2\r\n"), ErrInvalid},
		{"v1 trailing space", []byte("PROXY TCP4 192.0.2.1 192.0.2.2 1 2 \r\n"), ErrInvalid},
		{"v1 tab", []byte("PROXY TCP4 192.0.2.1\t192.0.2.2 1 2\r\n"), ErrInvalid},
		{"v1 port too big", []byte("PROXY TCP4 192.0.2.1 192.0.2.2 65536 2\r\n"), ErrInvalid},
		{"v1 port huge", []byte("PROXY TCP4 192.0.2.1 192.0.2.2 1 99999999999\r\n"), ErrInvalid},
		{"v1 port leading zero", []byte("PROXY TCP4 192.0.2.1 192.0.2.2 01 2\r\n"), ErrInvalid},
		{"v1 port sign", []byte("PROXY TCP4 192.0.2.1 192.0.2.2 +1 2\r\n"), ErrInvalid},
		{"v1 port negative", []byte("PROXY TCP4 192.0.2.1 192.0.2.2 1 -2\r\n"), ErrInvalid},
		{"v1 port empty", []byte("PROXY TCP4 192.0.2.1 192.0.2.2  2\r\n"), ErrInvalid},
		{"v1 port hex", []byte("PROXY TCP4 192.0.2.1 192.0.2.2 0x10 2\r\n"), ErrInvalid},
		{"v1 bad address", []byte("PROXY TCP4 192.0.2.256 192.0.2.2 1 2\r\n"), ErrInvalid},
		{"v1 address leading zero", []byte("PROXY TCP4 192.0.2.01 192.0.2.2 1 2\r\n"), ErrInvalid},
		{"v1 hostname", []byte("PROXY TCP4 localhost 192.0.2.2 1 2\r\n"), ErrInvalid},
		{"v1 zone", []byte("PROXY TCP6 fe80::1%eth0 fe80::2 1 2\r\n"), ErrInvalid},
		{"v1 TCP4 with IPv6", []byte("PROXY TCP4 2001:db8::1 192.0.2.2 1 2\r\n"), ErrInvalid},
		{"v1 TCP4 with IPv6 destination", []byte("PROXY TCP4 192.0.2.1 2001:db8::2 1 2\r\n"), ErrInvalid},
		{"v1 TCP6 with IPv4", []byte("PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n"), ErrInvalid},
		{"v1 NUL", []byte("PROXY TCP4 192.0.2.1\x00 192.0.2.2 1 2\r\n"), ErrInvalid},
		// v2.
		{"v2 version 1", v2Header{verCmd: 0x11, fam: famTCP4, body: tcp4.body}.encode(), ErrInvalid},
		{"v2 version 3", v2Header{verCmd: 0x31, fam: famTCP4, body: tcp4.body}.encode(), ErrInvalid},
		{"v2 command 2", v2Header{verCmd: 0x22, fam: famTCP4, body: tcp4.body}.encode(), ErrInvalid},
		{"v2 oversize", v2Header{verCmd: 0x21, fam: famTCP4, length: intp(MaxV2Len + 1)}.encode(), ErrInvalid},
		{"v2 max uint16 length", v2Header{verCmd: 0x21, fam: famTCP4, length: intp(0xffff)}.encode(), ErrInvalid},
		{"v2 udp4", v2Header{verCmd: 0x21, fam: 0x12, body: tcp4.body}.encode(), ErrInvalid},
		{"v2 udp6", v2Header{verCmd: 0x21, fam: 0x22, body: make([]byte, 36)}.encode(), ErrInvalid},
		{"v2 unix dgram", v2Header{verCmd: 0x21, fam: 0x32, body: make([]byte, 216)}.encode(), ErrInvalid},
		{"v2 inet unspec transport", v2Header{verCmd: 0x21, fam: 0x10, body: tcp4.body}.encode(), ErrInvalid},
		{"v2 family 4", v2Header{verCmd: 0x21, fam: 0x41, body: tcp4.body}.encode(), ErrInvalid},
		{"v2 tcp4 block short", v2Header{verCmd: 0x21, fam: famTCP4, body: tcp4.body[:11]}.encode(), ErrInvalid},
		{"v2 tcp6 length of tcp4", v2Header{verCmd: 0x21, fam: famTCP6, body: tcp4.body}.encode(), ErrInvalid},
		{"v2 stray byte after block", v2Header{verCmd: 0x21, fam: famTCP4, body: make([]byte, 13)}.encode(), ErrInvalid},
		{"v2 unix block short", v2Header{verCmd: 0x21, fam: famUnixStream, body: make([]byte, 215)}.encode(), ErrInvalid},
		{"v2 TLV header cut", v2Header{verCmd: 0x21, fam: famTCP4, body: append(tcp4.body[:12:12], 0x04, 0)}.encode(), ErrInvalid},
		{"v2 TLV overruns", v2Header{verCmd: 0x21, fam: famTCP4, body: append(tcp4.body[:12:12], 0x04, 0, 2, 0)}.encode(), ErrInvalid},
		{"v2 CRC mismatch", tcp4.withCRC(1), ErrInvalid},
		{"v2 CRC wrong length", tcp4.tlv(tlvCRC32C, []byte{1, 2, 3}).encode(), ErrInvalid},
		// Not PROXY at all.
		{"postgres SSLRequest", trailer, ErrNotProxy},
		{"postgres startup", []byte{0, 0, 0, 9, 0, 3, 0, 0, 0}, ErrNotProxy},
		{"HTTP", []byte("GET / HTTP/1.1\r\n\r\n"), ErrNotProxy},
		{"PROXZ", []byte("PROXZ TCP4 192.0.2.1 192.0.2.2 1 2\r\n"), ErrNotProxy},
		{"PROXY without space", []byte("PROXY\r\n"), ErrNotProxy},
		{"lower-case proxy", []byte("proxy TCP4 192.0.2.1 192.0.2.2 1 2\r\n"), ErrNotProxy},
		{"v2 bad signature", append([]byte("\r\n\r\n\x00\r\nQUIT\r"), 0x21, 0x11, 0, 12), ErrNotProxy},
		{"CRLF CRLF", []byte("\r\n\r\nhello, world\r\n"), ErrNotProxy},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := ReadHeader(bytes.NewReader(append(append([]byte(nil), tt.in...), trailer...)))
			if !errors.Is(err, tt.want) || h != nil {
				t.Fatalf("ReadHeader(%q) = %+v, %v; want nil, %v", tt.in, h, err, tt.want)
			}
			wantOther := ErrInvalid
			if tt.want == ErrInvalid {
				wantOther = ErrNotProxy
			}
			if errors.Is(err, wantOther) {
				t.Errorf("ReadHeader(%q) error = %v; is also %v", tt.in, err, wantOther)
			}
			if _, ok := Detect(tt.in); ok != (tt.want == ErrInvalid) {
				t.Errorf("Detect(%q) ok = %v; want %v", tt.in, ok, tt.want == ErrInvalid)
			}
		})
	}
}

// TestReadHeaderTruncated cuts valid headers at every byte: each cut must be
// ErrInvalid with io.ErrUnexpectedEOF, or io.EOF at zero bytes.
func TestReadHeaderTruncated(t *testing.T) {
	headers := [][]byte{
		[]byte("PROXY TCP4 192.0.2.1 198.51.100.2 56324 5432\r\n"),
		[]byte("PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n"),
		[]byte("PROXY UNKNOWN\r\n"),
		v2Proxy(ap("192.0.2.1:56324"), ap("198.51.100.2:5432")).encode(),
		v2Proxy(ap("[2001:db8::1]:1"), ap("[2001:db8::2]:5432")).tlv(0x02, []byte("db")).withCRC(0),
		v2Header{verCmd: 0x20}.encode(),
	}
	for _, full := range headers {
		for n := 0; n < len(full); n++ {
			in := full[:n]
			h, err := ReadHeader(bytes.NewReader(in))
			if h != nil || err == nil {
				t.Fatalf("ReadHeader(%q) = %+v, %v; want an error", in, h, err)
			}
			if n == 0 {
				if !errors.Is(err, io.EOF) || errors.Is(err, ErrInvalid) || errors.Is(err, ErrNotProxy) {
					t.Errorf("ReadHeader(%q) error = %v; want io.EOF alone", in, err)
				}
				continue
			}
			if !errors.Is(err, ErrInvalid) || !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("ReadHeader(%q) error = %v; want ErrInvalid and io.ErrUnexpectedEOF", in, err)
			}
		}
	}
}

// TestReadHeaderConn reads from a real socket: the header and the bytes after
// it arrive in one segment, and ReadHeader must leave the latter in the
// kernel for the next reader.
func TestReadHeaderConn(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	for _, hdr := range [][]byte{
		[]byte("PROXY TCP4 192.0.2.1 198.51.100.2 56324 5432\r\n"),
		v2Proxy(ap("192.0.2.1:56324"), ap("198.51.100.2:5432")).withCRC(0),
	} {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		if _, err := c.Write(append(append([]byte(nil), hdr...), trailer...)); err != nil {
			t.Fatal(err)
		}
		s.SetDeadline(time.Now().Add(5 * time.Second))
		h, err := ReadHeader(s)
		if err != nil {
			t.Fatalf("ReadHeader(%q) error = %v", hdr, err)
		}
		if h.Source != ap("192.0.2.1:56324") || h.Destination != ap("198.51.100.2:5432") {
			t.Errorf("ReadHeader(%q) = %+v", hdr, h)
		}
		rest := make([]byte, len(trailer))
		if _, err := io.ReadFull(s, rest); err != nil || !bytes.Equal(rest, trailer) {
			t.Errorf("after ReadHeader(%q) read %q, %v; want %q", hdr, rest, err, trailer)
		}
	}
}

// TestReadHeaderDeadline checks that a read error is passed on as itself.
func TestReadHeaderDeadline(t *testing.T) {
	c, s := net.Pipe()
	t.Cleanup(func() { c.Close(); s.Close() })
	go c.Write([]byte("PROXY TCP4 "))
	s.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	_, err := ReadHeader(s)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("ReadHeader on a stalled peer error = %v; want a timeout", err)
	}
}

func TestDetect(t *testing.T) {
	tests := []struct {
		in   string
		v    int
		ok   bool
		full bool
	}{
		{"", 0, false, false},
		{"P", 1, true, false},
		{"PROX", 1, true, false},
		{"PROXY", 1, true, false},
		{"PROXY ", 1, true, true},
		{"PROXY TCP4", 1, true, true},
		{"PROXZ", 0, false, false},
		{"\r", 2, true, false},
		{"\r\n\r\n\x00\r\nQUI", 2, true, false},
		{"\r\n\r\n\x00\r\nQUIT\n", 2, true, true},
		{"\r\n\r\n\x00\r\nQUIT\n\x21", 2, true, true},
		{"\r\n\r\n\x01", 0, false, false},
		{"\x00\x00\x00\x08", 0, false, false},
		{"p", 0, false, false},
	}
	for _, tt := range tests {
		v, ok := Detect([]byte(tt.in))
		if v != tt.v || ok != tt.ok {
			t.Errorf("Detect(%q) = %d, %v; want %d, %v", tt.in, v, ok, tt.v, tt.ok)
		}
		if got := HasSignature([]byte(tt.in)); got != tt.full {
			t.Errorf("HasSignature(%q) = %v; want %v", tt.in, got, tt.full)
		}
	}
}

func TestCommandString(t *testing.T) {
	for c, want := range map[Command]string{Local: "LOCAL", Proxy: "PROXY", 7: "Command(7)"} {
		if got := c.String(); got != want {
			t.Errorf("Command(%d).String() = %q; want %q", c, got, want)
		}
	}
}
