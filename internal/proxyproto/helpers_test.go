package proxyproto

import (
	"encoding/binary"
	"hash/crc32"
	"net/netip"
	"strconv"
)

// encodeV1 builds a v1 line for two addresses of one family.
func encodeV1(src, dst netip.AddrPort) []byte {
	proto := "TCP4"
	if src.Addr().Is6() {
		proto = "TCP6"
	}
	return []byte("PROXY " + proto + " " + src.Addr().String() + " " + dst.Addr().String() + " " +
		strconv.Itoa(int(src.Port())) + " " + strconv.Itoa(int(dst.Port())) + "\r\n")
}

// v2Header is a v2 header under construction; the fields are written as
// they are, so a test can make any of them wrong.
type v2Header struct {
	verCmd byte   // version (high nibble) and command
	fam    byte   // family and transport
	body   []byte // address block and TLVs
	length *int   // overrides len(body) in the length field
}

// v2Proxy is a PROXY header carrying src and dst.
func v2Proxy(src, dst netip.AddrPort) v2Header {
	h := v2Header{verCmd: 0x21}
	if src.Addr().Is4() {
		h.fam = famTCP4
		a, b := src.Addr().As4(), dst.Addr().As4()
		h.body = append(append(h.body, a[:]...), b[:]...)
	} else {
		h.fam = famTCP6
		a, b := src.Addr().As16(), dst.Addr().As16()
		h.body = append(append(h.body, a[:]...), b[:]...)
	}
	h.body = binary.BigEndian.AppendUint16(h.body, src.Port())
	h.body = binary.BigEndian.AppendUint16(h.body, dst.Port())
	return h
}

// tlv appends one TLV to the body.
func (h v2Header) tlv(typ byte, val []byte) v2Header {
	h.body = append(h.body[:len(h.body):len(h.body)], typ, byte(len(val)>>8), byte(len(val)))
	h.body = append(h.body, val...)
	return h
}

func (h v2Header) encode() []byte {
	b := append([]byte(nil), sigV2...)
	b = append(b, h.verCmd, h.fam)
	n := len(h.body)
	if h.length != nil {
		n = *h.length
	}
	b = binary.BigEndian.AppendUint16(b, uint16(n))
	return append(b, h.body...)
}

// withCRC appends a CRC32C TLV holding the header's checksum, plus delta.
func (h v2Header) withCRC(delta uint32) []byte {
	h = h.tlv(tlvCRC32C, make([]byte, 4))
	b := h.encode()
	sum := crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)) + delta
	binary.BigEndian.PutUint32(b[len(b)-4:], sum)
	return b
}
