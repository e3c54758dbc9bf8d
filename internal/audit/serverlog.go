package audit

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// PostgreSQL's server log reaches the audit stream without touching a disk.
//
// PostgreSQL is configured with logging_collector = on, log_destination =
// 'jsonlog', log_directory = ServerLog.Dir, log_filename = ServerLogName
// and no rotation (log_rotation_age = 0, log_rotation_size = 0). Its
// syslogger then opens Dir/postgresql.json (jsonlog; the suffix replaces
// .log) and Dir/postgresql.log (the "stderr" file it always opens, for
// output that bypasses the logging protocol and as a fallback) with
// fopen(name, "a"). Both are named pipes that pgshield creates and reads,
// so every line goes from the syslogger through the kernel's pipe buffer
// into pgshield, which redacts it and writes it to the audit log on the
// encrypted volume. Nothing is ever written to a file in plain text.
//
// How PostgreSQL 15 treats these "files", and why it is safe:
//   - Opening a FIFO for writing blocks until it has a reader, so pgshield
//     opens the read end (O_NONBLOCK) before it starts the postmaster. It
//     also holds a write end itself ("keeper"), so the reader sees no EOF
//     while PostgreSQL restarts its syslogger or pgshield restarts the
//     postmaster after a crash.
//   - Rotation (pg_rotate_logfile(), or a SIGHUP that changes a log_*
//     setting, all of which pgshield protects) reopens the same name: the
//     syslogger opens the new handle before closing the old one, so the
//     pipe never loses its writer.
//   - Dir is root-owned, 0710 root:postgres: the postgres user can open the
//     FIFOs (owned by it, 0600) but not replace them with files. If a FIFO
//     is missing, the syslogger's create fails and PostgreSQL reports it
//     instead of writing a plain file.
//   - A slow reader: the syslogger's write blocks when the pipe (1 MiB) is
//     full, and backends then block on the syslogger's own pipe. PostgreSQL
//     slows down; no message is dropped. The reader never waits on
//     anything but the audit Stream, which buffers in memory when the disk
//     fails, so it keeps draining.
//   - A reader that is gone (pgshield died): the syslogger ignores SIGPIPE,
//     its writes fail with EPIPE and the messages are lost, but the
//     postmaster was sent SIGINT by the kernel (Pdeathsig) and is shutting
//     down anyway. Nothing blocks.
//   - Shutdown: Stop is called after the postmaster has exited. It closes
//     the keepers and reads until EOF, which comes when the syslogger (the
//     last writer) has written the last messages of the shutdown and
//     exited; it waits at most the given timeout, then says how it ended.
//
// The postmaster's own stdout and stderr (messages before the syslogger
// starts, e.g. a configuration error) go to an anonymous pipe, read the
// same way; the last lines are kept in memory for error messages.

// ServerLogName is PostgreSQL's log_filename; the jsonlog pipe is
// ServerLogName with .log replaced by .json.
const ServerLogName = "postgresql.log"

// ServerLog reads PostgreSQL's log from named pipes in Dir and hands
// redacted events to Sink. Start before the postmaster, Stop after it.
type ServerLog struct {
	// Dir holds the pipes; Start creates it, 0710 root:GID.
	Dir string
	// UID and GID own the pipes: the postgres OS user.
	UID, GID int
	// Sink receives events in order, in batches. It must not block for
	// long: PostgreSQL waits while it does.
	Sink   func([]Event)
	Logger *slog.Logger
	// MaxLine bounds one log line (default 16 MiB); a longer line is
	// dropped with a record saying so.
	MaxLine int
	Now     func() time.Time

	keepers []*os.File
	readers []*os.File
	stderrW *os.File // the postmaster's stdout/stderr
	wg      sync.WaitGroup
	tailMu  sync.Mutex
	tail    []string // last stderr lines, redacted
}

// JSONLogName is the jsonlog pipe's name in Dir.
func JSONLogName() string { return strings.TrimSuffix(ServerLogName, ".log") + ".json" }

// Start creates the pipes (replacing anything else found at their paths),
// opens them and starts reading.
func (s *ServerLog) Start() (err error) {
	if s.Sink == nil {
		return errors.New("audit: ServerLog needs a Sink")
	}
	if s.Logger == nil {
		s.Logger = slog.New(slog.DiscardHandler)
	}
	if s.MaxLine <= 0 {
		s.MaxLine = 16 << 20
	}
	if s.Now == nil {
		s.Now = time.Now
	}
	defer func() {
		if err != nil {
			s.closeAll()
		}
	}()
	if err := os.MkdirAll(s.Dir, 0o710); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	if err := os.Chown(s.Dir, 0, s.GID); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	if err := os.Chmod(s.Dir, 0o710); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	for _, name := range []string{JSONLogName(), ServerLogName} {
		path := filepath.Join(s.Dir, name)
		r, k, err := s.openFIFO(path)
		if err != nil {
			return err
		}
		s.readers = append(s.readers, r)
		s.keepers = append(s.keepers, k)
		parse, oversized := s.jsonLine, ParseOversizedHead
		if name == ServerLogName {
			parse, oversized = s.stderrLine, nil
		}
		s.wg.Add(1)
		go s.read(r, name, parse, oversized)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	s.readers = append(s.readers, r)
	s.stderrW = w
	s.wg.Add(1)
	go s.read(r, "stderr", s.stderrLine, nil)
	return nil
}

// Stderr is the write end to give the postmaster as stdout and stderr.
func (s *ServerLog) Stderr() *os.File { return s.stderrW }

// Tail returns the last lines PostgreSQL wrote to stderr and its last
// FATAL and PANIC messages, redacted, for an error message.
func (s *ServerLog) Tail() string {
	s.tailMu.Lock()
	defer s.tailMu.Unlock()
	return strings.Join(s.tail, "\n")
}

func (s *ServerLog) stderrLine(line []byte, now time.Time) Event {
	e := ParseStderrLine(line, now)
	s.addTail(e.Reason)
	return e
}

// jsonLine also keeps FATAL and PANIC messages for Tail: they say why a
// start or a recovery failed.
func (s *ServerLog) jsonLine(line []byte, now time.Time) Event {
	e := ParseServerLogLine(line, now)
	if sev, _ := e.Fields["severity"].(string); sev == "FATAL" || sev == "PANIC" {
		s.addTail(sev + ":  " + e.Reason)
	}
	return e
}

func (s *ServerLog) addTail(line string) {
	s.tailMu.Lock()
	defer s.tailMu.Unlock()
	s.tail = append(s.tail, line)
	if len(s.tail) > 20 {
		s.tail = s.tail[len(s.tail)-20:]
	}
}

func (s *ServerLog) openFIFO(path string) (r, keeper *os.File, err error) {
	st, err := os.Lstat(path)
	if err == nil && st.Mode()&os.ModeNamedPipe == 0 {
		// A plain file here (an older layout, or something placed) would
		// receive the log in clear; only a pipe may stand here.
		if err := os.Remove(path); err != nil {
			return nil, nil, fmt.Errorf("audit: %w", err)
		}
	}
	if err != nil || st.Mode()&os.ModeNamedPipe == 0 {
		if err := unix.Mkfifo(path, 0o600); err != nil {
			return nil, nil, fmt.Errorf("audit: mkfifo %s: %w", path, err)
		}
	}
	if err := os.Lchown(path, s.UID, s.GID); err != nil {
		return nil, nil, fmt.Errorf("audit: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		return nil, nil, fmt.Errorf("audit: %w", err)
	}
	// O_NONBLOCK: opening the read end of a FIFO without a writer would
	// block otherwise. Go polls the descriptor, so reads still wait.
	r, err = os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("audit: %w", err)
	}
	keeper, err = os.OpenFile(path, os.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		r.Close()
		return nil, nil, fmt.Errorf("audit: %w", err)
	}
	// A larger pipe absorbs bursts before PostgreSQL has to wait.
	if rc, err := r.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { _, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, 1<<20) })
	}
	return r, keeper, nil
}

// read turns lines into events until EOF (every writer gone) or the read
// end is closed.
//
// oversized, if not nil, makes the event for a line longer than MaxLine
// from its first bytes (jsonlog: who wrote it); without it such a line
// becomes a TypePostgresStderr failure.
func (s *ServerLog) read(r *os.File, name string, parse func([]byte, time.Time) Event,
	oversized func(head []byte, total int, now time.Time) Event) {
	defer s.wg.Done()
	br := bufio.NewReaderSize(r, 256<<10)
	var (
		batch []Event
		long  []byte // a line longer than the reader's buffer, so far
		drop  int    // bytes of an oversized line being skipped
		head  []byte // the first bytes of the line being skipped
	)
	keepHead := func(b ...[]byte) {
		for _, p := range b {
			if n := oversizedHead - len(head); n > 0 {
				head = append(head, p[:min(n, len(p))]...)
			}
		}
	}
	for {
		frag, err := br.ReadSlice('\n')
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			if drop > 0 || len(long)+len(frag) > s.MaxLine {
				keepHead(long, frag)
				drop += len(long) + len(frag)
				long = long[:0]
			} else {
				long = append(long, frag...)
			}
			continue
		case len(frag) > 0 || len(long) > 0 || drop > 0:
			now := s.Now()
			if total := drop + len(long) + len(frag); drop > 0 || total > s.MaxLine+1 {
				keepHead(long, frag)
				if oversized != nil {
					batch = append(batch, oversized(head, total, now))
				} else {
					batch = append(batch, Event{Time: now, Type: TypePostgresStderr, Outcome: OutcomeFailure,
						Reason: fmt.Sprintf("a line of %d bytes in PostgreSQL's %s was longer than %d bytes and was dropped", total, name, s.MaxLine)})
				}
				drop, head = 0, head[:0]
			} else {
				line := frag
				if len(long) > 0 {
					line = append(long, frag...)
				}
				line = trimNewline(line)
				if len(line) > 0 {
					batch = append(batch, parse(line, now))
				}
			}
			long = long[:0]
		}
		// Hand over what is here; keep reading without waiting while more
		// is buffered, up to a batch.
		if len(batch) > 0 && (err != nil || br.Buffered() == 0 || len(batch) >= 256) {
			s.Sink(batch)
			batch = nil
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, os.ErrClosed) {
				s.Logger.Error("Reading PostgreSQL's log failed.", "pipe", name, "error", err)
			}
			return
		}
	}
}

func trimNewline(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// Stop closes pgshield's write ends and waits up to timeout for PostgreSQL's
// last messages; call it after the postmaster has exited. If the readers
// have not seen EOF by then (a PostgreSQL child still holds a pipe), they
// are closed and Stop says so.
func (s *ServerLog) Stop(timeout time.Duration) error {
	for _, k := range s.keepers {
		k.Close()
	}
	s.keepers = nil
	if s.stderrW != nil {
		s.stderrW.Close()
		s.stderrW = nil
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-time.After(timeout):
		err = fmt.Errorf("audit: PostgreSQL's log pipes still had writers after %s; stopped reading", timeout)
		s.Sink([]Event{{Time: s.Now(), Type: TypePostgresStderr, Outcome: OutcomeFailure, Reason: err.Error()}})
	}
	for _, r := range s.readers {
		r.Close()
	}
	s.readers = nil
	<-done
	return err
}

func (s *ServerLog) closeAll() {
	for _, f := range append(s.keepers, s.readers...) {
		f.Close()
	}
	if s.stderrW != nil {
		s.stderrW.Close()
	}
	s.keepers, s.readers, s.stderrW = nil, nil, nil
	s.wg.Wait()
}
