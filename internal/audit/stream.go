package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// PendingName is the file, in StreamConfig.SpillDir, that holds events a
// Stream could not write before it was closed (the daemon stopped while
// the encrypted volume was locked). The next Stream reads it back first.
const PendingName = "pending.jsonl"

// StreamConfig configures a Stream.
type StreamConfig struct {
	// Dir is the log directory; it lives on the encrypted volume.
	Dir string
	// SpillDir, outside the volume, is where events that could not be
	// written by Close are kept (PendingName), and where servers made
	// before the log moved onto the volume kept their log: Attach moves
	// those files into Dir.
	SpillDir string
	// Options are passed to Open (rotation, retention, clock).
	Options []Option
	// MaxBuffered bounds the events kept in memory while the log is
	// detached or failing (default 10,000); MaxBufferedBytes bounds their
	// approximate size (default 16 MiB). Beyond either, events are
	// counted and dropped, and a gap record says so once writing works.
	MaxBuffered      int
	MaxBufferedBytes int
	// RetryInterval is how often a failed log is reopened (default 1 s).
	RetryInterval time.Duration
	Logger        *slog.Logger
	Now           func() time.Time
}

// CheckAndSetDefaults fills in defaults.
func (c *StreamConfig) CheckAndSetDefaults() error {
	if c.Dir == "" || c.SpillDir == "" {
		return errors.New("audit: Stream needs Dir and SpillDir")
	}
	if c.MaxBuffered <= 0 {
		c.MaxBuffered = 10000
	}
	if c.MaxBufferedBytes <= 0 {
		c.MaxBufferedBytes = 16 << 20
	}
	if c.RetryInterval <= 0 {
		c.RetryInterval = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// ErrSinkUnavailable is wrapped by Stream.Healthy while the log cannot be
// written.
var ErrSinkUnavailable = errors.New("the audit log cannot be written")

// Stream is pgshield's audit sink: the hash-chained Log on the encrypted
// volume, which must be closed before the volume's key is removed and can
// only be reopened after it is back. Meanwhile, and whenever writing
// fails, events wait in a bounded memory buffer and are written, in order
// and chained, once the log works again; events that did not fit are
// counted and a gap record (TypeGap, fields kind, from, to, dropped) marks
// where they would have been. Healthy reports a failing log, so that
// pgshield.audit_fail_closed can refuse new sessions.
//
// Lock order: Stream.mu, then Log.mu.
type Stream struct {
	cfg StreamConfig
	fwd atomic.Pointer[Forwarder]

	mu struct {
		sync.Mutex
		log      *Log // nil while detached or failed
		attached bool // between Attach and Detach
		failure  error
		failedAt time.Time
		buf      []Event
		bufBytes int
		// dropped counts events lost since the last gap record, between
		// dropFrom and dropTo.
		dropped          int
		dropFrom, dropTo time.Time
		retention        *time.Duration
		retry            *time.Timer
		closed           bool
		pendingFile      bool // PendingName was read and not yet flushed
	}
}

// NewStream makes a detached Stream and reads back events a previous
// Stream left in SpillDir. Call Attach once the log directory is readable.
func NewStream(cfg StreamConfig) (*Stream, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, err
	}
	s := &Stream{cfg: cfg}
	if err := s.readPending(); err != nil {
		return nil, err
	}
	return s, nil
}

// SetForwarder sends every record written from now on to f as well (nil
// stops forwarding). The caller closes the previous forwarder.
func (s *Stream) SetForwarder(f *Forwarder) { s.fwd.Store(f) }

func (s *Stream) observe(seq uint64, line []byte) {
	if f := s.fwd.Load(); f != nil {
		f.Send(seq, line)
	}
}

// SetRetention changes the retention of rotated files.
func (s *Stream) SetRetention(d time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mu.retention = &d
	if s.mu.log != nil {
		return s.mu.log.SetRetention(d)
	}
	return nil
}

// Attach opens the log (moving a pre-volume log from SpillDir into Dir
// first) and writes the buffered events. If that fails, the Stream keeps
// buffering, retries every RetryInterval and reports the error.
func (s *Stream) Attach() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return ErrClosed
	}
	s.mu.attached = true
	if s.mu.log != nil {
		return nil
	}
	if err := s.openLocked(); err != nil {
		s.failLocked(err)
		return err
	}
	return nil
}

// Detach writes what is buffered and closes the log, so no file on the
// volume stays open; events are buffered until the next Attach.
func (s *Stream) Detach() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mu.attached = false
	s.stopRetryLocked()
	if s.mu.log == nil {
		return nil
	}
	err := s.flushLocked()
	if cerr := s.mu.log.Close(); err == nil {
		err = cerr
	}
	s.mu.log = nil
	return err
}

// Write records e, or buffers it while the log cannot be written. It
// returns an error only if e was dropped (the buffer is full) or is bad.
func (s *Stream) Write(e Event) error { return s.WriteBatch([]Event{e}) }

// Head is the log's head (Log.Head), zero while detached or failed.
func (s *Stream) Head() (seq uint64, hash string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.log == nil {
		return 0, ""
	}
	return s.mu.log.Head()
}

// WriteBatch records events in order; see Write.
func (s *Stream) WriteBatch(events []Event) error {
	if len(events) == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.Now()
	for i := range events {
		if events[i].Time.IsZero() {
			events[i].Time = now
		}
	}
	if s.mu.log != nil && len(s.mu.buf) == 0 && s.mu.dropped == 0 {
		n, err := s.mu.log.WriteBatch(events)
		if err == nil || s.mu.log.broken() == nil {
			return err // written, or only bad events skipped
		}
		s.failLocked(err)
		events = events[n:]
	}
	return s.bufferLocked(events)
}

// Healthy returns nil unless the log is attached and cannot be written.
// While detached (the volume is locked) events are buffered by design.
func (s *Stream) Healthy() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return ErrClosed
	}
	if s.mu.attached && s.mu.failure != nil {
		return fmt.Errorf("%w since %s: %v", ErrSinkUnavailable, s.mu.failedAt.UTC().Format(time.RFC3339), s.mu.failure)
	}
	return nil
}

// Close writes what it can and closes the log. Events still buffered are
// saved to SpillDir/PendingName (0600), outside the locked volume, so that
// the next Stream writes them; that file holds redacted events, like the
// log itself.
func (s *Stream) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return nil
	}
	s.mu.closed = true
	s.stopRetryLocked()
	var err error
	if s.mu.log != nil {
		err = s.flushLocked()
		if cerr := s.mu.log.Close(); err == nil {
			err = cerr
		}
		s.mu.log = nil
	}
	if len(s.mu.buf) > 0 || s.mu.dropped > 0 {
		if serr := s.spillLocked(); serr != nil {
			err = errors.Join(err, serr)
		} else {
			s.cfg.Logger.Warn("Audit events kept outside the encrypted volume until it is unlocked.",
				"events", len(s.mu.buf), "file", filepath.Join(s.cfg.SpillDir, PendingName))
		}
	}
	return err
}

func (s *Stream) openLocked() error {
	if err := migrate(s.cfg.SpillDir, s.cfg.Dir); err != nil {
		return err
	}
	opts := append([]Option{}, s.cfg.Options...)
	if s.mu.retention != nil {
		opts = append(opts, WithRetention(*s.mu.retention))
	}
	opts = append(opts, WithObserver(s.observe))
	l, err := Open(s.cfg.Dir, opts...)
	if err != nil {
		return err
	}
	s.mu.log = l
	if err := s.flushLocked(); err != nil {
		return err
	}
	if s.mu.failure != nil {
		s.cfg.Logger.Info("The audit log can be written again.", "down_since", s.mu.failedAt)
	}
	s.mu.failure = nil
	return nil
}

// failLocked marks the log failed, closes it and schedules a reopen.
func (s *Stream) failLocked(err error) {
	if s.mu.failure == nil {
		s.mu.failedAt = s.cfg.Now()
		s.cfg.Logger.Error("The audit log cannot be written; buffering events in memory.", "error", err)
	}
	s.mu.failure = err
	if s.mu.log != nil {
		_ = s.mu.log.Close()
		s.mu.log = nil
	}
	if s.mu.retry == nil && s.mu.attached && !s.mu.closed {
		s.mu.retry = time.AfterFunc(s.cfg.RetryInterval, s.retry)
	}
}

func (s *Stream) retry() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mu.retry = nil
	if s.mu.closed || !s.mu.attached || s.mu.log != nil {
		return
	}
	if err := s.openLocked(); err != nil {
		s.failLocked(err)
	}
}

func (s *Stream) stopRetryLocked() {
	if s.mu.retry != nil {
		s.mu.retry.Stop()
		s.mu.retry = nil
	}
}

// bufferLocked keeps events for later, dropping (and counting) what does
// not fit.
func (s *Stream) bufferLocked(events []Event) error {
	var dropped int
	for _, e := range events {
		size := approxSize(e)
		if len(s.mu.buf) >= s.cfg.MaxBuffered || s.mu.bufBytes+size > s.cfg.MaxBufferedBytes {
			if s.mu.dropped == 0 {
				s.mu.dropFrom = e.Time
				s.cfg.Logger.Error("The audit buffer is full; dropping events until the log can be written.",
					"buffered", len(s.mu.buf))
			}
			s.mu.dropped++
			s.mu.dropTo = e.Time
			dropped++
			continue
		}
		s.mu.buf = append(s.mu.buf, e)
		s.mu.bufBytes += size
	}
	if dropped > 0 {
		return fmt.Errorf("audit: %d event(s) dropped: the log cannot be written and the buffer is full", dropped)
	}
	return nil
}

func approxSize(e Event) int {
	n := 200 + len(e.Type) + len(e.Client) + len(e.User) + len(e.Database) + len(e.Rule) + len(e.Reason)
	for k, v := range e.Fields {
		n += len(k) + 16
		if s, ok := v.(string); ok {
			n += len(s)
		}
	}
	return n
}

// flushLocked writes the gap record (if something was lost or the log
// failed) and the buffered events.
func (s *Stream) flushLocked() error {
	l := s.mu.log
	if s.mu.failure != nil || s.mu.dropped > 0 {
		now := s.cfg.Now()
		from := s.mu.failedAt
		if s.mu.failure == nil || (!s.mu.dropFrom.IsZero() && s.mu.dropFrom.Before(from)) {
			from = s.mu.dropFrom
		}
		reason := fmt.Sprintf("%d event(s) dropped between %s and %s because the audit log could not be written",
			s.mu.dropped, s.mu.dropFrom.UTC().Format(time.RFC3339Nano), s.mu.dropTo.UTC().Format(time.RFC3339Nano))
		fields := map[string]any{"kind": "lost", "dropped": s.mu.dropped, "from": from.UTC(), "to": now.UTC(),
			"delivered_late": len(s.mu.buf)}
		if s.mu.failure != nil {
			fields["kind"] = "outage"
			fields["error"] = Redact(s.mu.failure.Error())
			reason = fmt.Sprintf("the audit log could not be written from %s to %s (%v); %d event(s) kept in memory follow, %d dropped",
				s.mu.failedAt.UTC().Format(time.RFC3339Nano), now.UTC().Format(time.RFC3339Nano), s.mu.failure, len(s.mu.buf), s.mu.dropped)
		}
		gap := Event{Time: from, Type: TypeGap, Outcome: OutcomeFailure, Reason: Redact(reason), Fields: fields}
		if _, err := l.WriteBatch([]Event{gap}); err != nil {
			return err
		}
		s.mu.dropped, s.mu.dropFrom, s.mu.dropTo = 0, time.Time{}, time.Time{}
	}
	for len(s.mu.buf) > 0 {
		chunk := s.mu.buf[:min(len(s.mu.buf), 512)]
		n, err := l.WriteBatch(chunk)
		if err != nil && l.broken() != nil {
			s.mu.buf = s.mu.buf[n:]
			s.recountLocked()
			return err
		}
		s.mu.buf = s.mu.buf[len(chunk):]
	}
	s.mu.buf, s.mu.bufBytes = nil, 0
	if s.mu.pendingFile {
		if err := os.Remove(filepath.Join(s.cfg.SpillDir, PendingName)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("audit: %w", err)
		}
		s.mu.pendingFile = false
	}
	return nil
}

func (s *Stream) recountLocked() {
	s.mu.bufBytes = 0
	for _, e := range s.mu.buf {
		s.mu.bufBytes += approxSize(e)
	}
}

// spillLocked writes the buffer (and a gap event for what was dropped) to
// SpillDir/PendingName, replacing it atomically.
func (s *Stream) spillLocked() error {
	if err := os.MkdirAll(s.cfg.SpillDir, 0o700); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	for _, e := range s.mu.buf {
		if err := enc.Encode(e); err != nil {
			continue // cannot happen for events that were accepted
		}
	}
	if s.mu.dropped > 0 {
		_ = enc.Encode(Event{Time: s.mu.dropFrom, Type: TypeGap, Outcome: OutcomeFailure,
			Reason: fmt.Sprintf("%d event(s) dropped while the audit log could not be written", s.mu.dropped),
			Fields: map[string]any{"kind": "lost", "dropped": s.mu.dropped, "from": s.mu.dropFrom.UTC(), "to": s.mu.dropTo.UTC()}})
	}
	path := filepath.Join(s.cfg.SpillDir, PendingName)
	tmp, err := os.CreateTemp(s.cfg.SpillDir, ".pending-*")
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(b.Bytes())
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err == nil {
		err = syncDir(s.cfg.SpillDir)
	}
	if err != nil {
		return fmt.Errorf("audit: saving pending events: %w", err)
	}
	return nil
}

// readPending loads SpillDir/PendingName into the buffer. A line that does
// not decode is counted as dropped.
func (s *Stream) readPending() error {
	path := filepath.Join(s.cfg.SpillDir, PendingName)
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	defer f.Close()
	s.mu.pendingFile = true
	br := bufio.NewReader(f)
	for {
		line, err := br.ReadBytes('\n')
		if len(bytes.TrimSpace(line)) > 0 {
			var e Event
			dec := json.NewDecoder(bytes.NewReader(line))
			dec.UseNumber()
			if dec.Decode(&e) != nil {
				e = Event{Time: s.cfg.Now(), Type: TypeGap, Outcome: OutcomeFailure,
					Reason: "an unreadable line in " + PendingName + " was dropped", Fields: map[string]any{"kind": "lost", "dropped": 1}}
			}
			_ = s.bufferLocked([]Event{e})
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("audit: %s: %w", path, err)
		}
	}
}

// migrate moves the log of a server made before the audit log moved onto
// the encrypted volume from old into dir, file by file (copy, fsync,
// rename, then remove the original), so that a crash at any point leaves
// every record in at least one place. It does nothing if dir already
// holds a log.
func migrate(old, dir string) error {
	oldSegs, err := segments(old)
	if errors.Is(err, os.ErrNotExist) || err == nil && len(oldSegs) == 0 {
		return nil
	}
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	newSegs, err := segments(dir)
	if err != nil {
		return err
	}
	// Files already in dir must be copies from an interrupted migration.
	oldNames := map[string]bool{}
	for _, p := range oldSegs {
		oldNames[filepath.Base(p)] = true
	}
	for _, p := range newSegs {
		if !oldNames[filepath.Base(p)] {
			return fmt.Errorf("audit: a log exists in both %s and %s; move one aside", old, dir)
		}
	}
	for _, src := range oldSegs {
		dst := filepath.Join(dir, filepath.Base(src))
		if _, err := os.Stat(dst); err == nil {
			if !sameFile(src, dst) {
				return fmt.Errorf("audit: both %s and %s exist and differ; move one aside", src, dst)
			}
			continue
		}
		if err := copyFile(src, dst); err != nil {
			return err
		}
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	for _, src := range oldSegs {
		if err := os.Remove(src); err != nil {
			return fmt.Errorf("audit: %w", err)
		}
	}
	return syncDir(old)
}

func sameFile(a, b string) bool {
	x, err1 := os.ReadFile(a)
	y, err2 := os.ReadFile(b)
	return err1 == nil && err2 == nil && bytes.Equal(x, y)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	defer in.Close()
	tmp := dst + ".migrating"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("audit: moving %s: %w", src, err)
	}
	return nil
}
