package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/clienterr"
)

// MaxAuthMessageLen caps a SASL message from the client; PostgreSQL uses the
// same bound (PG_MAX_AUTH_TOKEN_LENGTH).
const MaxAuthMessageLen = 65535

// ReadMessage reads one typed frontend message whose body may be at most
// maxLen bytes. An impossible length is refused before any allocation.
func ReadMessage(r io.Reader, maxLen int) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n < 4 || uint64(n)-4 > uint64(maxLen) {
		return 0, nil, &LengthError{Len: n}
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, err
	}
	return hdr[0], body, nil
}

// ReadExpected reads one frontend message that must be of type want. The
// type is checked before the length is even read, as PostgreSQL does, so a
// client that sends something else (a Query, a second StartupMessage) is
// refused at once instead of being waited on.
func ReadExpected(r io.Reader, want byte, maxLen int) ([]byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:1]); err != nil {
		return nil, err
	}
	if hdr[0] != want {
		return nil, &UnexpectedMessageError{Want: want, Got: hdr[0]}
	}
	if _, err := io.ReadFull(r, hdr[1:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n < 4 || uint64(n)-4 > uint64(maxLen) {
		return nil, &LengthError{Len: n}
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	return body, nil
}

// LengthError is a message whose length word is impossible or over the
// caller's bound; its body has not been read. It is a protocol violation.
type LengthError struct{ Len uint32 }

func (e *LengthError) Error() string { return ErrProtocolError.Error() + ": invalid message length" }

func (e *LengthError) Unwrap() error { return ErrProtocolError }

// UnexpectedMessageError is a message of the wrong type at a point where the
// protocol allows only one; it is a protocol violation.
type UnexpectedMessageError struct{ Want, Got byte }

func (e *UnexpectedMessageError) Error() string {
	return fmt.Sprintf("expected message type %q, got message type %d", e.Want, e.Got)
}

func (e *UnexpectedMessageError) Unwrap() error { return ErrProtocolError }

// ParseSASLInitialResponse decodes a SASLInitialResponse body and checks
// the declared data length, which pgproto3 skips over.
func ParseSASLInitialResponse(body []byte) (mechanism string, data []byte, err error) {
	var m pgproto3.SASLInitialResponse
	if err := m.Decode(body); err != nil {
		return "", nil, protoErr("malformed SASLInitialResponse")
	}
	lenOff := len(m.AuthMechanism) + 1
	declared := int32(binary.BigEndian.Uint32(body[lenOff:]))
	if declared < 0 {
		return "", nil, protoErr("SASLInitialResponse carries no client-first-message")
	}
	if int(declared) != len(m.Data) {
		return "", nil, protoErr("malformed SASLInitialResponse: length mismatch")
	}
	return m.AuthMechanism, m.Data, nil
}

// Encode appends a backend message's wire form.
func Encode(buf []byte, msgs ...pgproto3.BackendMessage) ([]byte, error) {
	var err error
	for _, m := range msgs {
		buf, err = m.Encode(buf)
		if err != nil {
			return nil, err
		}
	}
	return buf, nil
}

// Send encodes msgs and writes them in one call.
func Send(w io.Writer, msgs ...pgproto3.BackendMessage) error {
	buf, err := Encode(nil, msgs...)
	if err != nil {
		return err
	}
	_, err = w.Write(buf)
	return err
}

// ErrorResponse builds the FATAL ErrorResponse that shows e to the client:
// its code, message and detail, never its reason.
func ErrorResponse(e *clienterr.Error) *pgproto3.ErrorResponse {
	return &pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL",
		Code: e.Code, Message: e.Message, Detail: e.Detail}
}

// ErrorMessage builds a FATAL ErrorResponse with a formatted message.
func ErrorMessage(code, format string, args ...any) *pgproto3.ErrorResponse {
	return ErrorResponse(clienterr.New(code, format, args...))
}

// SendError writes e as a FATAL ErrorResponse.
func SendError(w io.Writer, e *clienterr.Error) error {
	return Send(w, ErrorResponse(e))
}

// SQLSTATE codes the gateway sends.
const (
	CodeProtocolViolation     = "08P01"
	CodeInvalidAuthSpec       = "28000"
	CodeInvalidPassword       = "28P01"
	CodeFeatureNotSupported   = "0A000"
	CodeTooManyConnections    = "53300"
	CodeCannotConnectNow      = "57P03"
	CodeAdminShutdown         = "57P01"
	CodeInternalError         = "XX000"
	CodeConnectionFailure     = "08006"
	CodeInvalidParameterValue = "22023"
)

// ClientError converts err, once, at the edge, into what a client may be
// shown: a *clienterr.Error in err's chain as it is (a refused startup
// packet among them), an unsupported protocol version or a protocol
// violation explained. Anything else is something the client must not
// learn about: ok is false and e the generic "internal server error".
func ClientError(err error) (e *clienterr.Error, ok bool) {
	var ve *UnsupportedVersionError
	if ce, ok := clienterr.As(err); ok {
		return ce, true
	}
	switch {
	case errors.As(err, &ve):
		return &clienterr.Error{Code: CodeFeatureNotSupported, Message: ve.Error()}, true
	case errors.Is(err, ErrProtocolError):
		return &clienterr.Error{Code: CodeProtocolViolation, Message: err.Error()}, true
	}
	return &clienterr.Error{Code: CodeInternalError, Message: "internal server error"}, false
}

// ClientMessage is ClientError's code and message, for callers that only
// compare them.
func ClientMessage(err error) (code, msg string) {
	e, _ := ClientError(err)
	return e.Code, e.Message
}
