package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/pgshield/pgshield/internal/clienterr"
)

// body builds a first-packet body (without the length word): the 4-byte code,
// then NUL-terminated key/value strings and, when terminate is set, the final
// NUL.
func body(code uint32, terminate bool, kv ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, code)
	for _, s := range kv {
		b = append(b, s...)
		b = append(b, 0)
	}
	if terminate {
		b = append(b, 0)
	}
	return b
}

// packet prefixes body with its length word, as it travels on the wire.
func packet(b []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(b)+4)), b...)
}

func u32s(vs ...uint32) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.BigEndian.AppendUint32(b, v)
	}
	return b
}

// errKind names the class of error a test expects.
type errKind int

const (
	noErr errKind = iota
	protoViolation
	startup28000
	badVersion
)

func checkErrKind(t *testing.T, call string, err error, want errKind) {
	t.Helper()
	var se *clienterr.Error
	var ve *UnsupportedVersionError
	switch want {
	case noErr:
		if err != nil {
			t.Fatalf("%s error = %v; want nil", call, err)
		}
	case protoViolation:
		if !errors.Is(err, ErrProtocolError) {
			t.Fatalf("%s error = %v; want ErrProtocolError", call, err)
		}
	case startup28000:
		if !errors.As(err, &se) || se.Code != CodeInvalidAuthSpec {
			t.Fatalf("%s error = %v (%T); want *clienterr.Error with code 28000", call, err, err)
		}
	case badVersion:
		if !errors.As(err, &ve) {
			t.Fatalf("%s error = %v (%T); want *UnsupportedVersionError", call, err, err)
		}
	}
}

func TestParseStartup(t *testing.T) {
	v3 := uint32(ProtocolV3)
	tests := []struct {
		name    string
		body    []byte
		wantErr errKind
		// checked only when wantErr == noErr
		wantKind         Kind
		wantMinor        uint16
		wantParams       []Param
		wantUnrecognized []string
		wantPID, wantKey uint32
		wantDB           string
		// checked for badVersion
		wantMajor uint16
	}{
		{name: "SSLRequest", body: u32s(sslRequestCode), wantKind: KindSSLRequest},
		{name: "SSLRequest with payload", body: u32s(sslRequestCode, 0), wantErr: protoViolation},
		{name: "GSSENCRequest", body: u32s(gssEncCode), wantKind: KindGSSEncRequest},
		{name: "GSSENCRequest with payload", body: append(u32s(gssEncCode), 0), wantErr: protoViolation},
		{name: "CancelRequest", body: u32s(cancelCode, 4242, 0xdeadbeef), wantKind: KindCancel,
			wantPID: 4242, wantKey: 0xdeadbeef},
		{name: "CancelRequest too short", body: u32s(cancelCode, 4242), wantErr: protoViolation},
		{name: "CancelRequest with long key", body: u32s(cancelCode, 1, 2, 3), wantErr: protoViolation},
		{name: "v3.0 user and database",
			body:     body(v3, true, "user", "alice", "database", "shop", "application_name", "psql"),
			wantKind: KindStartup,
			wantParams: []Param{{"user", "alice"}, {"database", "shop"},
				{"application_name", "psql"}},
			wantDB: "shop"},
		{name: "database defaults to user", body: body(v3, true, "user", "bob"),
			wantKind: KindStartup, wantParams: []Param{{"user", "bob"}}, wantDB: "bob"},
		{name: "empty database defaults to user", body: body(v3, true, "user", "bob", "database", ""),
			wantKind: KindStartup, wantParams: []Param{{"user", "bob"}, {"database", ""}}, wantDB: "bob"},
		{name: "empty value kept", body: body(v3, true, "options", "", "user", "u"),
			wantKind: KindStartup, wantParams: []Param{{"options", ""}, {"user", "u"}}, wantDB: "u"},
		{name: "v3.2 minor version", body: body(v3|2, true, "user", "carol"),
			wantKind: KindStartup, wantMinor: 2, wantParams: []Param{{"user", "carol"}}, wantDB: "carol"},
		{name: "v3.65535 minor version", body: body(v3|0xffff, true, "user", "carol"),
			wantKind: KindStartup, wantMinor: 0xffff, wantParams: []Param{{"user", "carol"}}, wantDB: "carol"},
		{name: "_pq_ options collected",
			body:     body(v3|1, true, "_pq_.compression", "on", "user", "dave", "_pq_.test_protocol", "x"),
			wantKind: KindStartup, wantMinor: 1, wantParams: []Param{{"user", "dave"}},
			wantUnrecognized: []string{"_pq_.compression", "_pq_.test_protocol"}, wantDB: "dave"},
		{name: "_pq without dot is an ordinary parameter", body: body(v3, true, "_pq_x", "1", "user", "e"),
			wantKind: KindStartup, wantParams: []Param{{"_pq_x", "1"}, {"user", "e"}}, wantDB: "e"},
		{name: "duplicate user", body: body(v3, true, "user", "alice", "user", "postgres"), wantErr: protoViolation},
		{name: "duplicate database", body: body(v3, true, "user", "a", "database", "x", "database", "y"),
			wantErr: protoViolation},
		{name: "duplicate _pq_ option", body: body(v3, true, "user", "a", "_pq_.x", "1", "_pq_.x", "2"),
			wantErr: protoViolation},
		{name: "missing user", body: body(v3, true, "database", "shop"), wantErr: startup28000},
		{name: "no parameters at all", body: body(v3, true), wantErr: startup28000},
		{name: "empty user", body: body(v3, true, "user", ""), wantErr: startup28000},
		{name: "user only as _pq_ option", body: body(v3, true, "_pq_.user", "alice"), wantErr: startup28000},
		{name: "replication=true", body: body(v3, true, "user", "a", "replication", "true"), wantErr: startup28000},
		{name: "replication=database", body: body(v3, true, "user", "a", "replication", "database"),
			wantErr: startup28000},
		{name: "replication=on", body: body(v3, true, "user", "a", "replication", "on"), wantErr: startup28000},
		{name: "replication=1", body: body(v3, true, "user", "a", "replication", "1"), wantErr: startup28000},
		{name: "replication empty", body: body(v3, true, "user", "a", "replication", ""), wantErr: startup28000},
		{name: "replication=false", body: body(v3, true, "user", "a", "replication", "false"),
			wantKind: KindStartup, wantParams: []Param{{"user", "a"}, {"replication", "false"}}, wantDB: "a"},
		{name: "replication=OFF", body: body(v3, true, "user", "a", "replication", "OFF"),
			wantKind: KindStartup, wantParams: []Param{{"user", "a"}, {"replication", "OFF"}}, wantDB: "a"},
		{name: "replication=no", body: body(v3, true, "replication", "no", "user", "a"),
			wantKind: KindStartup, wantParams: []Param{{"replication", "no"}, {"user", "a"}}, wantDB: "a"},
		{name: "replication=0", body: body(v3, true, "user", "a", "replication", "0"),
			wantKind: KindStartup, wantParams: []Param{{"user", "a"}, {"replication", "0"}}, wantDB: "a"},
		{name: "empty body", body: nil, wantErr: protoViolation},
		{name: "body shorter than code", body: []byte{0, 3, 0}, wantErr: protoViolation},
		{name: "body over limit", body: append(body(v3, false, "user", "a", "x"),
			make([]byte, MaxStartupPacketLen)...), wantErr: protoViolation},
		{name: "v3 with nothing after the version", body: u32s(v3), wantErr: protoViolation},
		{name: "missing terminator", body: body(v3, false, "user", "alice"), wantErr: protoViolation},
		{name: "key without value", body: body(v3, false, "user", "alice", "database"), wantErr: protoViolation},
		{name: "unterminated value", body: append(body(v3, false, "user"), "alice"...), wantErr: protoViolation},
		{name: "data after terminator", body: append(body(v3, true, "user", "alice"), 'x'),
			wantErr: protoViolation},
		{name: "NUL after terminator", body: append(body(v3, true, "user", "alice"), 0), wantErr: protoViolation},
		{name: "major version 2", body: body(2<<16, true, "user", "alice"), wantErr: badVersion, wantMajor: 2},
		{name: "major version 4", body: body(4<<16, true, "user", "alice"), wantErr: badVersion, wantMajor: 4},
		{name: "major version 0", body: u32s(0), wantErr: badVersion, wantMajor: 0},
		{name: "unknown negotiation code", body: u32s(1234<<16 | 5699), wantErr: badVersion, wantMajor: 1234},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := ParseStartup(tt.body)
			call := "ParseStartup(" + quote(tt.body) + ")"
			checkErrKind(t, call, err, tt.wantErr)
			if tt.wantErr != noErr {
				if s != nil {
					t.Errorf("%s = %+v with an error; want nil", call, s)
				}
				var ve *UnsupportedVersionError
				if errors.As(err, &ve) && ve.Major != tt.wantMajor {
					t.Errorf("%s major = %d; want %d", call, ve.Major, tt.wantMajor)
				}
				return
			}
			if s.Kind != tt.wantKind {
				t.Errorf("%s kind = %v; want %v", call, s.Kind, tt.wantKind)
			}
			if s.Minor != tt.wantMinor {
				t.Errorf("%s minor = %d; want %d", call, s.Minor, tt.wantMinor)
			}
			if !slices.Equal(s.Params, tt.wantParams) {
				t.Errorf("%s params = %q; want %q", call, s.Params, tt.wantParams)
			}
			if !slices.Equal(s.Unrecognized, tt.wantUnrecognized) {
				t.Errorf("%s unrecognized = %q; want %q", call, s.Unrecognized, tt.wantUnrecognized)
			}
			if s.CancelPID != tt.wantPID || s.CancelKey != tt.wantKey {
				t.Errorf("%s cancel = (%d, %#x); want (%d, %#x)", call, s.CancelPID, s.CancelKey, tt.wantPID, tt.wantKey)
			}
			if s.Kind == KindStartup {
				if got := s.Database(); got != tt.wantDB {
					t.Errorf("%s Database() = %q; want %q", call, got, tt.wantDB)
				}
				if want, _ := s.Get("user"); s.User() != want || want == "" {
					t.Errorf("%s User() = %q; want %q (non-empty)", call, s.User(), want)
				}
			}
		})
	}
}

func quote(b []byte) string {
	if len(b) > 64 {
		return strings.TrimSuffix(strconv.Quote(string(b[:64])), `"`) + `..."`
	}
	return strconv.Quote(string(b))
}

func TestStartupError(t *testing.T) {
	_, err := ParseStartup(body(ProtocolV3, true, "database", "x"))
	var se *clienterr.Error
	if !errors.As(err, &se) {
		t.Fatalf("ParseStartup(no user) error = %v; want *clienterr.Error", err)
	}
	if se.Error() != se.Message || !strings.Contains(se.Message, "no PostgreSQL user name") {
		t.Errorf("Error() = %q, Message = %q; want the PostgreSQL wording", se.Error(), se.Message)
	}
	if errors.Is(err, ErrProtocolError) {
		t.Errorf("ParseStartup(no user) error = %v is an ErrProtocolError; want a distinct startup error", err)
	}
}

func TestUnsupportedVersionError(t *testing.T) {
	_, err := ParseStartup(body(2<<16|1, true, "user", "a"))
	var ve *UnsupportedVersionError
	if !errors.As(err, &ve) || ve.Major != 2 || ve.Minor != 1 {
		t.Fatalf("ParseStartup(v2.1) error = %#v; want UnsupportedVersionError{2, 1}", err)
	}
	if want := "unsupported frontend protocol 2.1: server supports 3.0 to 3.0"; err.Error() != want {
		t.Errorf("UnsupportedVersionError.Error() = %q; want %q", err.Error(), want)
	}
}

// countingReader records how many bytes were taken from it.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func TestReadStartup(t *testing.T) {
	startup := packet(body(ProtocolV3, true, "user", "alice", "database", "db"))
	tests := []struct {
		name     string
		in       []byte
		wantErr  error // matched with errors.Is; nil means success
		wantKind Kind
		wantUser string
		wantRead int // bytes consumed from the reader
	}{
		{name: "startup", in: startup, wantKind: KindStartup, wantUser: "alice", wantRead: len(startup)},
		{name: "startup leaves the next packet unread", in: append(slices.Clone(startup), 'Q', 0, 0, 0, 4),
			wantKind: KindStartup, wantUser: "alice", wantRead: len(startup)},
		{name: "SSLRequest is exactly 8 bytes", in: append(packet(u32s(sslRequestCode)), 0x16, 3, 1),
			wantKind: KindSSLRequest, wantRead: 8},
		{name: "CancelRequest", in: packet(u32s(cancelCode, 1, 2)), wantKind: KindCancel, wantRead: 16},
		{name: "length 0", in: u32s(0, sslRequestCode), wantErr: ErrProtocolError, wantRead: 4},
		{name: "length 4", in: u32s(4, sslRequestCode), wantErr: ErrProtocolError, wantRead: 4},
		{name: "length 7", in: u32s(7, sslRequestCode), wantErr: ErrProtocolError, wantRead: 4},
		{name: "length 10001", in: append(u32s(10001), make([]byte, 10001)...), wantErr: ErrProtocolError, wantRead: 4},
		{name: "length 0x7fffffff", in: u32s(0x7fffffff, ProtocolV3), wantErr: ErrProtocolError, wantRead: 4},
		{name: "length 0xffffffff", in: u32s(0xffffffff, ProtocolV3), wantErr: ErrProtocolError, wantRead: 4},
		{name: "empty input", in: nil, wantErr: io.EOF, wantRead: 0},
		{name: "short length word", in: []byte{0, 0}, wantErr: io.ErrUnexpectedEOF, wantRead: 2},
		{name: "truncated body", in: startup[:len(startup)-1], wantErr: io.ErrUnexpectedEOF, wantRead: len(startup) - 1},
		{name: "length 10000 accepted up to the parser", in: packet(append(body(ProtocolV3, false, "user", "a", "pad"),
			append(bytes.Repeat([]byte{'x'}, 10000-4-4-len("user\x00a\x00pad\x00")-2), 0, 0)...)),
			wantKind: KindStartup, wantUser: "a", wantRead: 10000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cr := &countingReader{r: bytes.NewReader(tt.in)}
			s, err := ReadStartup(cr)
			call := "ReadStartup(" + quote(tt.in) + ")"
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("%s error = %v; want %v", call, err, tt.wantErr)
				}
			} else {
				if err != nil {
					t.Fatalf("%s error = %v; want nil", call, err)
				}
				if s.Kind != tt.wantKind || s.User() != tt.wantUser {
					t.Errorf("%s = kind %v user %q; want kind %v user %q", call, s.Kind, s.User(), tt.wantKind, tt.wantUser)
				}
			}
			if cr.n != tt.wantRead {
				t.Errorf("%s consumed %d bytes; want %d", call, cr.n, tt.wantRead)
			}
		})
	}
}

// allocatedPerCall returns the average number of heap bytes f allocates.
func allocatedPerCall(runs int, f func()) uint64 {
	f() // warm up
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range runs {
		f()
	}
	runtime.ReadMemStats(&after)
	return (after.TotalAlloc - before.TotalAlloc) / uint64(runs)
}

func TestReadStartupRefusesBeforeAllocating(t *testing.T) {
	for _, n := range []uint32{10001, 1 << 20, 0x7fffffff, 0xffffffff} {
		t.Run("length "+strconv.FormatUint(uint64(n), 10), func(t *testing.T) {
			hdr := u32s(n)
			got := allocatedPerCall(50, func() {
				if _, err := ReadStartup(bytes.NewReader(hdr)); !errors.Is(err, ErrProtocolError) {
					t.Fatalf("ReadStartup(length %d) error = %v; want ErrProtocolError", n, err)
				}
			})
			if got > 4096 {
				t.Errorf("ReadStartup(length %d) allocated %d bytes per call; want < 4096 (no buffer of the claimed size)", n, got)
			}
		})
	}
}
