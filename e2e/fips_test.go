package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFIPSMode runs a server with Go's cryptography in its FIPS 140-3
// module: TLS, SCRAM and the wrapping of the data key still work, status
// says FIPS is on, and the system-managed key wraps with AES-256-GCM.
func TestFIPSMode(t *testing.T) {
	s, err := newServerEnv("fips", []string{"GODEBUG=fips140=on"})
	if s != nil {
		defer s.stop()
	}
	if err != nil {
		t.Fatal(err)
	}
	if st := s.status(t); st["fips140"] != true {
		t.Fatalf("status fips140 = %v; want true", st["fips140"])
	}
	if out := mustCLI(t, s, "status"); !strings.Contains(out, "fips140") || !strings.Contains(out, "on (Go cryptography") {
		t.Errorf("status table does not say FIPS is on:\n%s", out)
	}
	out, err := psql(t, s.dsn("user="+admin+" sslmode=verify-full channel_binding=require"), adminPassword, "-c", "SELECT 1")
	if err != nil || out != "1" {
		t.Fatalf("TLS + SCRAM-SHA-256-PLUS login in FIPS mode = %q, %v", out, err)
	}
	b, err := os.ReadFile(filepath.Join(s.dataDir, "secrets", "volume-key.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "cGdzaC1nY2") { // base64 of "pgsh-gc", then bytes of the nonce
		var v map[string]any
		_ = json.Unmarshal(b, &v)
		t.Errorf("the wrapped data key is not AES-256-GCM-wrapped: %v", v)
	}
	// Lock and unlock go through the same unwrap.
	mustCLI(t, s, "key", "lock")
	mustCLI(t, s, "key", "unlock")
	if out, err := psql(t, s.dsn("user="+admin+" sslmode=verify-full"), adminPassword, "-c", "SELECT 2"); err != nil || out != "2" {
		t.Fatalf("login after lock/unlock in FIPS mode = %q, %v", out, err)
	}
	// The default server (no GODEBUG) says off.
	if st := shared.status(t); st["fips140"] != false {
		t.Errorf("shared server status fips140 = %v; want false", st["fips140"])
	}
}
