package scram

import (
	"encoding/base64"
	"fmt"
	"testing"

	"github.com/xdg-go/scram"
)

func TestVerifyPassword(t *testing.T) {
	// verifierFor builds a verifier from the RFC 5802 definitions over the
	// exact bytes given, independently of xdg-go/scram and SASLprep.
	verifierFor := func(hashed string) Credentials {
		t.Helper()
		stored, server := rfc5802Keys(t, hashed, testSalt, DefaultIterations)
		enc := base64.StdEncoding.EncodeToString
		c, err := ParseVerifier(fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", DefaultIterations, enc(testSalt), enc(stored), enc(server)))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	tests := []struct {
		name, hashed, password string
		want                   bool
	}{
		{name: "right password", hashed: "correct horse", password: "correct horse", want: true},
		{name: "wrong password", hashed: "correct horse", password: "correct horsf"},
		{name: "empty password", hashed: "correct horse", password: ""},
		// SASLprep maps a soft hyphen to nothing and a no-break space to a space.
		{name: "SASLprep mapping", hashed: "IX y", password: "I\u00adX\u00a0y", want: true},
		// A control character is prohibited: PostgreSQL then hashes the raw bytes.
		{name: "unprepared fallback", hashed: "bell\x07", password: "bell\x07", want: true},
		{name: "invalid UTF-8 fallback", hashed: "\xff\xfe", password: "\xff\xfe", want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := VerifyPassword(verifierFor(tt.hashed), tt.password); got != tt.want {
				t.Errorf("VerifyPassword(verifier of %q, %q) = %v; want %v", tt.hashed, tt.password, got, tt.want)
			}
		})
	}
	v, err := Verifier("alice", "s3cret", testSalt, DefaultIterations)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseVerifier(v)
	if err != nil {
		t.Fatal(err)
	}
	if !VerifyPassword(c, "s3cret") {
		t.Errorf("VerifyPassword(Verifier(s3cret), s3cret) = false; want true")
	}
	if VerifyPassword(MockCredentials(testSalt, "alice"), "s3cret") {
		t.Errorf("VerifyPassword(mock credentials) = true; want false")
	}
}

// TestVerifyPasswordIterationCap: a verifier with an iteration count over
// the cap (a role sets its own) never matches, and costs only the capped work.
func TestVerifyPasswordIterationCap(t *testing.T) {
	const pw = "Capped-Pass-1"
	c, err := scram.SHA256.NewClient("", pw, "")
	if err != nil {
		t.Fatal(err)
	}
	kf := scram.KeyFactors{Salt: "0123456789abcdef", Iters: MaxVerifyIterations + 1}
	sc := c.GetStoredCredentials(kf)
	creds := Credentials{KeyFactors: kf, StoredKey: sc.StoredKey, ServerKey: sc.ServerKey}
	if VerifyPassword(creds, pw) {
		t.Errorf("VerifyPassword with %d iterations = true; want false (over the cap)", kf.Iters)
	}
	kf.Iters = MaxVerifyIterations
	sc = c.GetStoredCredentials(kf)
	creds = Credentials{KeyFactors: kf, StoredKey: sc.StoredKey, ServerKey: sc.ServerKey}
	if !VerifyPassword(creds, pw) {
		t.Errorf("VerifyPassword with %d iterations = false; want true (at the cap)", kf.Iters)
	}
}
