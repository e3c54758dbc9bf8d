package wire

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/clienterr"
)

// msg builds a typed message with a declared length word.
func msg(typ byte, length uint32, b []byte) []byte {
	return append(append([]byte{typ}, u32s(length)...), b...)
}

func TestReadMessage(t *testing.T) {
	tests := []struct {
		name     string
		in       []byte
		maxLen   int
		wantErr  error // matched with errors.Is; nil means success
		wantType byte
		wantBody []byte
		wantRead int
	}{
		{name: "empty body", in: msg('p', 4, nil), maxLen: 10, wantType: 'p', wantBody: []byte{}, wantRead: 5},
		{name: "body", in: msg('p', 7, []byte("abc")), maxLen: 10, wantType: 'p', wantBody: []byte("abc"), wantRead: 8},
		{name: "next message left unread", in: append(msg('p', 5, []byte("a")), msg('X', 4, nil)...), maxLen: 10,
			wantType: 'p', wantBody: []byte("a"), wantRead: 6},
		{name: "body exactly maxLen", in: msg('p', 14, bytes.Repeat([]byte{'z'}, 10)), maxLen: 10,
			wantType: 'p', wantBody: bytes.Repeat([]byte{'z'}, 10), wantRead: 15},
		{name: "body one over maxLen", in: msg('p', 15, bytes.Repeat([]byte{'z'}, 11)), maxLen: 10,
			wantErr: ErrProtocolError, wantRead: 5},
		{name: "maxLen zero allows only empty", in: msg('p', 5, []byte("a")), maxLen: 0,
			wantErr: ErrProtocolError, wantRead: 5},
		{name: "length 0", in: msg('p', 0, nil), maxLen: 10, wantErr: ErrProtocolError, wantRead: 5},
		{name: "length 3", in: msg('p', 3, []byte("abc")), maxLen: 10, wantErr: ErrProtocolError, wantRead: 5},
		{name: "length 0x80000000", in: msg('p', 0x80000000, nil), maxLen: MaxAuthMessageLen,
			wantErr: ErrProtocolError, wantRead: 5},
		{name: "length 0xffffffff", in: msg('p', 0xffffffff, nil), maxLen: MaxAuthMessageLen,
			wantErr: ErrProtocolError, wantRead: 5},
		{name: "length 0xffffffff with a huge maxLen", in: msg('p', 0xffffffff, nil), maxLen: 1 << 20,
			wantErr: ErrProtocolError, wantRead: 5},
		{name: "empty input", in: nil, maxLen: 10, wantErr: io.EOF},
		{name: "truncated header", in: []byte{'p', 0, 0}, maxLen: 10, wantErr: io.ErrUnexpectedEOF, wantRead: 3},
		{name: "truncated body", in: msg('p', 8, []byte("ab")), maxLen: 10, wantErr: io.ErrUnexpectedEOF, wantRead: 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cr := &countingReader{r: bytes.NewReader(tt.in)}
			typ, b, err := ReadMessage(cr, tt.maxLen)
			call := fmt.Sprintf("ReadMessage(%s, %d)", quote(tt.in), tt.maxLen)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("%s error = %v; want %v", call, err, tt.wantErr)
				}
				if b != nil {
					t.Errorf("%s body = %q with an error; want nil", call, b)
				}
			} else {
				if err != nil {
					t.Fatalf("%s error = %v; want nil", call, err)
				}
				if typ != tt.wantType || !bytes.Equal(b, tt.wantBody) {
					t.Errorf("%s = %q, %q; want %q, %q", call, typ, b, tt.wantType, tt.wantBody)
				}
			}
			if cr.n != tt.wantRead {
				t.Errorf("%s consumed %d bytes; want %d", call, cr.n, tt.wantRead)
			}
		})
	}
}

func TestReadMessageRefusesBeforeAllocating(t *testing.T) {
	for _, n := range []uint32{MaxAuthMessageLen + 5, 1 << 24, 0xffffffff} {
		in := msg('p', n, nil)
		got := allocatedPerCall(50, func() {
			if _, _, err := ReadMessage(bytes.NewReader(in), MaxAuthMessageLen); !errors.Is(err, ErrProtocolError) {
				t.Fatalf("ReadMessage(length %#x) error = %v; want ErrProtocolError", n, err)
			}
		})
		if got > 4096 {
			t.Errorf("ReadMessage(length %#x) allocated %d bytes per call; want < 4096", n, got)
		}
	}
}

// saslBody builds a SASLInitialResponse body with an explicit declared length.
func saslBody(mech string, declared int32, data string) []byte {
	b := append([]byte(mech), 0)
	b = append(b, u32s(uint32(declared))...)
	return append(b, data...)
}

func TestParseSASLInitialResponse(t *testing.T) {
	const first = "n,,n=,r=rOprNGfwEbeRWgbNEkqO"
	tests := []struct {
		name     string
		body     []byte
		wantErr  bool
		wantMech string
		wantData string
	}{
		{name: "SCRAM-SHA-256", body: saslBody("SCRAM-SHA-256", int32(len(first)), first),
			wantMech: "SCRAM-SHA-256", wantData: first},
		{name: "SCRAM-SHA-256-PLUS", body: saslBody("SCRAM-SHA-256-PLUS", 3, "p=x"),
			wantMech: "SCRAM-SHA-256-PLUS", wantData: "p=x"},
		{name: "empty data with length 0", body: saslBody("SCRAM-SHA-256", 0, ""), wantMech: "SCRAM-SHA-256"},
		{name: "empty mechanism is the parser's business", body: saslBody("", 1, "x"), wantData: "x"},
		{name: "declared longer than data", body: saslBody("SCRAM-SHA-256", int32(len(first)+1), first), wantErr: true},
		{name: "declared shorter than data", body: saslBody("SCRAM-SHA-256", int32(len(first)-1), first), wantErr: true},
		{name: "declared zero with data", body: saslBody("SCRAM-SHA-256", 0, first), wantErr: true},
		{name: "declared -1 (no initial response)", body: saslBody("SCRAM-SHA-256", -1, ""), wantErr: true},
		{name: "declared -1 with data", body: saslBody("SCRAM-SHA-256", -1, first), wantErr: true},
		{name: "declared -2", body: saslBody("SCRAM-SHA-256", -2, ""), wantErr: true},
		{name: "declared MinInt32", body: saslBody("SCRAM-SHA-256", -1<<31, ""), wantErr: true},
		{name: "missing NUL after mechanism", body: []byte("SCRAM-SHA-256"), wantErr: true},
		{name: "NUL but no length", body: []byte("SCRAM-SHA-256\x00"), wantErr: true},
		{name: "NUL and 3 length bytes", body: []byte("SCRAM-SHA-256\x00\x00\x00\x00"), wantErr: true},
		{name: "empty body", body: nil, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mech, data, err := ParseSASLInitialResponse(tt.body)
			call := "ParseSASLInitialResponse(" + quote(tt.body) + ")"
			if tt.wantErr {
				if !errors.Is(err, ErrProtocolError) {
					t.Fatalf("%s error = %v; want ErrProtocolError", call, err)
				}
				if mech != "" || data != nil {
					t.Errorf("%s = %q, %q with an error; want empty", call, mech, data)
				}
				return
			}
			if err != nil {
				t.Fatalf("%s error = %v; want nil", call, err)
			}
			if mech != tt.wantMech || string(data) != tt.wantData {
				t.Errorf("%s = %q, %q; want %q, %q", call, mech, data, tt.wantMech, tt.wantData)
			}
		})
	}
}

func TestClientError(t *testing.T) {
	se := &clienterr.Error{Code: CodeInvalidAuthSpec, Message: "no PostgreSQL user name specified in startup packet"}
	ve := &UnsupportedVersionError{Major: 2, Minor: 0}
	pe := protoErr("invalid length of startup packet")
	tests := []struct {
		name     string
		err      error
		wantCode string
		wantMsg  string
		wantOK   bool
	}{
		{name: "startup error", err: se, wantCode: "28000", wantMsg: se.Message, wantOK: true},
		{name: "wrapped startup error", err: fmt.Errorf("admission: %w", se), wantCode: "28000", wantMsg: se.Message, wantOK: true},
		{name: "client error with another code", err: &clienterr.Error{Code: "0A000", Message: "nope", Reason: "why"},
			wantCode: "0A000", wantMsg: "nope", wantOK: true},
		{name: "unsupported version", err: ve, wantCode: "0A000",
			wantMsg: "unsupported frontend protocol 2.0: server supports 3.0 to 3.0", wantOK: true},
		{name: "wrapped unsupported version", err: fmt.Errorf("x: %w", ve), wantCode: "0A000",
			wantMsg: "unsupported frontend protocol 2.0: server supports 3.0 to 3.0", wantOK: true},
		{name: "protocol error", err: pe, wantCode: "08P01",
			wantMsg: "protocol violation: invalid length of startup packet", wantOK: true},
		{name: "wrapped protocol error", err: fmt.Errorf("TLS: %w", pe), wantCode: "08P01",
			wantMsg: "TLS: protocol violation: invalid length of startup packet", wantOK: true},
		{name: "EOF", err: io.EOF, wantCode: "XX000", wantMsg: "internal server error"},
		{name: "internal detail hidden", err: errors.New("open /var/lib/pgshield/secret: permission denied"),
			wantCode: "XX000", wantMsg: "internal server error"},
		{name: "nil", err: nil, wantCode: "XX000", wantMsg: "internal server error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, ok := ClientError(tt.err)
			if e.Code != tt.wantCode || e.Message != tt.wantMsg || ok != tt.wantOK {
				t.Errorf("ClientError(%v) = %q, %q, %v; want %q, %q, %v", tt.err, e.Code, e.Message, ok, tt.wantCode, tt.wantMsg, tt.wantOK)
			}
			if code, m := ClientMessage(tt.err); code != tt.wantCode || m != tt.wantMsg {
				t.Errorf("ClientMessage(%v) = %q, %q; want %q, %q", tt.err, code, m, tt.wantCode, tt.wantMsg)
			}
		})
	}
}

func TestSendError(t *testing.T) {
	var buf bytes.Buffer
	e := &clienterr.Error{Code: CodeInvalidPassword, Message: `password authentication failed for user "bob"`,
		Reason: "wrong proof"}
	if err := SendError(&buf, e); err != nil {
		t.Fatalf("SendError() error = %v", err)
	}
	if bytes.Contains(buf.Bytes(), []byte(e.Reason)) {
		t.Errorf("SendError wrote the reason %q", e.Reason)
	}
	fe := pgproto3.NewFrontend(&buf, io.Discard)
	m, err := fe.Receive()
	if err != nil {
		t.Fatalf("Receive() error = %v", err)
	}
	er, ok := m.(*pgproto3.ErrorResponse)
	if !ok {
		t.Fatalf("Receive() = %T; want *pgproto3.ErrorResponse", m)
	}
	if er.Severity != "FATAL" || er.SeverityUnlocalized != "FATAL" || er.Code != "28P01" ||
		er.Message != `password authentication failed for user "bob"` {
		t.Errorf("ErrorResponse = %+v; want FATAL 28P01 with the message", er)
	}
	if er.Detail != "" {
		t.Errorf("ErrorResponse.Detail = %q; want none", er.Detail)
	}
	if buf.Len() != 0 {
		t.Errorf("SendError wrote %d extra bytes", buf.Len())
	}
}

// TestErrorResponseBytes pins the wire form: a detail only when there is
// one, the reason never.
func TestErrorResponseBytes(t *testing.T) {
	tests := []struct {
		name string
		e    *clienterr.Error
		want string
	}{
		{name: "no detail", e: &clienterr.Error{Code: "28000", Message: "m", Reason: "r"},
			want: "E\x00\x00\x00\x1dSFATAL\x00VFATAL\x00C28000\x00Mm\x00\x00"},
		{name: "detail", e: &clienterr.Error{Code: "28000", Message: "m", Detail: "d", Reason: "r"},
			want: "E\x00\x00\x00\x20SFATAL\x00VFATAL\x00C28000\x00Mm\x00Dd\x00\x00"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Encode(nil, ErrorResponse(tt.e))
			if err != nil || string(got) != tt.want {
				t.Errorf("Encode(ErrorResponse(%+v)) = %q, %v; want %q", tt.e, got, err, tt.want)
			}
		})
	}
}

func TestSendWritesOnce(t *testing.T) {
	w := &countingWriter{}
	err := Send(w, &pgproto3.AuthenticationSASLFinal{Data: []byte("v=abc")}, &pgproto3.AuthenticationOk{},
		&pgproto3.ReadyForQuery{TxStatus: 'I'})
	if err != nil {
		t.Fatalf("Send() error = %v", err)
	}
	if w.writes != 1 {
		t.Errorf("Send() made %d writes; want 1", w.writes)
	}
	fe := pgproto3.NewFrontend(bytes.NewReader(w.buf.Bytes()), io.Discard)
	var got []string
	for {
		m, err := fe.Receive()
		if err != nil {
			break
		}
		got = append(got, fmt.Sprintf("%T", m))
	}
	if want := "*pgproto3.AuthenticationSASLFinal *pgproto3.AuthenticationOk *pgproto3.ReadyForQuery"; strings.Join(got, " ") != want {
		t.Errorf("Send() wrote %v; want %s", got, want)
	}
}

type countingWriter struct {
	buf    bytes.Buffer
	writes int
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.writes++
	return w.buf.Write(p)
}

func TestReadExpected(t *testing.T) {
	tests := []struct {
		name     string
		in       []byte
		want     byte
		maxLen   int
		wantErr  error // matched with errors.Is; nil means success
		wantGot  byte  // UnexpectedMessageError.Got, when set
		wantBody []byte
		wantRead int
	}{
		{name: "SASLResponse", in: msg('p', 7, []byte("c=x")), want: 'p', maxLen: 100,
			wantBody: []byte("c=x"), wantRead: 8},
		{name: "empty body", in: msg('p', 4, nil), want: 'p', maxLen: 100, wantBody: []byte{}, wantRead: 5},
		{name: "query refused after one byte", in: msg('Q', 13, []byte("select 1;\x00")), want: 'p', maxLen: 100,
			wantErr: ErrProtocolError, wantGot: 'Q', wantRead: 1},
		{name: "second StartupMessage refused after one byte", in: packet(body(ProtocolV3, true, "user", "a")),
			want: 'p', maxLen: 100, wantErr: ErrProtocolError, wantGot: 0, wantRead: 1},
		{name: "wrong type with an impossible length", in: msg('X', 0xffffffff, nil), want: 'p', maxLen: 100,
			wantErr: ErrProtocolError, wantGot: 'X', wantRead: 1},
		{name: "length 0xffffffff", in: msg('p', 0xffffffff, nil), want: 'p', maxLen: MaxAuthMessageLen,
			wantErr: ErrProtocolError, wantRead: 5},
		{name: "length 3", in: msg('p', 3, nil), want: 'p', maxLen: 100, wantErr: ErrProtocolError, wantRead: 5},
		{name: "over maxLen", in: msg('p', 105, make([]byte, 101)), want: 'p', maxLen: 100,
			wantErr: ErrProtocolError, wantRead: 5},
		{name: "empty input", in: nil, want: 'p', maxLen: 100, wantErr: io.EOF},
		{name: "type only", in: []byte{'p'}, want: 'p', maxLen: 100, wantErr: io.EOF, wantRead: 1},
		{name: "truncated length", in: []byte{'p', 0, 0}, want: 'p', maxLen: 100, wantErr: io.ErrUnexpectedEOF,
			wantRead: 3},
		{name: "truncated body", in: msg('p', 10, []byte("ab")), want: 'p', maxLen: 100,
			wantErr: io.ErrUnexpectedEOF, wantRead: 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cr := &countingReader{r: bytes.NewReader(tt.in)}
			b, err := ReadExpected(cr, tt.want, tt.maxLen)
			call := fmt.Sprintf("ReadExpected(%s, %q, %d)", quote(tt.in), tt.want, tt.maxLen)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("%s error = %v; want %v", call, err, tt.wantErr)
				}
				var ue *UnexpectedMessageError
				if errors.As(err, &ue) != (tt.wantRead == 1 && tt.wantErr == ErrProtocolError) {
					t.Errorf("%s error = %v (%T); UnexpectedMessageError only for a wrong type", call, err, err)
				}
				if ue != nil && (ue.Got != tt.wantGot || ue.Want != tt.want) {
					t.Errorf("%s = %+v; want Got %q Want %q", call, ue, tt.wantGot, tt.want)
				}
				if ue != nil {
					if code, _ := ClientMessage(err); code != CodeProtocolViolation {
						t.Errorf("ClientMessage(%v) code = %s; want 08P01", err, code)
					}
				}
			} else {
				if err != nil {
					t.Fatalf("%s error = %v; want nil", call, err)
				}
				if !bytes.Equal(b, tt.wantBody) {
					t.Errorf("%s = %q; want %q", call, b, tt.wantBody)
				}
			}
			if cr.n != tt.wantRead {
				t.Errorf("%s consumed %d bytes; want %d", call, cr.n, tt.wantRead)
			}
		})
	}
}
