// Package audit implements pgshield's tamper-evident audit log.
//
// The log is a directory of JSON-lines files. The live file is audit.jsonl;
// rotated files are named audit-<seq>.jsonl after the sequence number of
// their first record. Every record carries:
//
//   - seq: a counter starting at 1 and continuing across rotated files;
//   - prev: the hash field of the previous record (64 hex zeros for seq 1);
//   - hash: the hex SHA-256 of the record's canonical line without the hash
//     field. The writer marshals the record with encoding/json (hash omitted),
//     hashes exactly those bytes, and then appends `,"hash":"<hex>"` before
//     the closing brace. The hash field is therefore always the last key, and
//     Verify recomputes it over the exact bytes on disk, so any edit to a
//     record (including added keys or whitespace) is detected.
//
// Because prev is the previous record's hash and each hash covers its line's
// exact bytes (including prev), prev is as strong as a hash of the previous
// line. Verify detects edited, deleted, reordered and truncated records and a
// missing rotated file in the middle of the chain.
//
// Limits: the chain has no key, so an attacker who can rewrite the whole
// directory can recompute every hash, and deleting whole records from the
// end of the log cannot be told apart from a log that ended there. To close
// both gaps, periodically export Report.Head (the last record's hash and seq)
// to a separate system and compare.
//
// Secrets: Log.Write records what it is given. Callers must pass free text
// (SQL, error messages, reasons) through Redact before putting it into an
// Event; the log never inspects or rewrites content.
package audit

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Event is one audited occurrence. Empty fields are omitted from the JSON
// line. Fields values must be JSON-marshallable.
type Event struct {
	Time     time.Time      `json:"time,omitzero"`
	Type     string         `json:"type,omitempty"`
	Outcome  string         `json:"outcome,omitempty"` // OutcomeSuccess, OutcomeFailure or ""
	Client   string         `json:"client,omitempty"`
	User     string         `json:"user,omitempty"`
	Database string         `json:"database,omitempty"`
	Rule     string         `json:"rule,omitempty"`
	Reason   string         `json:"reason,omitempty"`
	Fields   map[string]any `json:"fields,omitempty"`
}

// Outcome values for Event.Outcome.
const (
	// OutcomeSuccess marks an allowed or completed action.
	OutcomeSuccess = "success"
	// OutcomeFailure marks a denied or failed action.
	OutcomeFailure = "failure"
)

// Record types written by the log itself.
const (
	// TypeGap marks damaged bytes found at the end of the log on Open. The
	// damaged lines are kept in place; the gap record's Fields hold their
	// SHA-256 (damaged_sha256) so Verify can check them, and the chain
	// resumes from the last intact record.
	TypeGap = "audit.gap"
	// TypeRetention is written before rotated files are deleted by the
	// retention policy. Fields retained_from_seq and retained_from_prev name
	// the oldest record that remains, so Verify can tell policy deletions
	// from tampering.
	TypeRetention = "audit.retention"
)

// Record is an Event as stored: with its sequence number and chain hashes.
type Record struct {
	Event
	Seq  uint64 `json:"seq"`
	Prev string `json:"prev"`
	Hash string `json:"hash"`
}

// Sink receives audit events. Implementations are safe for concurrent use.
// A non-nil error means the event may not have been recorded; pgshield fails
// closed (refuses the audited action) on such errors.
type Sink interface {
	Write(Event) error
}

var _ Sink = (*Log)(nil)

const (
	currentName = "audit.jsonl"
	hashKey     = `,"hash":"`
	suffixLen   = len(hashKey) + sha256.Size*2 + len(`"}`)
)

// zeroHash is prev for seq 1: the hex of 32 zero bytes.
var zeroHash = strings.Repeat("0", sha256.Size*2)

// wire is the on-disk layout, in key order. Hash is appended by encode.
type wire struct {
	Seq      uint64         `json:"seq"`
	Prev     string         `json:"prev"`
	Time     time.Time      `json:"time,omitzero"`
	Type     string         `json:"type,omitempty"`
	Outcome  string         `json:"outcome,omitempty"`
	Client   string         `json:"client,omitempty"`
	User     string         `json:"user,omitempty"`
	Database string         `json:"database,omitempty"`
	Rule     string         `json:"rule,omitempty"`
	Reason   string         `json:"reason,omitempty"`
	Fields   map[string]any `json:"fields,omitempty"`
}

func hashHex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// encode returns the full line (with trailing newline) and its hash.
func encode(seq uint64, prev string, e Event) (line []byte, h string, err error) {
	w := wire{
		Seq: seq, Prev: prev, Time: e.Time.UTC(), Type: e.Type, Outcome: e.Outcome,
		Client: e.Client, User: e.User, Database: e.Database, Rule: e.Rule,
		Reason: e.Reason, Fields: e.Fields,
	}
	// No HTML escaping: "<redacted>" stays readable. Verify hashes the
	// bytes as they are, so older lines with \u003c escapes verify too.
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(w); err != nil {
		return nil, "", fmt.Errorf("audit: encode event: %w", err)
	}
	b := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	h = hashHex(b)
	line = make([]byte, 0, len(b)+suffixLen)
	line = append(line, b[:len(b)-1]...)
	line = append(line, hashKey...)
	line = append(line, h...)
	line = append(line, "\"}\n"...)
	return line, h, nil
}

// lineError is why a line is not a valid record.
type lineError struct{ msg string }

func (e *lineError) Error() string { return e.msg }

var (
	errHashMismatch = &lineError{"hash mismatch: edited"}
	errTorn         = &lineError{"torn record (no newline): truncated"}
)

func malformed(format string, args ...any) error {
	return &lineError{"malformed record: " + fmt.Sprintf(format, args...) + ": edited or corrupted"}
}

func isHex64(s []byte) bool {
	if len(s) != sha256.Size*2 {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// checkLine validates one line (without its newline) on its own: layout,
// hash and JSON. Chain checks are done by the caller.
func checkLine(line []byte) (Record, error) {
	var r Record
	if len(line) < suffixLen+2 || line[0] != '{' {
		return r, malformed("too short or not an object")
	}
	tail := line[len(line)-suffixLen:]
	if !bytes.HasPrefix(tail, []byte(hashKey)) || !bytes.HasSuffix(tail, []byte(`"}`)) {
		return r, malformed("no trailing hash field")
	}
	h := tail[len(hashKey) : len(hashKey)+sha256.Size*2]
	if !isHex64(h) {
		return r, malformed("hash is not 64 lowercase hex digits")
	}
	body := make([]byte, 0, len(line)-suffixLen+1)
	body = append(body, line[:len(line)-suffixLen]...)
	body = append(body, '}')
	if hashHex(body) != string(h) {
		return r, errHashMismatch
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var w wire
	if err := dec.Decode(&w); err != nil {
		return r, malformed("%v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return r, malformed("trailing data")
	}
	if w.Seq == 0 || !isHex64([]byte(w.Prev)) {
		return r, malformed("bad seq or prev")
	}
	r = Record{
		Event: Event{
			Time: w.Time, Type: w.Type, Outcome: w.Outcome, Client: w.Client, User: w.User,
			Database: w.Database, Rule: w.Rule, Reason: w.Reason, Fields: w.Fields,
		},
		Seq: w.Seq, Prev: w.Prev, Hash: string(h),
	}
	return r, nil
}

// segments lists the log's files in chain order: rotated files by the seq
// in their name, then audit.jsonl if it exists. Other files are ignored.
func segments(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	type seg struct {
		n    uint64
		name string
	}
	var rot []seg
	cur := false
	for _, e := range ents {
		name := e.Name()
		if !e.Type().IsRegular() {
			continue
		}
		if name == currentName {
			cur = true
			continue
		}
		num, ok := strings.CutPrefix(name, "audit-")
		if !ok {
			continue
		}
		num, ok = strings.CutSuffix(num, ".jsonl")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(num, 10, 64)
		if err != nil {
			continue
		}
		rot = append(rot, seg{n, name})
	}
	sort.Slice(rot, func(i, j int) bool { return rot[i].n < rot[j].n })
	out := make([]string, 0, len(rot)+1)
	for _, s := range rot {
		out = append(out, filepath.Join(dir, s.name))
	}
	if cur {
		out = append(out, filepath.Join(dir, currentName))
	}
	return out, nil
}

// eachLine calls fn for every line of path (without newline). torn is set
// for a final line that has no newline. fn must not retain line.
func eachLine(path string, fn func(lineNo int, line []byte, torn bool) error) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	defer f.Close()
	br := bufio.NewReader(f)
	for n := 1; ; n++ {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			torn := line[len(line)-1] != '\n'
			if !torn {
				line = line[:len(line)-1]
			}
			if ferr := fn(n, line, torn); ferr != nil {
				return ferr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("audit: read %s: %w", path, err)
		}
	}
}

// damage accumulates consecutive invalid lines; its digest is SHA-256 of the
// lines joined by "\n" (no trailing newline), as recorded in gap records.
type damage struct {
	lines  int
	bytes  int64
	torn   bool
	h      hash.Hash
	lineNo int   // first damaged line
	err    error // why the first damaged line is invalid
	atFile string
}

func (d *damage) add(file string, lineNo int, line []byte, torn bool, err error) {
	if d.lines == 0 {
		d.h = sha256.New()
		d.lineNo, d.err, d.atFile = lineNo, err, file
	} else {
		d.h.Write([]byte{'\n'})
		d.bytes++
	}
	d.h.Write(line)
	d.bytes += int64(len(line))
	d.lines++
	d.torn = torn
}

func (d *damage) sum() string { return hex.EncodeToString(d.h.Sum(nil)) }

// fileScan is what Open and retention need to know about one file.
type fileScan struct {
	size        int64
	first, last *Record
	tail        damage // invalid lines after the last valid record
	// unterminated: the last line is a valid record missing only its
	// newline (a write cut just before it). Nothing is lost; Open adds the
	// newline.
	unterminated bool
}

func scanFile(path string) (fileScan, error) {
	var s fileScan
	st, err := os.Stat(path)
	if err != nil {
		return s, fmt.Errorf("audit: %w", err)
	}
	s.size = st.Size()
	err = eachLine(path, func(n int, line []byte, torn bool) error {
		r, lerr := checkLine(line)
		if lerr != nil && torn {
			lerr = errTorn
		}
		s.unterminated = torn && lerr == nil
		if lerr != nil {
			s.tail.add(filepath.Base(path), n, line, torn, lerr)
			return nil
		}
		s.tail = damage{}
		if s.first == nil {
			s.first = &r
		}
		s.last = &r
		return nil
	})
	return s, err
}

// ErrClosed is returned by Write after Close.
var ErrClosed = errors.New("audit: log closed")
