package keys

import (
	"errors"
	"strings"
	"testing"
)

func TestRedactURI(t *testing.T) {
	for _, tc := range []struct {
		in, want string
	}{
		{"base64key://smGbjm71Nxd1Ig5FS0wj9SlbzAIrnolCz9bQQ6uAhl4=", "base64key://REDACTED"},
		{"base64key://", "base64key://"},
		{"base64key:opaque", "base64key://REDACTED"},
		{"pgshield-local:///etc/pgshield/keys/s1.key", "pgshield-local:///etc/pgshield/keys/s1.key"},
		{"awskms://alias/pgshield?region=us-east-1", "awskms://alias/pgshield?region=us-east-1"},
		{"awskms:///arn:aws:kms:us-east-1:111122223333:key/abcd?region=us-east-1&awssdk=v2",
			"awskms:///arn:aws:kms:us-east-1:111122223333:key/abcd?awssdk=v2&region=us-east-1"},
		{"awskms://AKIAEXAMPLE:wJalrXUtnFEMI@alias/k?region=eu-west-1", "awskms://alias/k?region=eu-west-1"},
		{"awskms://alias/k?region=eu-west-1&context_tenant=acme", "awskms://alias/k?context_tenant=REDACTED&region=eu-west-1"},
		{"hashivault://mykey?token=s.abcdefSECRET", "hashivault://mykey?token=REDACTED"},
		{"hashivault://mykey?engine=transit&token=s.x&token=s.y", "hashivault://mykey?engine=transit&token=REDACTED&token=REDACTED"},
		{"hashivault://user:pass@mykey#frag", "hashivault://mykey"},
		{"azurekeyvault://myvault.vault.azure.net/keys/k1?algorithm=RSA-OAEP-256", "azurekeyvault://myvault.vault.azure.net/keys/k1?algorithm=RSA-OAEP-256"},
		{"gcpkms://projects/p/locations/global/keyRings/r/cryptoKeys/k", "gcpkms://projects/p/locations/global/keyRings/r/cryptoKeys/k"},
		{"gcpkms://projects/p?access_token=ya29.secret", "gcpkms://projects/p?access_token=REDACTED"},
		{"gcpkms:opaque-secret", "gcpkms:REDACTED"},
		{"awskms://k?%zz=1", "awskms://k?REDACTED=REDACTED"},
		{"base64keys://smGbjm71Nxd1Ig5FS0wj9SlbzAIrnolCz9bQQ6uAhl4=", "base64keys://REDACTED"},
		{"https://user:pw@vault.example/keys?x=1", "https://REDACTED"},
		{"Base64Key://smGbjm71Nxd1Ig5FS0wj9SlbzAIrnolCz9bQQ6uAhl4=", "base64key://REDACTED"},
		{"base64key://smGbjm71Nxd1Ig5FS0wj9SlbzAIrnolCz9bQQ6uAhl4=%zz", "base64key://REDACTED"},
		{"%zz://x", "REDACTED"},
		{"", "REDACTED"},
		{"just-a-secret", "REDACTED"},
		{"/etc/pgshield/keys/x.key", "REDACTED"},
	} {
		got := RedactURI(tc.in)
		if got != tc.want {
			t.Errorf("RedactURI(%q) = %q; want %q", tc.in, got, tc.want)
		}
		if again := RedactURI(got); again != got {
			t.Errorf("RedactURI(RedactURI(%q)) = %q; want %q (idempotent)", tc.in, again, got)
		}
	}
}

func TestScrub(t *testing.T) {
	const uri = "hashivault://mykey?token=s.VERYSECRETTOKEN"
	orig := errors.New(`open keeper hashivault://mykey?token=s.VERYSECRETTOKEN: invalid query parameter "token"`)
	err := scrub(orig, uri)
	if strings.Contains(err.Error(), "VERYSECRET") {
		t.Errorf("scrub() = %q; want the token removed", err)
	}
	if !strings.Contains(err.Error(), "hashivault://mykey?token=REDACTED") {
		t.Errorf("scrub() = %q; want the redacted URI in place of the URI", err)
	}
	if errors.Is(err, orig) {
		t.Errorf("scrub() wraps the original error, which holds the token")
	}

	// Escaped forms and fragments are scrubbed too.
	const uri2 = "awskms://a:p%40ss@alias/k?region=us-east-1&secret=a%2Fb%2Bc"
	for _, msg := range []string{"a/b+c", "a%2Fb%2Bc", "p@ss", "a:p%40ss"} {
		if got := scrub(errors.New("x "+msg+" y"), uri2); strings.Contains(got.Error(), msg) {
			t.Errorf("scrub(%q) = %q; want %q removed", msg, got, msg)
		}
	}

	// An error quoting nothing secret is returned as is.
	plain := errors.New("dial tcp: connection refused")
	if got := scrub(plain, uri); got != plain {
		t.Errorf("scrub(%v) = %v; want the same error", plain, got)
	}
	if scrub(nil, uri) != nil {
		t.Errorf("scrub(nil) != nil")
	}
}

func FuzzRedactURI(f *testing.F) {
	for _, s := range []string{
		"base64key://smGbjm71Nxd1Ig5FS0wj9SlbzAIrnolCz9bQQ6uAhl4=",
		"pgshield-local:///etc/pgshield/keys/s1.key",
		"awskms://u:p@alias/k?region=us-east-1&token=x#f",
		"hashivault://mykey?engine=transit&token=s.x",
		"gcpkms:opaque", "%zz", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, uri string) {
		r := RedactURI(uri)
		if again := RedactURI(r); again != r {
			t.Errorf("RedactURI(%q) = %q, then %q; want idempotent", uri, r, again)
		}
		if strings.Contains(r, "@") && !strings.HasPrefix(r, "pgshield-local:") {
			// '@' may only survive inside a path.
			if i := strings.Index(r, "://"); i >= 0 && !strings.Contains(r[i+3:], "/") {
				t.Errorf("RedactURI(%q) = %q keeps user information", uri, r)
			}
		}
	})
}
