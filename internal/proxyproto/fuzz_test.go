package proxyproto

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// Seed corpora live in testdata/fuzz/<FuzzName>/.

// FuzzReadHeader checks that ReadHeader never panics, that every error is of
// a documented kind, and that an accepted header was read exactly: it does
// not depend on the bytes after it or on how the reader splits its reads,
// and one byte less is a truncated header.
func FuzzReadHeader(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		h, err := ReadHeader(r)
		if err != nil {
			if h != nil {
				t.Fatalf("ReadHeader(%q) = %+v with error %v; want nil", b, h, err)
			}
			isInvalid, isNot := errors.Is(err, ErrInvalid), errors.Is(err, ErrNotProxy)
			switch {
			case len(b) == 0:
				if !errors.Is(err, io.EOF) || isInvalid || isNot {
					t.Fatalf("ReadHeader(empty) error = %v; want io.EOF", err)
				}
			case isInvalid == isNot:
				t.Fatalf("ReadHeader(%q) error = %v; want exactly one of ErrInvalid, ErrNotProxy", b, err)
			case isNot && HasSignature(b):
				t.Fatalf("ReadHeader(%q) error = %v for a stream with a signature", b, err)
			case isInvalid:
				if _, ok := Detect(b); !ok {
					t.Fatalf("ReadHeader(%q) error = %v for a stream Detect refuses", b, err)
				}
			}
			return
		}
		n := len(b) - r.Len()
		hdr := b[:n]
		if !HasSignature(hdr) {
			t.Fatalf("ReadHeader(%q) accepted a header without a signature", b)
		}
		if v, _ := Detect(hdr); v != h.Version {
			t.Fatalf("ReadHeader(%q) version = %d; Detect says %d", b, h.Version, v)
		}
		switch h.Version {
		case 1:
			if n > MaxV1Len || !bytes.HasSuffix(hdr, []byte("\r\n")) || bytes.Count(hdr, []byte("\n")) != 1 {
				t.Fatalf("ReadHeader(%q) consumed %q as a v1 header", b, hdr)
			}
			if h.Command != Proxy {
				t.Fatalf("ReadHeader(%q) command = %v for v1", b, h.Command)
			}
		case 2:
			if n < v2FixedLen || n > v2FixedLen+MaxV2Len || n != v2FixedLen+int(hdr[14])<<8+int(hdr[15]) {
				t.Fatalf("ReadHeader(%q) consumed %d bytes as a v2 header", b, n)
			}
		default:
			t.Fatalf("ReadHeader(%q) version = %d", b, h.Version)
		}
		if h.Source.IsValid() != h.Destination.IsValid() {
			t.Fatalf("ReadHeader(%q) = %+v; want both addresses or neither", b, h)
		}
		if h.Source.IsValid() {
			s, d := h.Source.Addr(), h.Destination.Addr()
			// An IPv6 header may mix a mapped and a plain address, which
			// unmapping turns into two families.
			if h.Command != Proxy || s.Is4In6() || d.Is4In6() || s.Zone() != "" || d.Zone() != "" {
				t.Fatalf("ReadHeader(%q) = %+v; want unmapped addresses without zones for PROXY", b, h)
			}
			if h.Version == 1 && s.Is4() && !bytes.Equal(encodeV1(h.Source, h.Destination), hdr) {
				t.Fatalf("ReadHeader(%q) = %+v, which encodes as %q", b, h, encodeV1(h.Source, h.Destination))
			}
		}
		again, err := ReadHeader(iotest.OneByteReader(bytes.NewReader(hdr)))
		if err != nil || *again != *h {
			t.Fatalf("ReadHeader(%q) alone, one byte at a time = %+v, %v; want %+v", hdr, again, err, h)
		}
		if _, err := ReadHeader(bytes.NewReader(hdr[:n-1])); !errors.Is(err, ErrInvalid) || !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("ReadHeader(%q) without its last byte error = %v; want a truncated header", hdr, err)
		}
	})
}
