package proxyproto

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"net/netip"
)

// v2 constants (spec section 2.2).
const (
	v2Version = 0x2

	cmdLocal = 0x0
	cmdProxy = 0x1

	famUnspec     = 0x00 // AF_UNSPEC, UNSPEC transport
	famTCP4       = 0x11 // AF_INET over STREAM
	famTCP6       = 0x21 // AF_INET6 over STREAM
	famUnixStream = 0x31 // AF_UNIX over STREAM

	tlvCRC32C = 0x03
)

// addrLen is the size of the address block of each supported family.
var addrLen = map[byte]int{famUnspec: 0, famTCP4: 12, famTCP6: 36, famUnixStream: 216}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// readV2 reads the rest of a v2 header whose first byte has been read.
func readV2(r io.Reader) (*Header, error) {
	var fixed [v2FixedLen]byte
	fixed[0] = sigV2[0]
	n, err := io.ReadFull(r, fixed[1:])
	// A short read is a truncated header only if what came agrees with the
	// signature.
	if got := min(1+n, len(sigV2)); !bytes.Equal(fixed[:got], sigV2[:got]) {
		return nil, fmt.Errorf("%w: starts with %q", ErrNotProxy, fixed[:got])
	}
	if err != nil {
		return nil, readErr(err)
	}
	if v := fixed[12] >> 4; v != v2Version {
		return nil, invalid("v2 header has version %d", v)
	}
	cmd, fam := fixed[12]&0x0f, fixed[13]
	if cmd != cmdLocal && cmd != cmdProxy {
		return nil, invalid("v2 command %#x is not LOCAL or PROXY", cmd)
	}
	n = int(binary.BigEndian.Uint16(fixed[14:]))
	if n > MaxV2Len {
		return nil, invalid("v2 length %d exceeds %d", n, MaxV2Len)
	}
	buf := make([]byte, v2FixedLen+n)
	copy(buf, fixed[:])
	if _, err := io.ReadFull(r, buf[v2FixedLen:]); err != nil {
		return nil, readErr(err)
	}
	if cmd == cmdLocal {
		// The receiver must accept LOCAL and ignore the family and the
		// whole block (spec section 2.2).
		return &Header{Version: 2, Command: Local}, nil
	}
	al, ok := addrLen[fam]
	if !ok {
		return nil, invalid("v2 family/transport %#02x is not supported", fam)
	}
	if n < al {
		return nil, invalid("v2 length %d is shorter than the %d-byte address block of family %#02x", n, al, fam)
	}
	if err := checkTLVs(buf, v2FixedLen+al); err != nil {
		return nil, err
	}
	h := &Header{Version: 2, Command: Proxy}
	a := buf[v2FixedLen:]
	switch fam {
	case famTCP4:
		h.Source = netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[0:4])), binary.BigEndian.Uint16(a[8:]))
		h.Destination = netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[4:8])), binary.BigEndian.Uint16(a[10:]))
	case famTCP6:
		h.Source = netip.AddrPortFrom(netip.AddrFrom16([16]byte(a[0:16])).Unmap(), binary.BigEndian.Uint16(a[32:]))
		h.Destination = netip.AddrPortFrom(netip.AddrFrom16([16]byte(a[16:32])).Unmap(), binary.BigEndian.Uint16(a[34:]))
	}
	return h, nil
}

// checkTLVs walks the TLVs of header hdr that start at offset off: each must
// fit in the header exactly, and a CRC32C TLV must match the header's
// checksum (spec section 2.2.5). Other TLVs are skipped.
func checkTLVs(hdr []byte, off int) error {
	for rest := hdr[off:]; len(rest) > 0; {
		if len(rest) < 3 {
			return invalid("v2 TLV header truncated: %d bytes left", len(rest))
		}
		typ, l := rest[0], int(binary.BigEndian.Uint16(rest[1:3]))
		if l > len(rest)-3 {
			return invalid("v2 TLV %#02x of length %d overruns the header by %d bytes", typ, l, l-(len(rest)-3))
		}
		if typ == tlvCRC32C {
			if l != 4 {
				return invalid("v2 CRC32C TLV has length %d, not 4", l)
			}
			val := rest[3:7]
			want := binary.BigEndian.Uint32(val)
			var saved [4]byte
			copy(saved[:], val)
			clear(val)
			got := crc32.Checksum(hdr, castagnoli)
			copy(val, saved[:])
			if got != want {
				return invalid("v2 CRC32C mismatch")
			}
		}
		rest = rest[3+l:]
	}
	return nil
}
