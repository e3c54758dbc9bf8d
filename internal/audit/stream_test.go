package audit

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

func newTestStream(t *testing.T, cfg StreamConfig) *Stream {
	t.Helper()
	root := t.TempDir()
	if cfg.Dir == "" {
		cfg.Dir = filepath.Join(root, "volume", "audit")
	}
	if cfg.SpillDir == "" {
		cfg.SpillDir = filepath.Join(root, "audit")
	}
	if cfg.RetryInterval == 0 {
		cfg.RetryInterval = 20 * time.Millisecond
	}
	s, err := NewStream(cfg)
	if err != nil {
		t.Fatalf("NewStream() error = %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func types(t *testing.T, dir string) []string {
	t.Helper()
	rs, err := Search(dir, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rs {
		out = append(out, r.Type+":"+r.Reason)
	}
	return out
}

func ev(name string) Event { return Event{Type: "test", Reason: name} }

// TestStreamLockedVolume: events while detached (the volume locked) are
// written, in order and chained, after the next Attach.
func TestStreamLockedVolume(t *testing.T) {
	s := newTestStream(t, StreamConfig{})
	if err := s.Attach(); err != nil {
		t.Fatal(err)
	}
	s.Write(ev("a"))
	if err := s.Detach(); err != nil {
		t.Fatal(err)
	}
	// Nothing of the log stays open while detached.
	if fds, _ := filepath.Glob("/proc/self/fd/*"); true {
		for _, fd := range fds {
			if target, _ := os.Readlink(fd); strings.HasPrefix(target, s.cfg.Dir) {
				t.Errorf("fd %s still open on %s after Detach", fd, target)
			}
		}
	}
	if err := s.Healthy(); err != nil {
		t.Errorf("Healthy() while detached = %v; want nil (buffering by design)", err)
	}
	s.Write(ev("b"))
	s.WriteBatch([]Event{ev("c"), ev("d")})
	if err := s.Attach(); err != nil {
		t.Fatal(err)
	}
	s.Write(ev("e"))
	got := strings.Join(types(t, s.cfg.Dir), " ")
	if got != "test:a test:b test:c test:d test:e" {
		t.Errorf("records = %s; want a..e in order", got)
	}
	verifyOK(t, s.cfg.Dir, 5)
}

// TestStreamOverflow: what does not fit in memory is counted and marked by
// a gap record; the chain still verifies.
func TestStreamOverflow(t *testing.T) {
	s := newTestStream(t, StreamConfig{MaxBuffered: 2})
	s.Write(ev("a"))
	s.Write(ev("b"))
	if err := s.Write(ev("c")); err == nil {
		t.Error("Write() beyond the buffer error = nil; want an error")
	}
	s.Write(ev("d"))
	if err := s.Attach(); err != nil {
		t.Fatal(err)
	}
	rs, _ := Search(s.cfg.Dir, Filter{})
	if len(rs) != 3 || rs[0].Type != TypeGap || fieldString(rs[0].Fields, "dropped") != "2" ||
		rs[1].Reason != "a" || rs[2].Reason != "b" {
		t.Errorf("records = %v; want a gap record (2 dropped), a, b", types(t, s.cfg.Dir))
	}
	verifyOK(t, s.cfg.Dir, 3)
}

// TestStreamWriteFailure makes the live file immutable (a real EPERM from
// ext4 on every write), then writable again: Healthy reports the outage,
// events wait in memory, and a gap record precedes them once the retry
// succeeds.
func TestStreamWriteFailure(t *testing.T) {
	chattr, err := exec.LookPath("chattr")
	if err != nil || os.Geteuid() != 0 {
		t.Skip("needs root and chattr")
	}
	s := newTestStream(t, StreamConfig{})
	if err := s.Attach(); err != nil {
		t.Fatal(err)
	}
	s.Write(ev("before"))
	live := filepath.Join(s.cfg.Dir, currentName)
	if out, err := exec.Command(chattr, "+i", live).CombinedOutput(); err != nil {
		t.Skipf("chattr +i: %v %s (file system without attributes?)", err, out)
	}
	t.Cleanup(func() { exec.Command(chattr, "-i", live).Run() })
	if err := s.Write(ev("during")); err != nil {
		t.Errorf("Write() during the outage error = %v; want nil (buffered)", err)
	}
	if err := s.Healthy(); !errors.Is(err, ErrSinkUnavailable) {
		t.Fatalf("Healthy() during the outage = %v; want ErrSinkUnavailable", err)
	}
	time.Sleep(100 * time.Millisecond) // retries keep failing
	if err := s.Healthy(); err == nil {
		t.Fatal("Healthy() = nil while the file is still immutable")
	}
	if out, err := exec.Command(chattr, "-i", live).CombinedOutput(); err != nil {
		t.Fatalf("chattr -i: %v %s", err, out)
	}
	deadline := time.Now().Add(5 * time.Second)
	for s.Healthy() != nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := s.Healthy(); err != nil {
		t.Fatalf("Healthy() after recovery = %v", err)
	}
	s.Write(ev("after"))
	rs, _ := Search(s.cfg.Dir, Filter{})
	if len(rs) != 4 || rs[0].Reason != "before" || rs[1].Type != TypeGap || fieldString(rs[1].Fields, "kind") != "outage" ||
		rs[2].Reason != "during" || rs[3].Reason != "after" {
		t.Errorf("records = %v; want before, gap (outage), during, after", types(t, s.cfg.Dir))
	}
	verifyOK(t, s.cfg.Dir, 4)
}

// TestStreamAttachFailure: a log directory that cannot be created is
// retried until it can.
func TestStreamAttachFailure(t *testing.T) {
	root := t.TempDir()
	blocker := filepath.Join(root, "volume")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s := newTestStream(t, StreamConfig{Dir: filepath.Join(blocker, "audit")})
	s.Write(ev("early"))
	if err := s.Attach(); err == nil {
		t.Fatal("Attach() under a file error = nil")
	}
	if s.Healthy() == nil {
		t.Fatal("Healthy() = nil after a failed Attach")
	}
	os.Remove(blocker)
	deadline := time.Now().Add(5 * time.Second)
	for s.Healthy() != nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := types(t, s.cfg.Dir); len(got) != 2 || !strings.HasPrefix(got[0], TypeGap) || got[1] != "test:early" {
		t.Errorf("records = %v; want gap, early", got)
	}
}

// TestStreamSpill: events still buffered at Close survive, outside the
// volume, until the next Stream writes them.
func TestStreamSpill(t *testing.T) {
	root := t.TempDir()
	cfg := StreamConfig{Dir: filepath.Join(root, "vol", "audit"), SpillDir: filepath.Join(root, "audit")}
	s1 := newTestStream(t, cfg)
	s1.Write(Event{Type: "test", Reason: "while locked", Fields: map[string]any{"n": 1}})
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(cfg.SpillDir, PendingName))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("pending file: %v %v; want 0600", st, err)
	}
	s2 := newTestStream(t, cfg)
	s2.Write(ev("next start"))
	if err := s2.Attach(); err != nil {
		t.Fatal(err)
	}
	if got := types(t, cfg.Dir); fmt.Sprint(got) != "[test:while locked test:next start]" {
		t.Errorf("records = %v", got)
	}
	if _, err := os.Stat(filepath.Join(cfg.SpillDir, PendingName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pending file still there after the flush: %v", err)
	}
}

// TestStreamMigrate: a log kept outside the volume by an older server is
// moved in and its chain continues.
func TestStreamMigrate(t *testing.T) {
	root := t.TempDir()
	cfg := StreamConfig{Dir: filepath.Join(root, "vol", "audit"), SpillDir: filepath.Join(root, "audit"),
		Options: []Option{WithMaxSize(600)}}
	writeN(t, cfg.SpillDir, 6, WithMaxSize(600)) // several rotated files
	before, _ := segments(cfg.SpillDir)
	if len(before) < 2 {
		t.Fatalf("want rotated files, have %v", before)
	}
	s := newTestStream(t, cfg)
	if err := s.Attach(); err != nil {
		t.Fatal(err)
	}
	s.Write(ev("after the move"))
	if left, _ := segments(cfg.SpillDir); len(left) != 0 {
		t.Errorf("files left in the old directory: %v", left)
	}
	verifyOK(t, cfg.Dir, 7)
}

func TestFormat5424(t *testing.T) {
	line := []byte(`{"seq":7,"prev":"00","time":"2026-01-02T03:04:05.123456789Z","type":"auth.failure","outcome":"failure","hash":"ab"}`)
	got := string(Format5424(7, line, "db1", 42, time.Now()))
	want := `<108>1 2026-01-02T03:04:05.123456Z db1 pgshield 42 auth.failure [meta sequenceId="7"] ` + string(line)
	if got != want {
		t.Errorf("Format5424() =\n%s\nwant\n%s", got, want)
	}
}

func TestParseSyslogURL(t *testing.T) {
	for in, ok := range map[string]bool{
		"udp://127.0.0.1:514": true, "tcp://[::1]:6514": true, "unix:///dev/log": true,
		"udp://127.0.0.1": false, "http://x:1": false, "unix://dev/log": false, "tcp://:514": false, "udp://h:0": false,
	} {
		if _, _, err := ParseSyslogURL(in); (err == nil) != ok {
			t.Errorf("ParseSyslogURL(%q) error = %v; want ok=%v", in, err, ok)
		}
	}
}

// rfc5424RE is the header RFC 5424 section 6 requires, with our MSG.
var rfc5424RE = regexp.MustCompile(`^<(\d{1,3})>1 \S+ \S+ pgshield \d+ \S+ \[meta sequenceId="(\d+)"\] (\{.*\})$`)

func TestForwarderUDPAndTCP(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	s := newTestStream(t, StreamConfig{})
	f, err := NewForwarder("udp://"+pc.LocalAddr().String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	s.SetForwarder(f)
	if err := s.Attach(); err != nil {
		t.Fatal(err)
	}
	s.Write(Event{Type: "auth.failure", Outcome: OutcomeFailure, User: "bob"})
	_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 70000)
	n, _, err := pc.ReadFrom(buf)
	if err != nil {
		t.Fatalf("no datagram: %v", err)
	}
	m := rfc5424RE.FindStringSubmatch(string(buf[:n]))
	if m == nil || m[1] != "108" || m[2] != "1" || !strings.Contains(m[3], `"user":"bob"`) {
		t.Errorf("datagram %q is not the expected RFC 5424 message", buf[:n])
	}
	f.Close()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f2, err := NewForwarder("tcp://"+ln.Addr().String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f2.Close()
	s.SetForwarder(f2)
	s.Write(Event{Type: "session.start", User: "carol"})
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	count, err := br.ReadString(' ')
	if err != nil {
		t.Fatalf("octet count: %v", err)
	}
	size, err := strconv.Atoi(strings.TrimSpace(count))
	if err != nil {
		t.Fatalf("octet count %q: %v", count, err)
	}
	msg := make([]byte, size)
	if _, err := io.ReadFull(br, msg); err != nil {
		t.Fatal(err)
	}
	if m := rfc5424RE.FindStringSubmatch(string(msg)); m == nil || m[2] != "2" || !strings.Contains(m[3], `"user":"carol"`) {
		t.Errorf("TCP message %q is not the expected RFC 5424 message", msg)
	}
}
