package keys

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	smithy "github.com/aws/smithy-go"
	vault "github.com/hashicorp/vault/api"
	"gocloud.dev/gcerrors"
	"gocloud.dev/secrets"
	"gocloud.dev/secrets/driver"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// fakeDriver is a driver.Keeper that "wraps" by prefixing: no secrecy, for
// exercising Keeper's plumbing only.
type fakeDriver struct{}

var _ driver.Keeper = fakeDriver{}

const fakePrefix = "fake:"

func (fakeDriver) Encrypt(_ context.Context, pt []byte) ([]byte, error) {
	return append([]byte(fakePrefix), pt...), nil
}

func (fakeDriver) Decrypt(_ context.Context, ct []byte) ([]byte, error) {
	if len(ct) < len(fakePrefix) || string(ct[:len(fakePrefix)]) != fakePrefix {
		return nil, errors.New("fake: not a fake ciphertext")
	}
	return append([]byte(nil), ct[len(fakePrefix):]...), nil
}

func (fakeDriver) Close() error                       { return nil }
func (fakeDriver) ErrorAs(error, any) bool            { return false }
func (fakeDriver) ErrorCode(error) gcerrors.ErrorCode { return gcerrors.InvalidArgument }

// failingDriver is a driver.Keeper whose every call fails with err, which
// its ErrorCode maps to code, as a real driver maps its provider's errors.
type failingDriver struct {
	err  error
	code gcerrors.ErrorCode
}

var _ driver.Keeper = failingDriver{}

func (d failingDriver) Encrypt(context.Context, []byte) ([]byte, error) { return nil, d.err }
func (d failingDriver) Decrypt(context.Context, []byte) ([]byte, error) { return nil, d.err }
func (d failingDriver) Close() error                                    { return d.err }
func (d failingDriver) ErrorAs(error, any) bool                         { return false }
func (d failingDriver) ErrorCode(error) gcerrors.ErrorCode              { return d.code }

// driverKeeper returns a Keeper over d, as Open would for a KMS scheme
// (local false) or a localsecrets one (local true).
func driverKeeper(d driver.Keeper, local bool) *Keeper {
	return &Keeper{sk: secrets.NewKeeper(d), uri: "fake://REDACTED", local: local}
}

func TestFakeDriverKeeper(t *testing.T) {
	ctx := context.Background()
	k := driverKeeper(fakeDriver{}, false)
	dk := mustDataKey(t, 32)
	w, err := k.Wrap(ctx, dk)
	if err != nil {
		t.Fatalf("Wrap error = %v", err)
	}
	got, err := k.Unwrap(ctx, w)
	if err != nil || string(got) != string(dk) {
		t.Fatalf("Unwrap(Wrap(key)) = %x, %v; want %x, nil", got, err, dk)
	}
	// The fake's Decrypt failure is InvalidArgument: a refused ciphertext.
	if _, err := k.Unwrap(ctx, []byte("junk")); ErrorKind(err) != KindCorrupt {
		t.Errorf("ErrorKind(Unwrap(junk) error %v) = %v; want %v", err, ErrorKind(err), KindCorrupt)
	}
}

func TestErrorKindThroughDriver(t *testing.T) {
	ctx := context.Background()
	connRefused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	for _, tc := range []struct {
		desc      string
		err       error
		code      gcerrors.ErrorCode
		local     bool
		wrapKind  Kind // from Wrap
		unwrapKnd Kind // from Unwrap
	}{
		{desc: "permission denied", err: errors.New("403"), code: gcerrors.PermissionDenied, wrapKind: KindDenied, unwrapKnd: KindDenied},
		{desc: "key not found", err: errors.New("404"), code: gcerrors.NotFound, wrapKind: KindDenied, unwrapKnd: KindDenied},
		{desc: "key disabled", err: errors.New("disabled"), code: gcerrors.FailedPrecondition, wrapKind: KindDenied, unwrapKnd: KindDenied},
		{desc: "timeout", err: errors.New("timeout"), code: gcerrors.DeadlineExceeded, wrapKind: KindTransient, unwrapKnd: KindTransient},
		{desc: "internal", err: errors.New("500"), code: gcerrors.Internal, wrapKind: KindTransient, unwrapKnd: KindTransient},
		{desc: "throttled", err: errors.New("429"), code: gcerrors.ResourceExhausted, wrapKind: KindTransient, unwrapKnd: KindTransient},
		{desc: "canceled", err: errors.New("canceled"), code: gcerrors.Canceled, wrapKind: KindTransient, unwrapKnd: KindTransient},
		{desc: "invalid argument", err: errors.New("400"), code: gcerrors.InvalidArgument, wrapKind: KindOther, unwrapKnd: KindCorrupt},
		{desc: "unimplemented", err: errors.New("501"), code: gcerrors.Unimplemented, wrapKind: KindOther, unwrapKnd: KindOther},
		{desc: "unknown from KMS", err: errors.New("?"), code: gcerrors.Unknown, wrapKind: KindOther, unwrapKnd: KindOther},
		{desc: "unknown from local", err: errors.New("localsecrets: Decrypt failed"), code: gcerrors.Unknown, local: true, wrapKind: KindOther, unwrapKnd: KindCorrupt},
		{desc: "connection refused", err: connRefused, code: gcerrors.Unknown, wrapKind: KindTransient, unwrapKnd: KindTransient},
		{desc: "deadline from context", err: fmt.Errorf("post: %w", context.DeadlineExceeded), code: gcerrors.Unknown, wrapKind: KindTransient, unwrapKnd: KindTransient},
		{desc: "DNS failure", err: &net.DNSError{Err: "no such host", Name: "kms.example"}, code: gcerrors.Unknown, wrapKind: KindTransient, unwrapKnd: KindTransient},
		{desc: "AWS access denied", err: &smithy.GenericAPIError{Code: "AccessDeniedException"}, code: gcerrors.Unknown, wrapKind: KindDenied, unwrapKnd: KindDenied},
		{desc: "AWS incorrect key", err: &smithy.GenericAPIError{Code: "IncorrectKeyException"}, code: gcerrors.Unknown, wrapKind: KindCorrupt, unwrapKnd: KindCorrupt},
		{desc: "AWS invalid ciphertext", err: &smithy.GenericAPIError{Code: "InvalidCiphertextException"}, code: gcerrors.InvalidArgument, wrapKind: KindCorrupt, unwrapKnd: KindCorrupt},
		{desc: "AWS throttling", err: &smithy.GenericAPIError{Code: "ThrottlingException"}, code: gcerrors.Unknown, wrapKind: KindTransient, unwrapKnd: KindTransient},
		{desc: "gRPC unavailable", err: status.Error(codes.Unavailable, "down"), code: gcerrors.Unknown, wrapKind: KindTransient, unwrapKnd: KindTransient},
		{desc: "gRPC unauthenticated", err: status.Error(codes.Unauthenticated, "no"), code: gcerrors.Unknown, wrapKind: KindDenied, unwrapKnd: KindDenied},
		{desc: "gRPC invalid argument", err: status.Error(codes.InvalidArgument, "bad"), code: gcerrors.InvalidArgument, wrapKind: KindOther, unwrapKnd: KindCorrupt},
		{desc: "Azure 503", err: &azcore.ResponseError{StatusCode: 503}, code: gcerrors.Unknown, wrapKind: KindTransient, unwrapKnd: KindTransient},
		{desc: "Azure 403", err: &azcore.ResponseError{StatusCode: 403}, code: gcerrors.PermissionDenied, wrapKind: KindDenied, unwrapKnd: KindDenied},
		{desc: "Vault 403", err: &vault.ResponseError{StatusCode: 403, Errors: []string{"permission denied"}}, code: gcerrors.Unknown, wrapKind: KindDenied, unwrapKnd: KindDenied},
		{desc: "Vault sealed", err: &vault.ResponseError{StatusCode: 503, Errors: []string{"Vault is sealed"}}, code: gcerrors.Unknown, wrapKind: KindTransient, unwrapKnd: KindTransient},
		{desc: "Vault key deleted", err: &vault.ResponseError{StatusCode: 400, Errors: []string{"encryption key not found"}}, code: gcerrors.Unknown, wrapKind: KindDenied, unwrapKnd: KindDenied},
		{desc: "Vault bad ciphertext", err: &vault.ResponseError{StatusCode: 400, Errors: []string{"invalid ciphertext: no prefix"}}, code: gcerrors.Unknown, wrapKind: KindOther, unwrapKnd: KindCorrupt},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			k := driverKeeper(failingDriver{err: tc.err, code: tc.code}, tc.local)
			_, err := k.Wrap(ctx, []byte("0123456789abcdef"))
			if err == nil {
				t.Fatalf("Wrap error = nil; want %v", tc.err)
			}
			if got := ErrorKind(err); got != tc.wrapKind {
				t.Errorf("ErrorKind(Wrap error %v) = %v; want %v", err, got, tc.wrapKind)
			}
			// gocloud passes context errors through unwrapped.
			if !errors.Is(tc.err, context.DeadlineExceeded) && gcerrors.Code(err) != tc.code {
				t.Errorf("gcerrors.Code(Wrap error) = %v; want %v (the driver's)", gcerrors.Code(err), tc.code)
			}
			_, err = k.Unwrap(ctx, []byte("wrapped"))
			if err == nil {
				t.Fatalf("Unwrap error = nil; want %v", tc.err)
			}
			if got := ErrorKind(err); got != tc.unwrapKnd {
				t.Errorf("ErrorKind(Unwrap error %v) = %v; want %v", err, got, tc.unwrapKnd)
			}
			if !errors.Is(err, tc.err) {
				t.Errorf("Unwrap error = %v; want it to wrap the driver's %v", err, tc.err)
			}
		})
	}
}

func TestErrorKindPlain(t *testing.T) {
	for _, tc := range []struct {
		desc string
		err  error
		want Kind
	}{
		{"nil", nil, KindOther},
		{"plain", errors.New("boom"), KindOther},
		{"closed", fmt.Errorf("x: %w", ErrClosed), KindOther},
		{"corrupt", fmt.Errorf("x: %w", ErrCorrupt), KindCorrupt},
		{"deadline", context.DeadlineExceeded, KindTransient},
		{"canceled", fmt.Errorf("x: %w", context.Canceled), KindTransient},
		{"gcerrors sentinel denied", fmt.Errorf("x: %w", gcerrors.ErrPermissionDenied), KindDenied},
		{"gcerrors sentinel not found", gcerrors.ErrNotFound, KindDenied},
		{"gcerrors sentinel exhausted", gcerrors.ErrResourceExhausted, KindTransient},
		{"gcerrors sentinel invalid argument", gcerrors.ErrInvalidArgument, KindOther},
		{"reset", fmt.Errorf("read: %w", syscall.ECONNRESET), KindTransient},
		{"scrubbed keeps kind", &scrubbedError{msg: "x", kind: KindDenied}, KindDenied},
	} {
		if got := ErrorKind(tc.err); got != tc.want {
			t.Errorf("%s: ErrorKind(%v) = %v; want %v", tc.desc, tc.err, got, tc.want)
		}
	}
}

func TestKindString(t *testing.T) {
	for k, want := range map[Kind]string{KindOther: "other", KindDenied: "denied", KindTransient: "transient", KindCorrupt: "corrupt", Kind(9): "Kind(9)"} {
		if got := k.String(); got != want {
			t.Errorf("Kind(%d).String() = %q; want %q", int(k), got, want)
		}
	}
}

func TestCloseErrorFromDriver(t *testing.T) {
	k := driverKeeper(failingDriver{err: errors.New("close failed"), code: gcerrors.Internal}, false)
	if err := k.Close(); err == nil || ErrorKind(err) != KindTransient {
		t.Errorf("Close error = %v; want the driver's error, KindTransient", err)
	}
}
