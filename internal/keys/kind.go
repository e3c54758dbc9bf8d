package keys

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	smithy "github.com/aws/smithy-go"
	vault "github.com/hashicorp/vault/api"
	"gocloud.dev/gcerrors"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Kind classifies a failure of a key operation by what the caller should do
// about it.
type Kind int

const (
	// KindOther is any failure not listed below: a bad key URI, a closed
	// Keeper, an unsupported operation, an unclassified driver error. It is
	// also what ErrorKind returns for a nil error.
	KindOther Kind = iota
	// KindDenied means the key-encryption key can no longer be used: it was
	// disabled, deleted, scheduled for deletion, or pgshield's permission on
	// it was removed. A revocation: no grace period applies.
	KindDenied
	// KindTransient means the key service could not answer now: a timeout,
	// throttling, an outage, a refused or reset connection, a cancelled
	// context. Retrying later may succeed; a grace period applies.
	KindTransient
	// KindCorrupt means the wrapped key is not valid ciphertext for this
	// key-encryption key: it was damaged, truncated, or wrapped by another
	// key.
	KindCorrupt
)

// String returns the lower-case name of k ("other", "denied", "transient",
// "corrupt").
func (k Kind) String() string {
	switch k {
	case KindOther:
		return "other"
	case KindDenied:
		return "denied"
	case KindTransient:
		return "transient"
	case KindCorrupt:
		return "corrupt"
	default:
		return "Kind(" + strconv.Itoa(int(k)) + ")"
	}
}

// ErrCorrupt is wrapped by errors from Unwrap when the wrapped key is not
// valid ciphertext for the Keeper's key (damaged, truncated, or wrapped by
// another key). ErrorKind reports it as KindCorrupt.
var ErrCorrupt = errors.New("keys: wrapped key is invalid or was wrapped by another key")

// ErrClosed is returned by the methods of a Keeper after Close. ErrorKind
// reports it as KindOther: a closed Keeper says nothing about the key.
var ErrClosed = errors.New("keys: keeper is closed")

// ErrorKind classifies err, an error returned by this package (or by a
// gocloud.dev/secrets Keeper), into a Kind. It looks first for this
// package's sentinels, then at the portable code from gcerrors.Code (or a
// wrapped gcerrors.Err* sentinel), then at provider details the gocloud drivers leave unclassified (AWS error codes,
// gRPC status, Azure and Vault HTTP status), then at network errors.
//
// Mapping of gcerrors codes:
//
//	PermissionDenied, NotFound, FailedPrecondition       → KindDenied
//	DeadlineExceeded, Canceled, Internal, ResourceExhausted → KindTransient
func ErrorKind(err error) Kind {
	if err == nil {
		return KindOther
	}
	var se *scrubbedError
	if errors.As(err, &se) {
		return se.kind
	}
	if errors.Is(err, ErrClosed) {
		return KindOther
	}
	if errors.Is(err, ErrCorrupt) {
		return KindCorrupt
	}
	switch gcerrors.Code(err) {
	case gcerrors.PermissionDenied, gcerrors.NotFound, gcerrors.FailedPrecondition:
		return KindDenied
	case gcerrors.DeadlineExceeded, gcerrors.Canceled, gcerrors.Internal, gcerrors.ResourceExhausted:
		return KindTransient
	}
	// The gcerrors sentinels, for errors built without a gocloud Keeper
	// (fakes, wrappers): fmt.Errorf("...: %w", gcerrors.ErrPermissionDenied).
	switch {
	case errors.Is(err, gcerrors.ErrPermissionDenied), errors.Is(err, gcerrors.ErrNotFound), errors.Is(err, gcerrors.ErrFailedPrecondition):
		return KindDenied
	case errors.Is(err, gcerrors.ErrDeadlineExceeded), errors.Is(err, gcerrors.ErrCanceled),
		errors.Is(err, gcerrors.ErrInternal), errors.Is(err, gcerrors.ErrResourceExhausted):
		return KindTransient
	}
	if k, ok := providerKind(err); ok {
		return k
	}
	if isNetworkError(err) {
		return KindTransient
	}
	return KindOther
}

// awsCodes classifies AWS KMS error codes that gocloud.dev/secrets/awskms
// leaves as Unknown (or maps to a code too generic to act on).
var awsCodes = map[string]Kind{
	"AccessDeniedException":       KindDenied,
	"UnrecognizedClientException": KindDenied,
	"DisabledException":           KindDenied,
	"KMSInvalidStateException":    KindDenied,
	"NotFoundException":           KindDenied,
	"IncorrectKeyException":       KindCorrupt,
	"InvalidCiphertextException":  KindCorrupt,
	"ThrottlingException":         KindTransient,
	"LimitExceededException":      KindTransient,
	"RequestLimitExceeded":        KindTransient,
	"KeyUnavailableException":     KindTransient,
	"DependencyTimeoutException":  KindTransient,
	"KMSInternalException":        KindTransient,
	"InternalFailure":             KindTransient,
	"ServiceUnavailable":          KindTransient,
	"ServiceUnavailableException": KindTransient,
}

// providerKind classifies the provider errors that the gocloud drivers
// report as Unknown. ok is false when err carries no detail it knows.
func providerKind(err error) (k Kind, ok bool) {
	// AWS (smithy): API error codes first, then the HTTP status.
	var ae smithy.APIError
	if errors.As(err, &ae) {
		if k, ok := awsCodes[ae.ErrorCode()]; ok {
			return k, true
		}
	}
	var hs interface{ HTTPStatusCode() int }
	if errors.As(err, &hs) {
		if k, ok := httpStatusKind(hs.HTTPStatusCode()); ok {
			return k, true
		}
	}
	// Google Cloud KMS (gRPC): codes that gcerr.GRPCCode leaves Unknown.
	var gs interface{ GRPCStatus() *status.Status }
	if errors.As(err, &gs) {
		switch gs.GRPCStatus().Code() {
		case codes.Unavailable, codes.Aborted, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Internal:
			return KindTransient, true
		case codes.Unauthenticated, codes.PermissionDenied, codes.NotFound, codes.FailedPrecondition:
			return KindDenied, true
		}
	}
	// Azure Key Vault: statuses the driver's table leaves out (5xx but 500).
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		if k, ok := httpStatusKind(re.StatusCode); ok {
			return k, true
		}
	}
	// HashiCorp Vault: the driver classifies nothing.
	var ve *vault.ResponseError
	if errors.As(err, &ve) {
		if ve.StatusCode == http.StatusBadRequest && vaultKeyMissing(ve) {
			return KindDenied, true
		}
		if k, ok := httpStatusKind(ve.StatusCode); ok {
			return k, true
		}
	}
	return KindOther, false
}

// httpStatusKind maps the HTTP statuses that say something about the key.
func httpStatusKind(code int) (Kind, bool) {
	switch {
	case code == http.StatusUnauthorized, code == http.StatusForbidden, code == http.StatusNotFound:
		return KindDenied, true
	case code == http.StatusRequestTimeout, code == http.StatusTooManyRequests, code >= 500 && code <= 599:
		return KindTransient, true
	}
	return KindOther, false
}

// vaultKeyMissing reports whether a Vault transit 400 says the key does not
// exist (Vault answers 400, not 404, for a deleted transit key).
func vaultKeyMissing(ve *vault.ResponseError) bool {
	for _, m := range ve.Errors {
		if strings.Contains(strings.ToLower(m), "not found") {
			return true
		}
	}
	return false
}

// isNetworkError reports whether err is a failure to reach the key service.
func isNetworkError(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, errno := range []syscall.Errno{
		syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.ECONNABORTED,
		syscall.EHOSTUNREACH, syscall.ENETUNREACH, syscall.ENETDOWN,
		syscall.ETIMEDOUT, syscall.EPIPE,
	} {
		if errors.Is(err, errno) {
			return true
		}
	}
	var de *net.DNSError
	if errors.As(err, &de) {
		return true
	}
	var oe *net.OpError
	return errors.As(err, &oe)
}

// corruptOnUnwrap reports whether err, returned by a Decrypt, means that the
// ciphertext itself was refused. local is true for keepers backed by
// localsecrets, whose only Decrypt failures are a short or unauthenticated
// message, both reported as Unknown.
func corruptOnUnwrap(err error, local bool) bool {
	code := gcerrors.Code(err)
	if local && code == gcerrors.Unknown {
		return true
	}
	if code == gcerrors.InvalidArgument {
		// awskms: InvalidCiphertextException; azurekeyvault: 400;
		// gcpkms: INVALID_ARGUMENT for a ciphertext it cannot decrypt.
		return true
	}
	var ve *vault.ResponseError
	if errors.As(err, &ve) && ve.StatusCode == http.StatusBadRequest && !vaultKeyMissing(ve) {
		return true
	}
	return false
}
