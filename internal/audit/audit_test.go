package audit

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock returns start, start+1s, ... on each call.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(time.Second)
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

var users = []string{"alice", "bob", "carol"}

func event(i int) Event {
	return Event{
		Type: []string{"session.start", "query"}[i%2], Outcome: OutcomeSuccess,
		Client: "10.0.0.1:5000", User: users[i%len(users)], Database: "app",
		Rule: "r1", Reason: fmt.Sprintf("event %d", i),
		Fields: map[string]any{"i": i, "sql": "SELECT 1", "big": uint64(1) << 60},
	}
}

// writeN opens dir, writes n events and closes it.
func writeN(t *testing.T, dir string, n int, opts ...Option) {
	t.Helper()
	l, err := Open(dir, opts...)
	if err != nil {
		t.Fatalf("Open(%q) error = %v", dir, err)
	}
	for i := range n {
		if err := l.Write(event(i)); err != nil {
			t.Fatalf("Write(%d) error = %v", i, err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatalf("Close() error = %v", err)
	}
}

func verifyOK(t *testing.T, dir string, records int) Report {
	t.Helper()
	rep, err := Verify(dir)
	if err != nil || !rep.OK || rep.Records != records {
		t.Fatalf("Verify(%q) = %+v, %v; want OK with %d records", dir, rep, err, records)
	}
	return rep
}

func readLines(t *testing.T, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.SplitAfter(b, []byte("\n"))
}

func writeLines(t *testing.T, path string, lines [][]byte) {
	t.Helper()
	if err := os.WriteFile(path, bytes.Join(lines, nil), 0o600); err != nil {
		t.Fatal(err)
	}
}

func cur(dir string) string { return filepath.Join(dir, currentName) }

func TestVerifyDetectsTampering(t *testing.T) {
	const n = 10
	tests := []struct {
		name    string
		opts    []Option
		mutate  func(t *testing.T, dir string)
		problem string // substring of Report.Problem; "" means OK
	}{
		{
			name:   "intact",
			mutate: func(*testing.T, string) {},
		},
		{
			name: "edited field",
			mutate: func(t *testing.T, dir string) {
				lines := readLines(t, cur(dir))
				i := bytes.Index(lines[4], []byte(`"user":"`)) + len(`"user":"`)
				lines[4][i]++ // one byte of record 5's user
				writeLines(t, cur(dir), lines)
			},
			problem: "record 5 (audit.jsonl line 5): hash mismatch: edited",
		},
		{
			name: "edited hash",
			mutate: func(t *testing.T, dir string) {
				lines := readLines(t, cur(dir))
				i := bytes.LastIndex(lines[2], []byte(`"hash":"`)) + len(`"hash":"`)
				lines[2][i] = 'x'
				writeLines(t, cur(dir), lines)
			},
			problem: "record 3 (audit.jsonl line 3): malformed record",
		},
		{
			name: "added key",
			mutate: func(t *testing.T, dir string) {
				lines := readLines(t, cur(dir))
				lines[6] = bytes.Replace(lines[6], []byte(`{"seq"`), []byte(`{"admin":true,"seq"`), 1)
				writeLines(t, cur(dir), lines)
			},
			problem: "record 7 (audit.jsonl line 7): hash mismatch: edited",
		},
		{
			name: "deleted line",
			mutate: func(t *testing.T, dir string) {
				lines := readLines(t, cur(dir))
				writeLines(t, cur(dir), append(lines[:3:3], lines[4:]...))
			},
			problem: "seq 4 missing: deleted or reordered",
		},
		{
			name: "deleted first line",
			mutate: func(t *testing.T, dir string) {
				writeLines(t, cur(dir), readLines(t, cur(dir))[1:])
			},
			problem: "seq 1 to 1 missing: oldest records deleted without a retention record",
		},
		{
			name: "swapped lines",
			mutate: func(t *testing.T, dir string) {
				lines := readLines(t, cur(dir))
				lines[5], lines[6] = lines[6], lines[5]
				writeLines(t, cur(dir), lines)
			},
			problem: "seq 6 missing: deleted or reordered",
		},
		{
			name: "duplicated line",
			mutate: func(t *testing.T, dir string) {
				lines := readLines(t, cur(dir))
				writeLines(t, cur(dir), append(lines[:6:6], lines[5:]...))
			},
			problem: "record 6 (audit.jsonl line 7) follows seq 6: reordered or duplicated",
		},
		{
			name: "truncated last line",
			mutate: func(t *testing.T, dir string) {
				st, err := os.Stat(cur(dir))
				if err != nil {
					t.Fatal(err)
				}
				if err := os.Truncate(cur(dir), st.Size()-40); err != nil {
					t.Fatal(err)
				}
			},
			problem: "file ends with a torn record: truncated",
		},
		{
			name: "garbage appended",
			mutate: func(t *testing.T, dir string) {
				lines := readLines(t, cur(dir))
				writeLines(t, cur(dir), append(lines, []byte("{\"seq\":11}\n")))
			},
			problem: "record 11 (audit.jsonl line 11): malformed record",
		},
		{
			name: "rotated intact",
			opts: []Option{WithMaxSize(1200)},
			mutate: func(t *testing.T, dir string) {
				if segs, _ := segments(dir); len(segs) < 3 {
					t.Fatalf("segments = %v; want >= 3 files", segs)
				}
			},
		},
		{
			name: "deleted middle rotated file",
			opts: []Option{WithMaxSize(1200)},
			mutate: func(t *testing.T, dir string) {
				segs, _ := segments(dir)
				if len(segs) < 3 {
					t.Fatalf("segments = %v; want >= 3 files", segs)
				}
				if err := os.Remove(segs[1]); err != nil {
					t.Fatal(err)
				}
			},
			problem: "missing: deleted or reordered",
		},
		{
			name: "deleted oldest rotated file",
			opts: []Option{WithMaxSize(1200)},
			mutate: func(t *testing.T, dir string) {
				segs, _ := segments(dir)
				if err := os.Remove(segs[0]); err != nil {
					t.Fatal(err)
				}
			},
			problem: "missing: oldest records deleted without a retention record",
		},
		{
			name: "swapped rotated file names",
			opts: []Option{WithMaxSize(1200)},
			mutate: func(t *testing.T, dir string) {
				segs, _ := segments(dir)
				tmp := segs[0] + ".tmp"
				for _, mv := range [][2]string{{segs[0], tmp}, {segs[1], segs[0]}, {tmp, segs[1]}} {
					if err := os.Rename(mv[0], mv[1]); err != nil {
						t.Fatal(err)
					}
				}
			},
			problem: "reordered",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeN(t, dir, n, append(tt.opts, WithClock(newClock().Now))...)
			tt.mutate(t, dir)
			rep, err := Verify(dir)
			if err != nil {
				t.Fatalf("Verify() error = %v", err)
			}
			if tt.problem == "" {
				if !rep.OK || rep.Records != n || rep.HeadSeq != n {
					t.Fatalf("Verify() = %+v; want OK with %d records", rep, n)
				}
				return
			}
			if rep.OK || !strings.Contains(rep.Problem, tt.problem) {
				t.Fatalf("Verify() = %+v; want failure containing %q", rep, tt.problem)
			}
		})
	}
}

func TestFilePermissions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "audit")
	writeN(t, dir, 1)
	for path, want := range map[string]os.FileMode{dir: 0o700, cur(dir): 0o600} {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := st.Mode().Perm(); got != want {
			t.Errorf("mode of %s = %v; want %v", path, got, want)
		}
	}
}

func TestRecordLayout(t *testing.T) {
	dir := t.TempDir()
	writeN(t, dir, 2, WithClock(newClock().Now))
	lines := readLines(t, cur(dir))
	if !bytes.HasPrefix(lines[0], []byte(`{"seq":1,"prev":"`+zeroHash+`","time":"2026-01-02T03:04:06Z","type":"session.start"`)) {
		t.Errorf("line 1 = %s; want seq 1 with genesis prev first", lines[0])
	}
	r1, err := checkLine(bytes.TrimSuffix(lines[0], []byte("\n")))
	if err != nil {
		t.Fatal(err)
	}
	// hash = SHA-256 of the line without its hash field.
	body := strings.Replace(string(bytes.TrimSuffix(lines[0], []byte("\n"))), `,"hash":"`+r1.Hash+`"`, "", 1)
	if got := hashHex([]byte(body)); got != r1.Hash {
		t.Errorf("hash = %s; want sha256(%s) = %s", r1.Hash, body, got)
	}
	if !bytes.Contains(lines[1], []byte(`"prev":"`+r1.Hash+`"`)) {
		t.Errorf("line 2 = %s; want prev %s", lines[1], r1.Hash)
	}
	if bytes.Contains(lines[0], []byte(`"outcome":""`)) || !bytes.Contains(lines[0], []byte(`"big":1152921504606846976`)) {
		t.Errorf("line 1 = %s; want empty fields omitted and integers exact", lines[0])
	}
}

func TestReopenResumesChain(t *testing.T) {
	dir := t.TempDir()
	writeN(t, dir, 5, WithMaxSize(1000))
	writeN(t, dir, 5, WithMaxSize(1000))
	verifyOK(t, dir, 10)
	recs, err := Tail(dir, 3)
	if err != nil || len(recs) != 3 || recs[2].Seq != 10 || recs[0].Seq != 8 {
		t.Fatalf("Tail(3) = %+v, %v; want seqs 8..10", recs, err)
	}
}

func TestReopenAfterTornLine(t *testing.T) {
	for _, tt := range []struct {
		name string
		cut  int64 // bytes cut from the end
		keep int   // intact records left
	}{
		{name: "mid line", cut: 30, keep: 4},
		{name: "cut before newline", cut: 2, keep: 4},
		{name: "whole file torn", cut: -1, keep: 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			n := 5
			if tt.keep == 0 {
				n = 1
			}
			writeN(t, dir, n)
			st, _ := os.Stat(cur(dir))
			cut := tt.cut
			if cut < 0 {
				cut = st.Size() / 2
			}
			if err := os.Truncate(cur(dir), st.Size()-cut); err != nil {
				t.Fatal(err)
			}
			if rep, _ := Verify(dir); rep.OK || !strings.Contains(rep.Problem, "truncated") {
				t.Fatalf("Verify() before reopen = %+v; want truncated", rep)
			}
			writeN(t, dir, 2)
			rep := verifyOK(t, dir, tt.keep+3)
			if len(rep.Notes) != 1 || !strings.Contains(rep.Notes[0], "sealed by gap record") {
				t.Errorf("Verify() notes = %q; want one gap note", rep.Notes)
			}
			gaps, err := Search(dir, Filter{Type: TypeGap})
			if err != nil || len(gaps) != 1 || gaps[0].Seq != uint64(tt.keep+1) || !strings.Contains(gaps[0].Reason, "truncated") {
				t.Fatalf("Search(gap) = %+v, %v; want one gap record at seq %d", gaps, err, tt.keep+1)
			}
			if _, err := os.Stat(filepath.Join(dir, "audit-1.jsonl")); err != nil {
				t.Errorf("damaged segment not rotated: %v", err)
			}

			// The damaged bytes are covered by the gap record's digest.
			segs, _ := segments(dir)
			b, _ := os.ReadFile(segs[0])
			i := bytes.Index(b, []byte(`"type":"audit.gap"`))
			j := bytes.LastIndex(b[:i], []byte("\n{\"seq\""))
			if j < 0 {
				j = 0
			}
			if j+10 < len(b) {
				b[j+10] ^= 1
			}
			if err := os.WriteFile(segs[0], b, 0o600); err != nil {
				t.Fatal(err)
			}
			if rep, _ := Verify(dir); rep.OK {
				t.Errorf("Verify() after editing sealed bytes = %+v; want failure", rep)
			}
		})
	}
}

func TestReopenAfterMissingNewline(t *testing.T) {
	dir := t.TempDir()
	writeN(t, dir, 3)
	st, _ := os.Stat(cur(dir))
	if err := os.Truncate(cur(dir), st.Size()-1); err != nil {
		t.Fatal(err)
	}
	if rep, _ := Verify(dir); rep.OK || !strings.Contains(rep.Problem, "truncated") {
		t.Fatalf("Verify() = %+v; want truncated", rep)
	}
	writeN(t, dir, 2)
	if rep := verifyOK(t, dir, 5); len(rep.Notes) != 0 {
		t.Errorf("Verify() notes = %q; want none (record 3 was intact)", rep.Notes)
	}
}

func TestConcurrentWriters(t *testing.T) {
	before := runtime.NumGoroutine()
	dir := t.TempDir()
	l, err := Open(dir, WithMaxSize(4096))
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 8, 50
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				if err := l.Write(event(w*each + i)); err != nil {
					t.Errorf("Write() error = %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Write(event(0)); err != ErrClosed {
		t.Errorf("Write() after Close error = %v; want ErrClosed", err)
	}
	verifyOK(t, dir, writers*each)
	if segs, _ := segments(dir); len(segs) < 3 {
		t.Errorf("segments = %d; want rotation", len(segs))
	}
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := runtime.NumGoroutine(); got > before {
		t.Errorf("goroutines = %d after Close; want <= %d (leak)", got, before)
	}
}

func TestRetention(t *testing.T) {
	dir := t.TempDir()
	clk := newClock()
	opts := []Option{WithMaxSize(1200), WithRetention(time.Hour), WithClock(clk.Now)}
	l, err := Open(dir, opts...)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if err := l.Write(event(i)); err != nil {
			t.Fatal(err)
		}
	}
	before, _ := segments(dir)
	clk.Advance(2 * time.Hour)
	for i := range 6 {
		if err := l.Write(event(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	after, _ := segments(dir)
	ret, err := Search(dir, Filter{Type: TypeRetention})
	if err != nil || len(ret) == 0 {
		t.Fatalf("Search(retention) = %+v, %v; want a retention record", ret, err)
	}
	if _, err := os.Stat(before[0]); err == nil {
		t.Fatalf("segments %v -> %v; want the oldest deleted", before, after)
	}
	rep, err := Verify(dir)
	if err != nil || !rep.OK || len(rep.Notes) == 0 || !strings.Contains(rep.Notes[len(rep.Notes)-1], "removed by retention") {
		t.Fatalf("Verify() = %+v, %v; want OK with a retention note", rep, err)
	}
	// Deleting one more file than the policy did is still caught.
	if len(after) < 2 {
		t.Fatalf("segments = %v; want >= 2", after)
	}
	if err := os.Remove(after[0]); err != nil {
		t.Fatal(err)
	}
	if rep, _ := Verify(dir); rep.OK || !strings.Contains(rep.Problem, "without a retention record") {
		t.Fatalf("Verify() after extra deletion = %+v; want failure", rep)
	}
}

func TestSearch(t *testing.T) {
	dir := t.TempDir()
	clk := newClock()
	writeN(t, dir, 12, WithClock(clk.Now), WithMaxSize(2000))
	all, err := Search(dir, Filter{})
	if err != nil || len(all) != 12 {
		t.Fatalf("Search({}) = %d records, %v; want 12", len(all), err)
	}
	tests := []struct {
		name string
		f    Filter
		want []uint64
	}{
		{"user", Filter{User: "bob"}, []uint64{2, 5, 8, 11}},
		{"type", Filter{Type: "query"}, []uint64{2, 4, 6, 8, 10, 12}},
		{"user and type", Filter{User: "alice", Type: "query"}, []uint64{4, 10}},
		{"since", Filter{Since: all[9].Time}, []uint64{10, 11, 12}},
		{"limit keeps newest", Filter{User: "carol", Limit: 2}, []uint64{9, 12}},
		{"no match", Filter{User: "mallory"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			recs, err := Search(dir, tt.f)
			if err != nil {
				t.Fatal(err)
			}
			var got []uint64
			for _, r := range recs {
				got = append(got, r.Seq)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("Search(%+v) seqs = %v; want %v", tt.f, got, tt.want)
			}
		})
	}
	if all[3].Fields["sql"] != "SELECT 1" || all[3].Hash == "" || all[3].Prev != all[2].Hash {
		t.Errorf("Search record 4 = %+v; want fields and chain hashes", all[3])
	}
}

func TestWriteRejectsBadEvent(t *testing.T) {
	dir := t.TempDir()
	l, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Write(Event{Fields: map[string]any{"f": func() {}}}); err == nil {
		t.Fatal("Write(func field) error = nil; want error")
	}
	if err := l.Write(event(1)); err != nil {
		t.Fatalf("Write() after bad event error = %v; want nil", err)
	}
	if seq, _ := l.Head(); seq != 1 {
		t.Errorf("Head() seq = %d; want 1", seq)
	}
}

func TestRedact(t *testing.T) {
	jwt := "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
	tests := []struct{ in, want string }{
		{"CREATE ROLE a LOGIN PASSWORD 'hunter2'", "CREATE ROLE a LOGIN PASSWORD <redacted>"},
		{"alter user a with encrypted password 'it''s' valid until 'x'", "alter user a with encrypted password <redacted> valid until 'x'"},
		{`ALTER ROLE a PASSWORD "dq"`, `ALTER ROLE a PASSWORD <redacted>`},
		{`ALTER ROLE a PASSWORD E'a\'b' LOGIN`, `ALTER ROLE a PASSWORD <redacted> LOGIN`},
		{"ALTER ROLE a PASSWORD $$s3cret$$;", "ALTER ROLE a PASSWORD <redacted>;"},
		{"ALTER ROLE a PASSWORD 'unterminated", "ALTER ROLE a PASSWORD <redacted>"},
		{"ALTER ROLE a PaSsWoRd\n 'x'", "ALTER ROLE a PaSsWoRd\n <redacted>"},
		{"token " + jwt + " end", "token <redacted> end"},
		{"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=", "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=<redacted>"},
		// Negative cases: ordinary SQL is left alone.
		{"SELECT password FROM users WHERE name = 'bob'", "SELECT password FROM users WHERE name = 'bob'"},
		{"SELECT 'eyJ' || x.y FROM t", "SELECT 'eyJ' || x.y FROM t"},
		{"ALTER ROLE a PASSWORD NULL", "ALTER ROLE a PASSWORD NULL"},
		{"SELECT c=1, p=2 FROM t", "SELECT c=1, p=2 FROM t"},
		{"ALTER ROLE password RENAME TO x", "ALTER ROLE password RENAME TO x"},
		// A failed statement: unquoted, or a literal too many.
		{"ALTER ROLE x PASSWORD Unique-Secret-42 LOGIN", "ALTER ROLE x PASSWORD <redacted> LOGIN"},
		{"ALTER ROLE x WITH PASSWORD 'a' 'Unique-Secret-42'; SELECT 1", "ALTER ROLE x WITH PASSWORD <redacted>; SELECT 1"},
		{"statement: alter user u password 'SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy'", "statement: alter user u password <redacted>"},
		{"SET x = 1; /* password 'in comment' */ SELECT 1", "SET x = 1; /* password <redacted> */ SELECT 1"},
		{"SELECT pgp_sym_encrypt(data, 'k3y-material') FROM t", "SELECT pgp_sym_encrypt(data, <redacted>) FROM t"},
		{"SELECT dblink_connect('host=x password=s3cr3t dbname=y')", "SELECT dblink_connect('host=x password=<redacted> dbname=y')"},
		{"UPDATE users SET password = 'hunter22' WHERE id = 1", "UPDATE users SET password = <redacted> WHERE id = 1"},
		{"CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password 'mapping-pw')", "CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password <redacted>)"},
		{`{"user": "bob", "password": "a\"b"}`, `{"user": "bob", "password": <redacted>}`},
		{"Authorization: Bearer abcdefghijklmnop", "Authorization: Bearer <redacted>"},
		{"k -----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY----- ok", "k <redacted> ok"},
		{"verifier md5" + strings.Repeat("0a", 16) + " end", "verifier <redacted> end"},
		{":defname password :arg \"pw\" :location 20", ":defname password :arg <redacted> :location 20"},
		// Prose with an apostrophe still loses the password.
		{"can't set password 'Unique-Secret-42' here", "can't set password <redacted> here"},
	}
	for _, tt := range tests {
		if got := Redact(tt.in); got != tt.want {
			t.Errorf("Redact(%q) = %q; want %q", tt.in, got, tt.want)
		}
	}
}
