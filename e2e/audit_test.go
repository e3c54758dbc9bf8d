package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestAuditTrail(t *testing.T) {
	// A failed and a successful login, then the records.
	_, _ = psql(t, shared.dsn("user="+admin+" sslmode=require"), "wrong-password", "-c", "SELECT 1")
	if out, err := psql(t, shared.dsn("user="+admin+" sslmode=require channel_binding=require"), adminPassword, "-c", "SELECT 1"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	out := mustCLI(t, shared, "audit", "search", "--user", admin, "--event", "auth.failure", "-o", "json")
	if !strings.Contains(out, `"reason": "wrong password"`) {
		t.Fatalf("audit search for the failed login: %s", out)
	}
	out = mustCLI(t, shared, "audit", "search", "--user", admin, "--event", "session.start", "-o", "json")
	if !strings.Contains(out, `"SCRAM-SHA-256-PLUS"`) || !strings.Contains(out, `"TLS 1.3"`) || !strings.Contains(out, `"rule": "AllowLocalhost"`) {
		t.Fatalf("session.start records lack method, TLS version or the allowing rule: %s", out)
	}
	if strings.Contains(out, "wrong-password") || strings.Contains(out, adminPassword) {
		t.Fatalf("a password reached the audit log")
	}
	if out := mustCLI(t, shared, "audit", "verify"); !strings.Contains(out, "intact") {
		t.Fatalf("audit verify: %s", out)
	}

	// Tampering with a copy is detected and located.
	for _, tc := range []struct {
		name   string
		tamper func([]byte) []byte
		want   string
	}{
		{"edited", func(b []byte) []byte {
			return bytes.Replace(b, []byte(`"wrong password"`), []byte(`"right password"`), 1)
		}, `record \d+ \(audit\.jsonl line \d+\): hash mismatch: edited`},
		{"deleted", func(b []byte) []byte {
			lines := bytes.SplitAfter(b, []byte("\n"))
			return bytes.Join(append(lines[:1:1], lines[2:]...), nil)
		}, `seq \d+ missing: deleted or reordered \(found seq \d+ at audit\.jsonl line \d+\)`},
		{"truncated", func(b []byte) []byte { return b[:len(b)-10] }, `torn record: truncated \(record \d+, audit\.jsonl line \d+\)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.MkdirAll(filepath.Join(dir, "audit"), 0o700); err != nil {
				t.Fatal(err)
			}
			// The log is on the encrypted volume; the copy goes where a
			// server made before that kept it, which verify still reads.
			src := filepath.Join(shared.dataDir, "volume", "data", "audit", "audit.jsonl")
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "audit", "audit.jsonl"), tc.tamper(b), 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(pgshieldBin, "audit", "verify", "--data-dir", dir).CombinedOutput()
			if err == nil || !regexp.MustCompile(tc.want).Match(out) {
				t.Fatalf("audit verify after %s = %v %s; want failure naming the record: %s", tc.name, err, out, tc.want)
			}
		})
	}
}
