package promote

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The exchange on the socket: the client sends request; the daemon
// answers answerOK, or refusedPrefix and a reason, each one line.
const (
	request       = "pre-promote\n"
	answerOK      = "ok\n"
	refusedPrefix = "refused: "
	// maxLine bounds every line read, on both sides.
	maxLine = 256
)

// Server answers pre_promote requests on a Unix socket.
type Server struct {
	Volume Volume
	Keys   Keys
	// UID is the only caller answered (Patroni's user, postgres); root is
	// always answered too.
	UID int
	// Timeout bounds Check (DefaultTimeout when zero).
	Timeout time.Duration
	Log     *slog.Logger

	// testPeer, if set, replaces the SO_PEERCRED lookup (tests run as
	// root, which is always answered).
	testPeer func(*net.UnixConn) (uid, pid int, err error)
}

// Listen makes the socket at path (a stale file is removed; a live
// socket is refused), mode 0600 and owned by uid, so that only that user
// (and root) can connect; the daemon also checks each caller's
// credentials.
func Listen(path string, uid int) (*net.UnixListener, error) {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("%s: already in use", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	if err := os.Chown(path, uid, -1); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// Serve answers connections on ln until ctx ends, one at a time:
// promotions are rare, and a second caller waits rather than racing a
// KMS round trip.
func (s *Server) Serve(ctx context.Context, ln *net.UnixListener) error {
	log := s.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		s.handle(ctx, c, log)
	}
}

func (s *Server) handle(ctx context.Context, c *net.UnixConn, log *slog.Logger) {
	defer c.Close()
	deadline := s.Timeout
	if deadline <= 0 {
		deadline = DefaultTimeout
	}
	_ = c.SetDeadline(time.Now().Add(deadline + 5*time.Second))
	who := peer
	if s.testPeer != nil {
		who = s.testPeer
	}
	uid, pid, err := who(c)
	if err != nil || (uid != s.UID && uid != 0) {
		log.Warn("Refused a pre_promote caller.", "uid", uid, "pid", pid, "error", err)
		return // no answer: the client fails closed
	}
	line, err := bufio.NewReaderSize(io.LimitReader(c, maxLine), maxLine).ReadString('\n')
	if err != nil || line != request {
		log.Warn("Refused a malformed pre_promote request.", "uid", uid, "pid", pid)
		return
	}
	answer := answerOK
	if err := Check(ctx, s.Volume, s.Keys, s.Timeout); err != nil {
		log.Error("Promotion refused.", "error", err)
		answer = refusedPrefix + reason(err) + "\n"
	} else {
		log.Info("Promotion allowed: volume unlocked, data key unwraps.")
	}
	_, _ = io.WriteString(c, answer)
}

// peer returns the connecting process's uid and pid (SO_PEERCRED).
func peer(c *net.UnixConn) (uid, pid int, err error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return -1, 0, err
	}
	var cred *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return -1, 0, err
	}
	if serr != nil {
		return -1, 0, serr
	}
	return int(cred.Uid), int(cred.Pid), nil
}

// ErrRefused is in every error Ask returns: the daemon refused, or could
// not be asked (either way the promotion must not happen).
var ErrRefused = errors.New("promotion refused")

// Ask asks the daemon at socket whether this node may be promoted. It
// returns nil only on the daemon's exact "ok"; no answer, a timeout or
// anything else is an error.
func Ask(ctx context.Context, socket string) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultTimeout+10*time.Second)
		defer cancel()
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return fmt.Errorf("%w: asking the daemon: %w", ErrRefused, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if _, err := io.WriteString(c, request); err != nil {
		return fmt.Errorf("%w: asking the daemon: %w", ErrRefused, err)
	}
	b, err := io.ReadAll(io.LimitReader(c, maxLine+1))
	if err != nil {
		return fmt.Errorf("%w: asking the daemon: %w", ErrRefused, err)
	}
	return parseAnswer(b)
}

// parseAnswer reads the daemon's answer: nil for exactly "ok\n", else an
// error; a refusal's reason is kept only as printable ASCII.
func parseAnswer(b []byte) error {
	if bytes.Equal(b, []byte(answerOK)) {
		return nil
	}
	if len(b) > maxLine {
		return fmt.Errorf("%w: answer too long", ErrRefused)
	}
	s := string(b)
	if r, ok := strings.CutPrefix(s, refusedPrefix); ok && strings.HasSuffix(r, "\n") {
		return fmt.Errorf("%w: %s", ErrRefused, printable(strings.TrimSuffix(r, "\n")))
	}
	if len(b) == 0 {
		return fmt.Errorf("%w: no answer (is this user allowed, is the daemon in cluster mode?)", ErrRefused)
	}
	return fmt.Errorf("%w: unexpected answer %q", ErrRefused, printable(s))
}

func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return '?'
		}
		return r
	}, s)
}
