package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/clienterr"
)

// Seed corpora live in testdata/fuzz/<FuzzName>/.

// FuzzParseStartup checks that ParseStartup never panics, that every error is
// one of its three documented kinds, and that an accepted StartupMessage
// satisfies the invariants the gateway relies on and survives a round trip
// through pgproto3's encoder.
func FuzzParseStartup(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseStartup(b)
		if err != nil {
			var se *clienterr.Error
			var ve *UnsupportedVersionError
			if !errors.Is(err, ErrProtocolError) && !errors.As(err, &se) && !errors.As(err, &ve) {
				t.Fatalf("ParseStartup(%q) error = %v (%T); want a protocol, startup or version error", b, err, err)
			}
			if s != nil {
				t.Fatalf("ParseStartup(%q) = %+v with error %v; want nil", b, s, err)
			}
			return
		}
		if len(b) < 4 || len(b) > MaxStartupPacketLen-4 {
			t.Fatalf("ParseStartup(%q) accepted a body of %d bytes", b, len(b))
		}
		code := binary.BigEndian.Uint32(b)
		switch s.Kind {
		case KindSSLRequest, KindGSSEncRequest:
			if len(b) != 4 {
				t.Fatalf("ParseStartup(%q) = kind %v for a %d-byte body; want exactly 4 bytes", b, s.Kind, len(b))
			}
			return
		case KindCancel:
			if len(b) != 12 || code != cancelCode ||
				s.CancelPID != binary.BigEndian.Uint32(b[4:]) || s.CancelKey != binary.BigEndian.Uint32(b[8:]) {
				t.Fatalf("ParseStartup(%q) = %+v; want the CancelRequest's pid and key", b, s)
			}
			return
		case KindStartup:
		default:
			t.Fatalf("ParseStartup(%q) kind = %v; want a known kind", b, s.Kind)
		}
		if code>>16 != 3 || s.Minor != uint16(code) {
			t.Fatalf("ParseStartup(%q) = v3.%d from code %#x; want major 3 and the code's minor", b, s.Minor, code)
		}
		if b[len(b)-1] != 0 {
			t.Fatalf("ParseStartup(%q) accepted a packet without the final NUL", b)
		}
		if s.User() == "" {
			t.Fatalf("ParseStartup(%q) accepted an empty user", b)
		}
		if v, ok := s.Get("replication"); ok && !isFalse(v) {
			t.Fatalf("ParseStartup(%q) accepted replication=%q", b, v)
		}
		seen := map[string]bool{}
		params := map[string]string{}
		for _, p := range s.Params {
			if seen[p.Key] {
				t.Fatalf("ParseStartup(%q) params hold %q twice", b, p.Key)
			}
			if p.Key == "" || strings.HasPrefix(p.Key, "_pq_.") || strings.ContainsRune(p.Key, 0) ||
				strings.ContainsRune(p.Value, 0) {
				t.Fatalf("ParseStartup(%q) param %q=%q is not a plain parameter", b, p.Key, p.Value)
			}
			seen[p.Key] = true
			params[p.Key] = p.Value
		}
		for _, k := range s.Unrecognized {
			if seen[k] || !strings.HasPrefix(k, "_pq_.") {
				t.Fatalf("ParseStartup(%q) unrecognized option %q is duplicated or not a _pq_. option", b, k)
			}
			seen[k] = true
			params[k] = ""
		}

		// Re-encode with pgproto3 (protocol options with empty values, which
		// the parser does not keep) and parse again.
		enc, err := (&pgproto3.StartupMessage{ProtocolVersion: code, Parameters: params}).Encode(nil)
		if err != nil {
			t.Fatalf("StartupMessage{%q}.Encode() error = %v", params, err)
		}
		if got := binary.BigEndian.Uint32(enc); int(got) != len(enc) {
			t.Fatalf("StartupMessage.Encode() length word %d; want %d", got, len(enc))
		}
		if len(enc) > len(b)+4 {
			t.Fatalf("re-encoded startup is %d bytes; want at most the original %d", len(enc), len(b)+4)
		}
		s2, err := ReadStartup(bytes.NewReader(enc))
		if err != nil {
			t.Fatalf("ReadStartup(re-encoded %q) error = %v; want nil", enc, err)
		}
		if s2.Minor != s.Minor || s2.Kind != KindStartup {
			t.Fatalf("re-parsed startup = v3.%d kind %v; want v3.%d startup", s2.Minor, s2.Kind, s.Minor)
		}
		got := map[string]string{}
		for _, p := range s2.Params {
			got[p.Key] = p.Value
		}
		for _, k := range s2.Unrecognized {
			got[k] = ""
		}
		if !maps.Equal(got, params) {
			t.Fatalf("re-parsed params = %q; want %q", got, params)
		}
		if !slices.Equal(slices.Sorted(slices.Values(s2.Unrecognized)), slices.Sorted(slices.Values(s.Unrecognized))) {
			t.Fatalf("re-parsed unrecognized = %q; want %q", s2.Unrecognized, s.Unrecognized)
		}
	})
}

// FuzzReadMessage checks that ReadMessage never panics, never returns a body
// longer than maxLen, and consumes exactly the message it returns; and that
// ReadExpected agrees with it.
func FuzzReadMessage(f *testing.F) {
	f.Fuzz(func(t *testing.T, in []byte, maxLen uint16) {
		// ReadExpected must agree with ReadMessage on a message of the
		// expected type and refuse any other after one byte.
		er := &countingReader{r: bytes.NewReader(in)}
		eb, eerr := ReadExpected(er, 'p', int(maxLen))
		_, mb, merr := ReadMessage(bytes.NewReader(in), int(maxLen))
		var ue *UnexpectedMessageError
		switch {
		case len(in) > 0 && in[0] != 'p':
			if !errors.As(eerr, &ue) || ue.Got != in[0] || er.n != 1 || !errors.Is(eerr, ErrProtocolError) {
				t.Fatalf("ReadExpected(%q, 'p') = %v after %d bytes; want UnexpectedMessageError after 1", in, eerr, er.n)
			}
		case !bytes.Equal(eb, mb) || (eerr == nil) != (merr == nil) || errors.Is(eerr, ErrProtocolError) != errors.Is(merr, ErrProtocolError):
			t.Fatalf("ReadExpected(%q) = %q, %v; ReadMessage = %q, %v; want the same", in, eb, eerr, mb, merr)
		}

		cr := &countingReader{r: bytes.NewReader(in)}
		typ, body, err := ReadMessage(cr, int(maxLen))
		if err != nil {
			switch {
			case errors.Is(err, ErrProtocolError):
				n := binary.BigEndian.Uint32(in[1:5])
				if n >= 4 && uint64(n)-4 <= uint64(maxLen) {
					t.Fatalf("ReadMessage(%q, %d) refused a valid length %d: %v", in, maxLen, n, err)
				}
				if cr.n != 5 {
					t.Fatalf("ReadMessage(%q, %d) read %d bytes before refusing the length; want 5", in, maxLen, cr.n)
				}
			case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
				if len(in) >= 5 {
					n := binary.BigEndian.Uint32(in[1:5])
					if uint64(len(in)) >= uint64(n)+1 {
						t.Fatalf("ReadMessage(%q, %d) error = %v though the message is complete", in, maxLen, err)
					}
				}
			default:
				t.Fatalf("ReadMessage(%q, %d) error = %v; want ErrProtocolError or EOF", in, maxLen, err)
			}
			if body != nil {
				t.Fatalf("ReadMessage(%q, %d) body = %q with error %v", in, maxLen, body, err)
			}
			return
		}
		if len(body) > int(maxLen) {
			t.Fatalf("ReadMessage(%q, %d) body of %d bytes exceeds maxLen", in, maxLen, len(body))
		}
		if cr.n != 5+len(body) || typ != in[0] || !bytes.Equal(body, in[5:5+len(body)]) {
			t.Fatalf("ReadMessage(%q, %d) = %q, %q after reading %d bytes; want the first message exactly",
				in, maxLen, typ, body, cr.n)
		}
		if n := binary.BigEndian.Uint32(in[1:5]); int(n) != len(body)+4 {
			t.Fatalf("ReadMessage(%q, %d) body of %d bytes for length word %d", in, maxLen, len(body), n)
		}
	})
}

// FuzzParseSASLInitialResponse checks that an accepted body re-encodes to
// exactly the same bytes: no byte was skipped and the declared length matched.
func FuzzParseSASLInitialResponse(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		mech, data, err := ParseSASLInitialResponse(b)
		if err != nil {
			if !errors.Is(err, ErrProtocolError) {
				t.Fatalf("ParseSASLInitialResponse(%q) error = %v; want ErrProtocolError", b, err)
			}
			return
		}
		if strings.ContainsRune(mech, 0) {
			t.Fatalf("ParseSASLInitialResponse(%q) mechanism %q contains NUL", b, mech)
		}
		enc, err := (&pgproto3.SASLInitialResponse{AuthMechanism: mech, Data: data}).Encode(nil)
		if err != nil {
			t.Fatalf("SASLInitialResponse.Encode() error = %v", err)
		}
		if !bytes.Equal(enc[5:], b) {
			t.Fatalf("ParseSASLInitialResponse(%q) = %q, %q which re-encodes to %q", b, mech, data, enc[5:])
		}
	})
}
