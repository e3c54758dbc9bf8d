package audit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// syncInterval bounds how long a written record may sit in the page cache
// before fsync. Write calls f.Write for every record (so a process crash
// loses nothing already returned), but fsyncs at most every syncInterval (or
// on Close), because an fsync per record would cap throughput at the disk's
// flush rate. The trade-off: on power loss or a kernel crash, up to
// syncInterval of records that Write reported as written may be lost; the
// next Open then sees a shorter log (or a torn last line, sealed by a gap
// record).
const syncInterval = 100 * time.Millisecond

// Option configures Open.
type Option func(*options)

type options struct {
	maxSize   int64
	retention time.Duration
	clock     func() time.Time
	observer  func(seq uint64, line []byte)
}

// WithMaxSize rotates audit.jsonl before a write would make it larger than
// n bytes. The file is renamed to audit-<seq of its first record>.jsonl and
// the chain continues in a new audit.jsonl. n <= 0 disables rotation.
func WithMaxSize(n int64) Option { return func(o *options) { o.maxSize = n } }

// WithRetention deletes rotated files whose last record is older than d,
// oldest first, at Open and after each rotation. Before deleting, the log
// writes a TypeRetention record so Verify accepts the missing prefix.
// d <= 0 keeps everything.
func WithRetention(d time.Duration) Option { return func(o *options) { o.retention = d } }

// WithClock sets the clock used to stamp events with a zero Time and to
// apply retention. It is meant for tests.
func WithClock(now func() time.Time) Option { return func(o *options) { o.clock = now } }

// WithObserver calls fn with each record's line (without its newline) once
// it is in the file, under the log's lock and in order: fn must not block
// or call back into the Log, and must copy line to keep it. Forwarding to
// syslog uses it.
func WithObserver(fn func(seq uint64, line []byte)) Option {
	return func(o *options) { o.observer = fn }
}

// Log is an append-only, hash-chained audit log in one directory. It is safe
// for concurrent use. Only one Log (one process) may write a directory at a
// time; there is no file lock.
//
// Once a write, rotation or sync fails, the Log is broken: every later Write
// returns the error, so callers fail closed. Reopen to recover; Open seals
// any torn tail with a gap record.
type Log struct {
	dir  string
	opts options

	mu       sync.Mutex // guards all below
	f        *os.File
	size     int64  // bytes in f
	firstSeq uint64 // seq of the first record in f; 0 if none
	seq      uint64 // seq of the last record written
	prev     string // hash of the last record written
	err      error  // sticky failure
	closed   bool
	dirty    bool // written since last fsync
	lastSync time.Time
	timer    *time.Timer // pending deferred fsync
}

// Open opens (creating it with mode 0700 if needed) the log directory and
// resumes the chain from the last intact record. A last record that is
// intact but lacks its newline only gets the newline. If the newest file
// ends with torn or invalid lines, Open keeps them, terminates them with a
// newline, appends a TypeGap record that chains from the last intact record
// and holds the damaged bytes' SHA-256, and starts a new audit.jsonl.
func Open(dir string, opts ...Option) (*Log, error) {
	o := options{clock: time.Now}
	for _, opt := range opts {
		opt(&o)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	l := &Log{dir: dir, opts: o, prev: zeroHash}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.resumeLocked(); err != nil {
		if l.f != nil {
			l.f.Close()
		}
		return nil, err
	}
	return l, nil
}

func (l *Log) curPath() string { return filepath.Join(l.dir, currentName) }

func openAppend(path string) (*os.File, int64, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, 0, fmt.Errorf("audit: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("audit: %w", err)
	}
	return f, st.Size(), nil
}

// terminate appends the newline missing after an intact last record.
func terminate(path string) error {
	f, _, err := openAppend(path)
	if err != nil {
		return err
	}
	_, err = f.Write([]byte{'\n'})
	if serr := f.Sync(); err == nil {
		err = serr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("audit: terminate %s: %w", path, err)
	}
	return nil
}

func (l *Log) resumeLocked() error {
	segs, err := segments(l.dir)
	if err != nil {
		return err
	}
	var (
		damagedPath string
		damaged     damage
		newest      = true
		curScan     fileScan
	)
	for i := len(segs) - 1; i >= 0; i-- {
		s, err := scanFile(segs[i])
		if err != nil {
			return err
		}
		if segs[i] == l.curPath() {
			curScan = s
		}
		if s.size == 0 {
			continue
		}
		if newest {
			newest = false
			if s.tail.lines > 0 {
				damagedPath, damaged = segs[i], s.tail
			}
			if s.unterminated {
				if err := terminate(segs[i]); err != nil {
					return err
				}
			}
		}
		if s.last != nil {
			l.seq, l.prev = s.last.Seq, s.last.Hash
			break
		}
	}
	l.f, l.size, err = openAppend(l.curPath())
	if err != nil {
		return err
	}
	if curScan.first != nil {
		l.firstSeq = curScan.first.Seq
	}
	if damagedPath != "" {
		if err := l.sealLocked(damagedPath, damaged); err != nil {
			return err
		}
	}
	return l.retainLocked()
}

// sealLocked terminates the damaged tail of path and appends a gap record.
// If path is the live file, it is then rotated so the chain continues in a
// fresh segment.
func (l *Log) sealLocked(path string, d damage) error {
	reason := fmt.Sprintf("%s ends with %d invalid line(s) (%d bytes) after seq %d: %v; kept in place, chain resumed",
		filepath.Base(path), d.lines, d.bytes, l.seq, d.err)
	gap := Event{
		Time: l.opts.clock(), Type: TypeGap, Outcome: OutcomeFailure, Reason: reason,
		Fields: map[string]any{
			"file": filepath.Base(path), "first_line": d.lineNo, "damaged_lines": d.lines,
			"damaged_bytes": d.bytes, "damaged_sha256": d.sum(), "after_seq": l.seq,
		},
	}
	live := path == l.curPath()
	f := l.f
	if !live {
		var err error
		if f, _, err = openAppend(path); err != nil {
			return err
		}
		defer f.Close()
	}
	if d.torn {
		if _, err := f.Write([]byte{'\n'}); err != nil {
			return fmt.Errorf("audit: seal %s: %w", path, err)
		}
		if live {
			l.size++
		}
	}
	line, h, err := encode(l.seq+1, l.prev, gap)
	if err != nil {
		return err
	}
	if _, err := f.Write(line); err != nil {
		return fmt.Errorf("audit: write gap record: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("audit: sync: %w", err)
	}
	l.seq, l.prev = l.seq+1, h
	if !live {
		return nil
	}
	l.size += int64(len(line))
	if l.firstSeq == 0 {
		l.firstSeq = l.seq
	}
	return l.rotateLocked()
}

// Write appends e as one record. A zero e.Time is set from the clock. Write
// does not redact: callers must pass free text through Redact first. An
// error means the record may not be on disk; see Log for failure handling.
func (l *Log) Write(e Event) error {
	_, err := l.WriteBatch([]Event{e})
	return err
}

// maxBatchBytes bounds the bytes gathered for one write system call.
const maxBatchBytes = 1 << 20

// WriteBatch appends events in order, gathering their lines into few write
// system calls. It returns how many events (a prefix of events) are in the
// log. An event that cannot be encoded is skipped and reported in the
// error, the others are still written; after an I/O error the log is
// broken and n tells the caller which events to keep for a retry.
func (l *Log) WriteBatch(events []Event) (n int, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return 0, ErrClosed
	}
	if l.err != nil {
		return 0, fmt.Errorf("audit: log unusable after earlier failure: %w", l.err)
	}
	var (
		buf      []byte
		hashes   []string
		idx      []int // index in events of each line in buf
		lens     []int
		badEvent error
		seq      = l.seq
		prev     = l.prev
	)
	flush := func() error {
		if len(buf) == 0 {
			return nil
		}
		wrote, werr := l.f.Write(buf)
		l.size += int64(wrote)
		// Count the complete lines that reached the file.
		for k, ln := range lens {
			if wrote < ln {
				break
			}
			wrote -= ln
			l.seq, l.prev = l.seq+1, hashes[k]
			if l.firstSeq == 0 {
				l.firstSeq = l.seq
			}
			n = idx[k] + 1
			l.observeLocked(buf, lens, k)
		}
		buf, hashes, idx, lens = buf[:0], hashes[:0], idx[:0], lens[:0]
		if werr != nil {
			l.err = fmt.Errorf("audit: write: %w", werr)
			return l.err
		}
		return nil
	}
	for i, e := range events {
		if e.Time.IsZero() {
			e.Time = l.opts.clock()
		}
		line, h, eerr := encode(seq+1, prev, e)
		if eerr != nil {
			badEvent = errors.Join(badEvent, eerr) // the event is bad, the log is fine
			continue
		}
		if l.opts.maxSize > 0 && l.size+int64(len(buf)) > 0 && l.size+int64(len(buf))+int64(len(line)) > l.opts.maxSize {
			if err := flush(); err != nil {
				return n, err
			}
			if err := l.rotateLocked(); err != nil {
				l.err = err
				return n, err
			}
			// Rotation may have written a retention record.
			seq, prev = l.seq, l.prev
			if line, h, eerr = encode(seq+1, prev, e); eerr != nil {
				badEvent = errors.Join(badEvent, eerr)
				continue
			}
		}
		if len(buf) > 0 && len(buf)+len(line) > maxBatchBytes {
			if err := flush(); err != nil {
				return n, err
			}
		}
		if len(buf) == 0 {
			// Lines are re-sliced from buf by the observer; keep the
			// buffer's own backing array per flush.
			buf = make([]byte, 0, max(len(line), 4096))
		}
		buf = append(buf, line...)
		hashes = append(hashes, h)
		idx = append(idx, i)
		lens = append(lens, len(line))
		seq, prev = seq+1, h
	}
	if err := flush(); err != nil {
		return n, err
	}
	n = len(events)
	if err := l.scheduleSyncLocked(); err != nil {
		l.err = err
		return n, err
	}
	return n, badEvent
}

// observeLocked hands the k-th line of buf to the observer.
func (l *Log) observeLocked(buf []byte, lens []int, k int) {
	if l.opts.observer == nil {
		return
	}
	off := 0
	for _, ln := range lens[:k] {
		off += ln
	}
	l.opts.observer(l.seq, buf[off:off+lens[k]-1]) // without the newline
}

// SetRetention changes the retention period (see WithRetention) and applies
// it at once.
func (l *Log) SetRetention(d time.Duration) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.opts.retention = d
	if l.closed || l.err != nil {
		return l.err
	}
	if err := l.retainLocked(); err != nil {
		l.err = err
		return err
	}
	return nil
}

// writeEventLocked writes a log-generated record without rotation checks.
func (l *Log) writeEventLocked(e Event) error {
	line, h, err := encode(l.seq+1, l.prev, e)
	if err != nil {
		return err
	}
	return l.appendLocked(line, h)
}

func (l *Log) appendLocked(line []byte, h string) error {
	n, err := l.f.Write(line)
	l.size += int64(n)
	if err != nil {
		return fmt.Errorf("audit: write: %w", err)
	}
	l.seq, l.prev = l.seq+1, h
	if l.firstSeq == 0 {
		l.firstSeq = l.seq
	}
	l.observeLocked(line, []int{len(line)}, 0)
	return l.scheduleSyncLocked()
}

// scheduleSyncLocked fsyncs now if the last fsync is older than
// syncInterval, and otherwise arranges one for when it will be.
func (l *Log) scheduleSyncLocked() error {
	l.dirty = true
	now := time.Now()
	if wait := syncInterval - now.Sub(l.lastSync); wait <= 0 {
		return l.syncLocked()
	} else if l.timer == nil {
		l.timer = time.AfterFunc(wait, l.timedSync)
	}
	return nil
}

func (l *Log) syncLocked() error {
	if err := l.f.Sync(); err != nil {
		return fmt.Errorf("audit: sync: %w", err)
	}
	l.dirty = false
	l.lastSync = time.Now()
	return nil
}

func (l *Log) timedSync() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.timer = nil
	if l.closed || !l.dirty || l.err != nil {
		return
	}
	if err := l.syncLocked(); err != nil {
		l.err = err
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("audit: sync dir: %w", err)
	}
	return nil
}

// rotateLocked renames the live file after its first record and opens a new
// one, then applies retention.
func (l *Log) rotateLocked() error {
	if l.firstSeq == 0 {
		return nil
	}
	if err := l.syncLocked(); err != nil {
		return err
	}
	if err := l.f.Close(); err != nil {
		return fmt.Errorf("audit: close: %w", err)
	}
	l.f = nil
	dst := filepath.Join(l.dir, fmt.Sprintf("audit-%d.jsonl", l.firstSeq))
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("audit: rotate: %s already exists", dst)
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("audit: rotate: %w", err)
	}
	if err := os.Rename(l.curPath(), dst); err != nil {
		return fmt.Errorf("audit: rotate: %w", err)
	}
	f, size, err := openAppend(l.curPath())
	if err != nil {
		return err
	}
	l.f, l.size, l.firstSeq = f, size, 0
	if err := syncDir(l.dir); err != nil {
		return err
	}
	return l.retainLocked()
}

// retainLocked deletes the oldest rotated files whose last record is older
// than the retention period. It stops at the first file it keeps, so only a
// prefix of the chain is ever removed, and it writes the TypeRetention
// record before deleting, so a crash in between leaves a log that verifies.
func (l *Log) retainLocked() error {
	if l.opts.retention <= 0 {
		return nil
	}
	segs, err := segments(l.dir)
	if err != nil {
		return err
	}
	cutoff := l.opts.clock().Add(-l.opts.retention)
	var del []string
	var keepFrom *Record
	for _, p := range segs {
		if p == l.curPath() {
			break
		}
		s, err := scanFile(p)
		if err != nil {
			return err
		}
		if s.last == nil || !s.last.Time.Before(cutoff) {
			keepFrom = s.first
			break
		}
		del = append(del, p)
	}
	if len(del) == 0 {
		return nil
	}
	fromSeq, fromPrev := l.seq+1, l.prev // the retention record itself
	switch {
	case keepFrom != nil:
		fromSeq, fromPrev = keepFrom.Seq, keepFrom.Prev
	case l.firstSeq != 0:
		s, err := scanFile(l.curPath())
		if err != nil {
			return err
		}
		if s.first != nil {
			fromSeq, fromPrev = s.first.Seq, s.first.Prev
		}
	}
	names := make([]string, len(del))
	for i, p := range del {
		names[i] = filepath.Base(p)
	}
	err = l.writeEventLocked(Event{
		Time: l.opts.clock(), Type: TypeRetention, Outcome: OutcomeSuccess,
		Reason: fmt.Sprintf("deleted %d rotated file(s) older than %s", len(del), l.opts.retention),
		Fields: map[string]any{"deleted": names, "retained_from_seq": fromSeq, "retained_from_prev": fromPrev},
	})
	if err != nil {
		return err
	}
	if err := l.syncLocked(); err != nil {
		return err
	}
	for _, p := range del {
		if err := os.Remove(p); err != nil {
			return fmt.Errorf("audit: retention: %w", err)
		}
	}
	return syncDir(l.dir)
}

// Close flushes (fsyncs) and closes the log. Later Writes return ErrClosed.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
	}
	if l.f == nil {
		return l.err
	}
	var err error
	if l.dirty {
		err = l.syncLocked()
	}
	if cerr := l.f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("audit: close: %w", cerr)
	}
	l.f = nil
	return err
}

// broken returns the sticky error that makes the Log unusable, if any.
func (l *Log) broken() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// Head returns the seq and hash of the last record written. Export it to a
// separate system from time to time: it anchors the chain against rewrites
// and against deletion of the newest records.
func (l *Log) Head() (seq uint64, hash string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seq, l.prev
}
