package audit

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"time"
)

// followPoll is how often Follow looks for new records.
const followPoll = 250 * time.Millisecond

// maxFollowLine bounds one line Follow holds while it waits for the rest.
const maxFollowLine = 16 << 20

// Follow calls fn for every record appended to the log in dir after the
// record afterSeq, in order, until ctx ends: `audit tail -f`. It follows the
// current file across rotation (the file is renamed and a new one begun) and
// waits out a log that is briefly absent (a locked volume).
func Follow(ctx context.Context, dir string, afterSeq uint64, fn func(Record) error) error {
	path := filepath.Join(dir, currentName)
	var f *os.File
	var r *bufio.Reader
	var partial []byte
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	tick := time.NewTicker(followPoll)
	defer tick.Stop()
	deliver := func(line []byte) error {
		rec, err := checkLine(line)
		if err != nil || rec.Seq <= afterSeq {
			return nil // verify reports damage; following skips it
		}
		afterSeq = rec.Seq
		return fn(rec)
	}
	rotated := false
	for {
		if rotated {
			// Records may have gone through whole segments between two
			// polls: read the rotated ones first (rare: one per rotation).
			segs, err := segments(dir)
			if err != nil {
				return err
			}
			for _, p := range segs {
				if filepath.Base(p) == currentName {
					continue
				}
				if err := eachLine(p, func(_ int, line []byte, torn bool) error {
					if torn {
						return nil
					}
					return deliver(line)
				}); err != nil && !errors.Is(err, os.ErrNotExist) {
					return err
				}
			}
			rotated = false
		}
		if f == nil {
			nf, err := os.Open(path)
			if err == nil {
				f, r, partial = nf, bufio.NewReader(nf), nil
			} else if !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
		if f != nil {
			for {
				chunk, err := r.ReadBytes('\n')
				partial = append(partial, chunk...)
				if len(partial) > maxFollowLine {
					return errors.New("audit: a record longer than 16 MiB")
				}
				if err == io.EOF {
					break // a line still being written stays in partial
				}
				if err != nil {
					return err
				}
				line := bytes.TrimSuffix(partial, []byte("\n"))
				partial = nil
				if err := deliver(line); err != nil {
					return err
				}
			}
			// Rotated away (or recreated): finish this file, then switch.
			if cur, err := os.Stat(path); err != nil || !sameOpenFile(f, cur) {
				f.Close()
				f, rotated = nil, true
				continue
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func sameOpenFile(f *os.File, fi os.FileInfo) bool {
	st, err := f.Stat()
	return err == nil && os.SameFile(st, fi)
}
