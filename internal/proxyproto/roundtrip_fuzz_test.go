package proxyproto

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
)

// FuzzHeaderRoundTrip builds well-formed v1 and v2 headers from fuzzed
// addresses, ports and TLVs and checks that ReadHeader gives back exactly
// what was encoded (IPv4-mapped addresses unmapped, as documented), leaves
// the bytes after the header unread, and refuses the header with any one
// byte of its v2 CRC32C changed. FuzzReadHeader covers arbitrary bytes;
// this target reaches the accepting paths it rarely finds.
func FuzzHeaderRoundTrip(f *testing.F) {
	f.Add(false, []byte{10, 0, 0, 1}, []byte{10, 0, 0, 2}, uint16(5432), uint16(6432), []byte(nil), []byte("tail"))
	f.Add(true, bytes.Repeat([]byte{0xfd}, 16), bytes.Repeat([]byte{1}, 16), uint16(0), uint16(65535),
		[]byte{0x02, 0, 3, 'a', 'b', 'c'}, []byte{0, 0, 0, 8})
	f.Add(true, append(make([]byte, 10), 0xff, 0xff, 192, 0, 2, 1), make([]byte, 16), uint16(1), uint16(2), []byte{}, []byte{})
	f.Fuzz(func(t *testing.T, six bool, srcB, dstB []byte, sport, dport uint16, tlvs, after []byte) {
		n := 4
		if six {
			n = 16
		}
		if len(srcB) < n || len(dstB) < n {
			return
		}
		src, _ := netip.AddrFromSlice(srcB[:n])
		dst, _ := netip.AddrFromSlice(dstB[:n])
		sp, dp := netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport)
		want := Header{Version: 2, Command: Proxy,
			Source:      netip.AddrPortFrom(src.Unmap(), sport),
			Destination: netip.AddrPortFrom(dst.Unmap(), dport)}

		// v2, with the fuzzed bytes as one opaque TLV (type 0xE0, a custom
		// type the receiver skips) so the TLV walk always sees valid ones.
		h := v2Proxy(sp, dp)
		if len(tlvs) > 0 && len(tlvs) <= 1024 {
			h = h.tlv(0xE0, tlvs)
		}
		enc := h.encode()
		checkRead(t, enc, after, want)
		// With a CRC32C: right, it is accepted; any byte of the addresses,
		// ports or TLV values changed, refused. (A changed type, length or
		// command byte may legitimately make another valid header: no
		// CRC TLV at all, a shorter one, or LOCAL.)
		crc := h.withCRC(0)
		checkRead(t, crc, after, want)
		if len(srcB) > n {
			block := 2*n + 4
			covered := []int{}
			for i := v2FixedLen; i < v2FixedLen+block; i++ {
				covered = append(covered, i)
			}
			if len(tlvs) > 0 && len(tlvs) <= 1024 {
				for i := range tlvs {
					covered = append(covered, v2FixedLen+block+3+i)
				}
			}
			for i := len(crc) - 4; i < len(crc); i++ {
				covered = append(covered, i)
			}
			i := covered[int(srcB[n])%len(covered)]
			bad := bytes.Clone(crc)
			bad[i] ^= 1 | srcB[n]
			if got, err := ReadHeader(bytes.NewReader(bad)); err == nil {
				t.Fatalf("ReadHeader(%q with byte %d changed) = %+v; want a refusal", crc, i, got)
			}
		}

		// v1 carries one family per line; the text form has no mapped
		// addresses, so only plain ones of a kind round-trip.
		if src.Is4In6() || dst.Is4In6() {
			return
		}
		v1 := encodeV1(sp, dp)
		want.Version = 1
		if len(v1) > MaxV1Len {
			t.Fatalf("encodeV1(%v, %v) = %d bytes; the longest possible line is %d", sp, dp, len(v1), MaxV1Len)
		}
		checkRead(t, v1, after, want)
		// v1 ports are decimal without leading zeros; a padded port is
		// refused rather than read as another number.
		padded := strings.Replace(string(v1), " "+itoa(dport)+"\r\n", " 0"+itoa(dport)+"\r\n", 1)
		if _, err := ReadHeader(strings.NewReader(padded)); err == nil && dport != 0 {
			t.Fatalf("ReadHeader(%q) accepted a zero-padded port", padded)
		}
	})
}

func itoa(v uint16) string {
	var b [5]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			return string(b[i:])
		}
	}
}

// checkRead reads hdr followed by after and wants exactly want, with after
// still unread.
func checkRead(t *testing.T, hdr, after []byte, want Header) {
	t.Helper()
	r := bytes.NewReader(append(bytes.Clone(hdr), after...))
	got, err := ReadHeader(r)
	if err != nil {
		t.Fatalf("ReadHeader(%q) error = %v; want %+v", hdr, err, want)
	}
	if *got != want {
		t.Fatalf("ReadHeader(%q) = %+v; want %+v", hdr, *got, want)
	}
	if r.Len() != len(after) {
		t.Fatalf("ReadHeader(%q) left %d of the %d bytes after the header", hdr, r.Len(), len(after))
	}
}

// FuzzParseTrusted checks that ParseTrusted never panics, that what it
// accepts prints in a form it parses back to the same prefixes, and that
// Contains agrees with the prefixes for their own addresses and mapped
// forms.
func FuzzParseTrusted(f *testing.F) {
	for _, s := range []string{"", "10.0.0.0/8", " 192.168.1.5 , fd00::/8", "::ffff:10.0.0.0/104", "10.1.0.0/8",
		"fe80::1%eth0", "0.0.0.0/0,::/0", ",", "1.2.3.4/33"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tr, err := ParseTrusted(s)
		if err != nil {
			if tr.Len() != 0 {
				t.Fatalf("ParseTrusted(%q) = %v with error %v", s, tr, err)
			}
			return
		}
		again, err := ParseTrusted(tr.String())
		if err != nil {
			t.Fatalf("ParseTrusted(%q).String() = %q, which ParseTrusted refuses: %v", s, tr.String(), err)
		}
		if got, want := again.Prefixes(), tr.Prefixes(); len(got) != len(want) {
			t.Fatalf("round trip of %q: %v; want %v", s, got, want)
		} else {
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("round trip of %q: %v; want %v", s, got, want)
				}
			}
		}
		for _, p := range tr.Prefixes() {
			if p != p.Masked() || p.Addr().Zone() != "" || (p.Addr().Is4In6() && p.Bits() >= 96) {
				t.Fatalf("ParseTrusted(%q) kept prefix %v: want masked, zoneless, unmapped", s, p)
			}
			a := p.Addr()
			if !tr.Contains(a) {
				t.Fatalf("ParseTrusted(%q).Contains(%v) = false for its own prefix %v", s, a, p)
			}
			if a.Is4() && !tr.Contains(netip.AddrFrom16(a.As16())) {
				t.Fatalf("ParseTrusted(%q).Contains(mapped %v) = false", s, a)
			}
		}
		if tr.Contains(netip.Addr{}) {
			t.Fatalf("ParseTrusted(%q) trusts the invalid address", s)
		}
	})
}
