package scram

import (
	"bytes"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"
)

var testSalt = []byte("0123456789abcdef")

// rfc5802Keys derives StoredKey and ServerKey from the RFC 5802 definitions,
// independently of xdg-go/scram.
func rfc5802Keys(t *testing.T, password string, salt []byte, iters int) (stored, server []byte) {
	t.Helper()
	salted, err := pbkdf2.Key(sha256.New, password, salt, iters, sha256.Size)
	if err != nil {
		t.Fatalf("pbkdf2.Key() error = %v", err)
	}
	mac := func(key []byte, msg string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(msg))
		return h.Sum(nil)
	}
	ck := sha256.Sum256(mac(salted, "Client Key"))
	return ck[:], mac(salted, "Server Key")
}

func TestVerifierMatchesRFC5802(t *testing.T) {
	tests := []struct {
		name     string
		user     string
		password string
		salt     []byte
		iters    int
	}{
		{name: "default iterations", user: "alice", password: "correct horse battery staple", salt: testSalt, iters: 4096},
		{name: "few iterations", user: "bob", password: "pw", salt: []byte{0, 1, 2, 255}, iters: 1},
		{name: "empty user", user: "", password: "s3cret", salt: testSalt, iters: 10000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := Verifier(tt.user, tt.password, tt.salt, tt.iters)
			if err != nil {
				t.Fatalf("Verifier(%q, ...) error = %v", tt.user, err)
			}
			stored, server := rfc5802Keys(t, tt.password, tt.salt, tt.iters)
			enc := base64.StdEncoding.EncodeToString
			want := fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", tt.iters, enc(tt.salt), enc(stored), enc(server))
			if v != want {
				t.Errorf("Verifier(%q, %q, %x, %d) = %q; want %q", tt.user, tt.password, tt.salt, tt.iters, v, want)
			}
			c, err := ParseVerifier(v)
			if err != nil {
				t.Fatalf("ParseVerifier(%q) error = %v; want nil", v, err)
			}
			if c.Iters != tt.iters || c.Salt != string(tt.salt) || !bytes.Equal(c.StoredKey, stored) ||
				!bytes.Equal(c.ServerKey, server) {
				t.Errorf("ParseVerifier(%q) = %+v; want iters %d salt %x keys %x %x", v, c, tt.iters, tt.salt, stored, server)
			}
		})
	}
}

func TestVerifierDoesNotDependOnUser(t *testing.T) {
	// PostgreSQL ignores the SCRAM user name, so the verifier must too.
	a, errA := Verifier("alice", "pw", testSalt, 4096)
	b, errB := Verifier("bob", "pw", testSalt, 4096)
	if errA != nil || errB != nil || a != b {
		t.Errorf("Verifier(alice) = %q, %v; Verifier(bob) = %q, %v; want equal", a, errA, b, errB)
	}
	c, _ := Verifier("alice", "pw2", testSalt, 4096)
	if c == a {
		t.Errorf("Verifier() is the same for two passwords: %q", c)
	}
}

func TestParseVerifier(t *testing.T) {
	good, err := Verifier("alice", "secret", testSalt, 4096)
	if err != nil {
		t.Fatal(err)
	}
	_, keys, _ := strings.Cut(strings.TrimPrefix(good, "SCRAM-SHA-256$"), "$")
	stored, server, _ := strings.Cut(keys, ":")
	salt := base64.StdEncoding.EncodeToString(testSalt)
	short := base64.StdEncoding.EncodeToString(make([]byte, 16))
	tests := []struct {
		name    string
		in      string
		wantErr bool
	}{
		{name: "good", in: good},
		{name: "PostgreSQL's own layout", in: "SCRAM-SHA-256$4096:" + salt + "$" + stored + ":" + server},
		{name: "md5 hash", in: "md5" + strings.Repeat("0123456789abcdef", 2), wantErr: true},
		{name: "empty (no password)", in: "", wantErr: true},
		{name: "plaintext", in: "secret", wantErr: true},
		{name: "lower-case prefix", in: strings.Replace(good, "SCRAM-SHA-256", "scram-sha-256", 1), wantErr: true},
		{name: "SHA-1 mechanism", in: strings.Replace(good, "SCRAM-SHA-256", "SCRAM-SHA-1", 1), wantErr: true},
		{name: "prefix only", in: "SCRAM-SHA-256$", wantErr: true},
		{name: "missing keys", in: "SCRAM-SHA-256$4096:" + salt, wantErr: true},
		{name: "extra section", in: good + "$x", wantErr: true},
		{name: "missing server key", in: "SCRAM-SHA-256$4096:" + salt + "$" + stored, wantErr: true},
		{name: "missing salt", in: "SCRAM-SHA-256$4096$" + stored + ":" + server, wantErr: true},
		{name: "empty salt", in: "SCRAM-SHA-256$4096:$" + stored + ":" + server},
		{name: "iterations not a number", in: "SCRAM-SHA-256$many:" + salt + "$" + stored + ":" + server, wantErr: true},
		{name: "zero iterations", in: "SCRAM-SHA-256$0:" + salt + "$" + stored + ":" + server, wantErr: true},
		{name: "negative iterations", in: "SCRAM-SHA-256$-1:" + salt + "$" + stored + ":" + server, wantErr: true},
		{name: "salt not base64", in: "SCRAM-SHA-256$4096:%%%$" + stored + ":" + server, wantErr: true},
		{name: "stored key not base64", in: "SCRAM-SHA-256$4096:" + salt + "$***:" + server, wantErr: true},
		{name: "server key not base64", in: "SCRAM-SHA-256$4096:" + salt + "$" + stored + ":***", wantErr: true},
		{name: "stored key too short", in: "SCRAM-SHA-256$4096:" + salt + "$" + short + ":" + server, wantErr: true},
		{name: "server key too short", in: "SCRAM-SHA-256$4096:" + salt + "$" + stored + ":" + short, wantErr: true},
		{name: "keys with a third part", in: good + ":" + server, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseVerifier(tt.in)
			if tt.wantErr {
				if !errors.Is(err, ErrNoVerifier) {
					t.Fatalf("ParseVerifier(%q) error = %v; want ErrNoVerifier", tt.in, err)
				}
				if c.StoredKey != nil || c.ServerKey != nil || c.Iters != 0 {
					t.Errorf("ParseVerifier(%q) = %+v with an error; want zero credentials", tt.in, c)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseVerifier(%q) error = %v; want nil", tt.in, err)
			}
			if len(c.StoredKey) != sha256.Size || len(c.ServerKey) != sha256.Size || c.Iters != 4096 {
				t.Errorf("ParseVerifier(%q) = %+v; want 32-byte keys and 4096 iterations", tt.in, c)
			}
		})
	}
}

func TestParseVerifierMD5IsExactlyErrNoVerifier(t *testing.T) {
	in := "md5" + strings.Repeat("ab", 16)
	if _, err := ParseVerifier(in); err != ErrNoVerifier {
		t.Errorf("ParseVerifier(%q) error = %v; want exactly ErrNoVerifier", in, err)
	}
}

func TestMockCredentials(t *testing.T) {
	secret := bytes.Repeat([]byte{7}, 32)
	other := bytes.Repeat([]byte{8}, 32)
	a1 := MockCredentials(secret, "alice")
	a2 := MockCredentials(secret, "alice")
	b := MockCredentials(secret, "bob")
	a3 := MockCredentials(other, "alice")

	for _, tt := range []struct {
		name string
		c    Credentials
	}{{"alice", a1}, {"bob", b}, {"alice with other secret", a3}, {"empty user", MockCredentials(secret, "")}} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.c.Iters != DefaultIterations || DefaultIterations != 4096 {
				t.Errorf("MockCredentials().Iters = %d; want 4096", tt.c.Iters)
			}
			if len(tt.c.Salt) != 16 {
				t.Errorf("MockCredentials() salt is %d bytes; want 16", len(tt.c.Salt))
			}
			if len(tt.c.StoredKey) != sha256.Size || len(tt.c.ServerKey) != sha256.Size {
				t.Errorf("MockCredentials() keys are %d and %d bytes; want 32", len(tt.c.StoredKey), len(tt.c.ServerKey))
			}
			if bytes.Equal(tt.c.StoredKey, tt.c.ServerKey) || bytes.HasPrefix(tt.c.StoredKey, []byte(tt.c.Salt)) {
				t.Errorf("MockCredentials() derives salt and keys alike: %+v", tt.c)
			}
		})
	}
	if a1.Salt != a2.Salt || !bytes.Equal(a1.StoredKey, a2.StoredKey) || !bytes.Equal(a1.ServerKey, a2.ServerKey) {
		t.Errorf("MockCredentials(secret, alice) differs between calls: %+v vs %+v", a1, a2)
	}
	if a1.Salt == b.Salt || bytes.Equal(a1.StoredKey, b.StoredKey) {
		t.Errorf("MockCredentials(secret, alice) = MockCredentials(secret, bob); want different")
	}
	if a1.Salt == a3.Salt || bytes.Equal(a1.StoredKey, a3.StoredKey) {
		t.Errorf("MockCredentials depends only on the user; want it keyed by the secret")
	}
	// No user name is the prefix trick away from another: "a"+"\x00b" is not "a\x00"+"b".
	if MockCredentials(secret, "ab").Salt == MockCredentials(secret, "a").Salt {
		t.Errorf("MockCredentials(ab) and MockCredentials(a) share a salt")
	}
}

func TestMockCredentialsLookLikeRealOnes(t *testing.T) {
	// A mock salt must be shaped like the one a real verifier reveals, so the
	// server-first-message does not tell an unknown role from a real one.
	v, _ := Verifier("alice", "pw", testSalt, DefaultIterations)
	real, err := ParseVerifier(v)
	if err != nil {
		t.Fatal(err)
	}
	mock := MockCredentials([]byte("0123456789abcdef"), "nobody")
	if len(mock.Salt) != len(real.Salt) || mock.Iters != real.Iters {
		t.Errorf("mock salt %d bytes/%d iterations; real %d bytes/%d iterations", len(mock.Salt), mock.Iters,
			len(real.Salt), real.Iters)
	}
}

func TestAuthErrorKeepsReasonOutOfMessage(t *testing.T) {
	x := &Exchange{User: "alice"}
	err := x.failed("role does not exist")
	var ae *AuthError
	if !errors.As(err, &ae) {
		t.Fatalf("failed() = %T; want *AuthError", err)
	}
	if ae.Code != "28P01" || ae.Message != `password authentication failed for user "alice"` {
		t.Errorf("failed() = %+v; want 28P01 with PostgreSQL's message", ae)
	}
	if strings.Contains(ae.Message, "exist") {
		t.Errorf("AuthError.Message %q reveals the reason", ae.Message)
	}
	if !strings.Contains(ae.Error(), "role does not exist") {
		t.Errorf("AuthError.Error() = %q; want the reason for logs", ae.Error())
	}
}
