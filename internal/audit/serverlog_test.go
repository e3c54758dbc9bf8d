package audit

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

type eventSink struct {
	mu sync.Mutex
	es []Event
}

func (s *eventSink) add(es []Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.es = append(s.es, es...)
}

func (s *eventSink) all() []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Event(nil), s.es...)
}

// TestServerLogPipes drives the pipes as PostgreSQL's syslogger does: it
// opens them with O_APPEND, reopens them on rotation, writes and exits; no
// line may be lost and nothing may be written to a file.
func TestServerLogPipes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pglog")
	// A plain file where a pipe belongs is replaced.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ServerLogName), []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	var sink eventSink
	sl := &ServerLog{Dir: dir, UID: os.Getuid(), GID: os.Getgid(), Sink: sink.add, MaxLine: 4096}
	if err := sl.Start(); err != nil {
		t.Fatalf("Start() error = %v", err)
	}
	for _, name := range []string{ServerLogName, JSONLogName()} {
		st, err := os.Lstat(filepath.Join(dir, name))
		if err != nil || st.Mode()&os.ModeNamedPipe == 0 || st.Mode().Perm() != 0o600 {
			t.Fatalf("Lstat(%s) = %v, %v; want a 0600 named pipe", name, st, err)
		}
	}
	openW := func(name string) *os.File {
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	js := openW(JSONLogName())
	errf := openW(ServerLogName)
	const n = 2000
	for i := range n {
		if i == n/2 {
			// Rotation: open the new handle, then close the old one.
			next := openW(JSONLogName())
			js.Close()
			js = next
		}
		if _, err := js.WriteString(`{"error_severity":"LOG","message":"AUDIT: SESSION,1,1,READ,SELECT,,,select ` + strings.Repeat("x", i%50) + `,<none>","func_name":"log_audit_event","file_name":"pgaudit.c"}` + "\n"); err != nil {
			t.Fatal(err)
		}
	}
	// An oversized line is dropped with a record saying who wrote it and
	// what it began as (a pgaudit record padded past the limit must not
	// vanish unattributed); the secret in it is not kept; the next line is.
	js.WriteString(`{"timestamp":"2026-12-06 10:00:00.000 UTC","user":"t1","dbname":"postgres","pid":4242,` +
		`"remote_host":"10.77.5.2","remote_port":51234,"error_severity":"LOG","message":"AUDIT: OBJECT,1,1,READ,SELECT,TABLE,payroll.salaries,` +
		`select 1 /* PASSWORD 'Unique-Secret-42' ` + strings.Repeat("y", 10000) + ` */,<none>"}` + "\n")
	js.WriteString(`{"error_severity":"ERROR","message":"after the long line","statement":"ALTER ROLE r PASSWORD 'Unique-Secret-42'"}` + "\n")
	errf.WriteString("raw stderr with password 'Unique-Secret-42'\n")
	sl.Stderr().WriteString("FATAL:  bad config\n")
	js.Close()
	errf.Close()
	if err := sl.Stop(5 * time.Second); err != nil {
		t.Fatalf("Stop() error = %v", err)
	}
	es := sink.all()
	var audits, dropped, after, stderr int
	for _, e := range es {
		switch {
		case e.Type == TypePostgresAudit:
			audits++
		case e.Type == TypePostgresOversized:
			dropped++
			if e.User != "t1" || e.Client != "10.77.5.2:51234" || e.Database != "postgres" ||
				e.Fields["audit_type"] != "OBJECT" || e.Fields["pid"] != int64(4242) || e.Fields["bytes"] == nil {
				t.Errorf("oversized record = %+v; want t1 at 10.77.5.2:51234 in postgres, pgaudit OBJECT, pid 4242, its size", e)
			}
			if b, _ := json.Marshal(e); strings.Contains(string(b), "Unique-Secret-42") {
				t.Errorf("oversized record %s carries the secret", b)
			}
		case e.Reason == "after the long line":
			after++
			if e.Fields["statement"] != "ALTER ROLE r PASSWORD <redacted>" {
				t.Errorf("statement = %v; want redacted", e.Fields["statement"])
			}
		case e.Type == TypePostgresStderr:
			stderr++
			if strings.Contains(e.Reason, "Unique-Secret-42") {
				t.Errorf("stderr event %q carries the secret", e.Reason)
			}
		}
	}
	if audits != n || dropped != 1 || after != 1 || stderr != 2 {
		t.Errorf("events: %d pgaudit, %d dropped-line notes, %d after, %d stderr; want %d, 1, 1, 2", audits, dropped, after, stderr, n)
	}
	if !strings.Contains(sl.Tail(), "FATAL:  bad config") {
		t.Errorf("Tail() = %q; want the stderr line", sl.Tail())
	}
}

// TestServerLogStopWithWriter: a writer that never goes away does not make
// Stop hang.
func TestServerLogStopWithWriter(t *testing.T) {
	dir := t.TempDir()
	var sink eventSink
	sl := &ServerLog{Dir: dir, UID: os.Getuid(), GID: os.Getgid(), Sink: sink.add}
	if err := sl.Start(); err != nil {
		t.Fatal(err)
	}
	w, err := os.OpenFile(filepath.Join(dir, JSONLogName()), os.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	start := time.Now()
	if err := sl.Stop(300 * time.Millisecond); err == nil {
		t.Error("Stop() with a live writer error = nil; want a timeout error")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Stop() took %s", d)
	}
}

// ParseOversizedHead takes any first bytes: cut anywhere, not JSON, a
// message key inside a string. It attributes only what parses.
func TestParseOversizedHead(t *testing.T) {
	now := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	full := `{"timestamp":"2026-12-06 10:00:00.000 UTC","user":"u","dbname":"d","pid":7,"remote_host":"[local]",` +
		`"error_severity":"ERROR","state_code":"42501","message":"permission denied`
	for _, tt := range []struct {
		name, head, user, sqlstate string
	}{
		{"whole head", full, "u", "42501"},
		{"cut before the message", full[:40], "", ""},
		{"not JSON", `garbage,"message":"x`, "", ""},
		{"empty", ``, "", ""},
		{"message key in a value", `{"user":"a,\"message\":\"b","message":"AUDIT: OBJECT,`, `a,"message":"b`, ""},
	} {
		e := ParseOversizedHead([]byte(tt.head), 1<<25, now)
		if e.Type != TypePostgresOversized || e.User != tt.user || (e.Fields["sqlstate"] != nil) != (tt.sqlstate != "") {
			t.Errorf("%s: ParseOversizedHead = %+v; want user %q, sqlstate %q", tt.name, e, tt.user, tt.sqlstate)
		}
		if e.Client != "" {
			t.Errorf("%s: client = %q; want none ([local] or unknown)", tt.name, e.Client)
		}
	}
}
