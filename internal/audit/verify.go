package audit

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"time"
)

// Report is the result of Verify.
type Report struct {
	// Records counts the intact records read (including gap and retention
	// records), up to the first problem.
	Records int
	// OK is true if the whole chain verified.
	OK bool
	// Problem describes the first failure, naming the record and file line
	// and the likely cause, e.g.
	// "record 17 (audit.jsonl line 5): hash mismatch: edited".
	Problem string
	// Notes lists accepted irregularities: gap records sealing damaged lines
	// and prefixes removed by retention.
	Notes []string
	// HeadSeq and Head are the seq and hash of the last intact record;
	// compare them with an exported copy to detect rewrites and deletion of
	// the newest records.
	HeadSeq uint64
	Head    string
}

// errStop ends a scan after a problem was recorded.
var errStop = errors.New("stop")

type verifier struct {
	rep       Report
	expect    uint64 // next seq; 0 before the first record
	prev      string
	firstSeq  uint64 // first seq seen, if it is not 1
	firstPrev string
	retained  []retMark
	bad       damage
}

type retMark struct {
	seq  uint64
	prev string
}

func (v *verifier) fail(format string, args ...any) error {
	v.rep.Problem = fmt.Sprintf(format, args...)
	return errStop
}

func fieldString(f map[string]any, k string) string {
	switch x := f[k].(type) {
	case string:
		return x
	case json.Number:
		return x.String()
	}
	return ""
}

func (v *verifier) line(file string, n int, line []byte, torn bool) error {
	loc := fmt.Sprintf("%s line %d", file, n)
	var r Record
	var err error
	if torn {
		err = errTorn
	} else {
		r, err = checkLine(line)
	}
	if err != nil {
		v.bad.add(file, n, line, torn, err)
		return nil
	}
	if v.bad.lines > 0 {
		if r.Type != TypeGap || fieldString(r.Fields, "damaged_sha256") != v.bad.sum() {
			return v.badProblem()
		}
		v.rep.Notes = append(v.rep.Notes, fmt.Sprintf("%d damaged line(s) from %s line %d sealed by gap record %d (%s): %s",
			v.bad.lines, v.bad.atFile, v.bad.lineNo, r.Seq, loc, r.Reason))
		v.bad = damage{}
	}
	switch {
	case v.expect == 0 && r.Seq == 1 && r.Prev != zeroHash:
		return v.fail("record 1 (%s): prev is not the genesis value: edited", loc)
	case v.expect == 0 && r.Seq != 1:
		v.firstSeq, v.firstPrev = r.Seq, r.Prev
	case v.expect == 0:
	case r.Seq > v.expect:
		return v.fail("seq %d missing: deleted or reordered (found seq %d at %s)", v.expect, r.Seq, loc)
	case r.Seq < v.expect:
		return v.fail("record %d (%s) follows seq %d: reordered or duplicated", r.Seq, loc, v.expect-1)
	case r.Prev != v.prev:
		return v.fail("record %d (%s): prev does not match the hash of record %d: reordered or edited", r.Seq, loc, v.expect-1)
	}
	if r.Type == TypeRetention {
		if s, err := strconv.ParseUint(fieldString(r.Fields, "retained_from_seq"), 10, 64); err == nil {
			v.retained = append(v.retained, retMark{s, fieldString(r.Fields, "retained_from_prev")})
		}
	}
	v.expect, v.prev = r.Seq+1, r.Hash
	v.rep.Records++
	v.rep.HeadSeq, v.rep.Head = r.Seq, r.Hash
	return nil
}

func (v *verifier) badProblem() error {
	if v.bad.err == errTorn {
		return v.fail("file ends with a torn record: truncated (record %d, %s line %d)", v.expect, v.bad.atFile, v.bad.lineNo)
	}
	if v.expect == 0 {
		return v.fail("first record (%s line %d): %v", v.bad.atFile, v.bad.lineNo, v.bad.err)
	}
	return v.fail("record %d (%s line %d): %v", v.expect, v.bad.atFile, v.bad.lineNo, v.bad.err)
}

// Verify checks the whole chain in dir: rotated files in seq order, then
// audit.jsonl. Each line must be intact (its hash recomputes over its exact
// bytes), seq must increase by one and prev must equal the previous record's
// hash. Damaged lines are accepted only when followed by the gap record Open
// wrote for them (with a matching digest), and a missing oldest prefix only
// when a retention record vouches for it; both become Notes.
//
// A detected problem is reported in Report (OK false) with a nil error; the
// error is for I/O failures. Verify stops at the first problem.
func Verify(dir string) (Report, error) {
	segs, err := segments(dir)
	if err != nil {
		return Report{}, err
	}
	v := &verifier{}
	for _, p := range segs {
		name := filepath.Base(p)
		err := eachLine(p, func(n int, line []byte, torn bool) error { return v.line(name, n, line, torn) })
		if errors.Is(err, errStop) {
			return v.rep, nil
		}
		if err != nil {
			return v.rep, err
		}
	}
	if v.bad.lines > 0 {
		v.badProblem()
		return v.rep, nil
	}
	if v.firstSeq != 0 {
		ok := false
		for _, m := range v.retained {
			if m.seq > v.firstSeq || (m.seq == v.firstSeq && m.prev == v.firstPrev) {
				ok = true
			}
		}
		if !ok {
			v.fail("seq 1 to %d missing: oldest records deleted without a retention record", v.firstSeq-1)
			return v.rep, nil
		}
		v.rep.Notes = append(v.rep.Notes, fmt.Sprintf("seq 1 to %d removed by retention", v.firstSeq-1))
	}
	v.rep.OK = true
	return v.rep, nil
}

// Filter selects records for Search. Zero fields match everything.
type Filter struct {
	Since time.Time // records at or after Since
	User  string
	Type  string
	Limit int // if > 0, keep only the newest Limit matches
}

// Search returns intact records matching f, oldest first. It skips damaged
// lines and does not check the chain; use Verify for that. Numbers in
// Fields come back as json.Number, so large integers stay exact.
func Search(dir string, f Filter) ([]Record, error) {
	segs, err := segments(dir)
	if err != nil {
		return nil, err
	}
	var out []Record
	for _, p := range segs {
		err := eachLine(p, func(_ int, line []byte, torn bool) error {
			if torn {
				return nil
			}
			r, err := checkLine(line)
			if err != nil ||
				(f.User != "" && r.User != f.User) ||
				(f.Type != "" && r.Type != f.Type) ||
				(!f.Since.IsZero() && r.Time.Before(f.Since)) {
				return nil
			}
			out = append(out, r)
			if f.Limit > 0 && len(out) >= 2*f.Limit {
				out = append(out[:0], out[len(out)-f.Limit:]...)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	if f.Limit > 0 && len(out) > f.Limit {
		out = out[len(out)-f.Limit:]
	}
	return out, nil
}

// Tail returns the newest n intact records, oldest first.
func Tail(dir string, n int) ([]Record, error) {
	if n <= 0 {
		return nil, nil
	}
	return Search(dir, Filter{Limit: n})
}
