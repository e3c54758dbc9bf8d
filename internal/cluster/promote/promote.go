// Package promote decides whether this node may be promoted to primary,
// for Patroni's postgresql.pre_promote hook (Patroni 3.0: the hook runs
// after the leader key is taken and before pg_ctl promote; any exit status
// but 0 refuses the promotion and releases the key, see
// patroni/postgresql/__init__.py, _pre_promote).
//
// A node may be promoted only when its volume is unlocked (mounted, data
// readable) and its key-encryption key still unwraps its data key now: a
// node whose customer-managed key was revoked must never become the
// primary (issue #18, "Keys"). Everything fails closed: an error, a
// timeout, a panic or an answer that is not exactly "ok" refuses.
//
// Patroni runs the hook as postgres, which can read neither the wrapped
// key nor the KMS credentials, so the hook is a thin client: `pgshield
// cluster pre-promote --socket PATH` asks the daemon over a Unix socket
// (Ask), and the daemon, as root, answers only the uid it was told
// (Server) after running Check. The hook's argv holds the binary, the
// subcommand and the socket path (Command): no secret.
package promote

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Volume is the encrypted volume as the check sees it (volume.AtRest).
type Volume interface {
	// Guard returns nil when the volume is mounted and its data readable.
	Guard() error
	// Check proves the key-encryption key unwraps the data key now.
	Check(ctx context.Context) error
}

// Keys is the key controller's view (ctl/keys.Controller): nil while the
// key is Available, an error while it is Locked or Inaccessible.
type Keys interface {
	SessionsAllowed() error
}

// Reasons a promotion is refused. They are all the client is told; the
// errors behind them stay in the daemon's log.
var (
	ErrKeysUnavailable = errors.New("the server's key is locked or inaccessible")
	ErrVolumeNotReady  = errors.New("the encrypted volume is not unlocked")
	ErrKeyDoesNotOpen  = errors.New("the key-encryption key does not unwrap the data key")
	ErrCheckFailed     = errors.New("the promotion check failed")
)

// DefaultTimeout bounds Check's unwrap (a KMS round trip), as the key
// revalidation does.
const DefaultTimeout = 20 * time.Second

// Check returns nil only when v is unlocked, k says the key is available
// and the data key unwraps within timeout. Its errors wrap one of the
// Err* reasons.
func Check(ctx context.Context, v Volume, k Keys, timeout time.Duration) (err error) {
	defer func() {
		// Fail closed on a bug too.
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: panic: %v", ErrCheckFailed, p)
		}
	}()
	if v == nil || k == nil {
		return fmt.Errorf("%w: no volume or key controller", ErrCheckFailed)
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	if err := k.SessionsAllowed(); err != nil {
		return fmt.Errorf("%w: %w", ErrKeysUnavailable, err)
	}
	if err := v.Guard(); err != nil {
		return fmt.Errorf("%w: %w", ErrVolumeNotReady, err)
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := v.Check(cctx); err != nil {
		return fmt.Errorf("%w: %w", ErrKeyDoesNotOpen, err)
	}
	// The unwrap may have raced a lock: look again.
	if err := v.Guard(); err != nil {
		return fmt.Errorf("%w: %w", ErrVolumeNotReady, err)
	}
	if err := k.SessionsAllowed(); err != nil {
		return fmt.Errorf("%w: %w", ErrKeysUnavailable, err)
	}
	return nil
}

// reason is the one line the client gets for err.
func reason(err error) string {
	for _, r := range []error{ErrKeysUnavailable, ErrVolumeNotReady, ErrKeyDoesNotOpen} {
		if errors.Is(err, r) {
			return r.Error()
		}
	}
	return ErrCheckFailed.Error()
}

// SubCommand is the pgshield command line the hook runs, after the
// binary.
var SubCommand = []string{"cluster", "pre-promote", "--socket"}

// Command is the pre_promote command line for Patroni's YAML: bin, the
// subcommand and socket. Patroni splits it with shlex, so neither path
// may hold white space, quotes or backslashes (refused rather than
// quoted). It holds paths only: nothing secret can reach argv this way.
func Command(bin, socket string) (string, error) {
	for _, p := range []string{bin, socket} {
		if !strings.HasPrefix(p, "/") {
			return "", fmt.Errorf("pre_promote: %q is not an absolute path", p)
		}
		if strings.ContainsAny(p, " \t\n\r\v\f'\"\\#") {
			return "", fmt.Errorf("pre_promote: %q holds a character Patroni's shlex would split or strip", p)
		}
	}
	return strings.Join(append(append([]string{bin}, SubCommand...), socket), " "), nil
}
