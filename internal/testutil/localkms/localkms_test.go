package localkms_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	smithy "github.com/aws/smithy-go"
	"gocloud.dev/gcerrors"

	"github.com/pgshield/pgshield/internal/keys"
	"github.com/pgshield/pgshield/internal/testutil/localkms"
)

// describe names what an error is made of, for the test log.
func describe(err error) string {
	if err == nil {
		return "<nil>"
	}
	var b strings.Builder
	b.WriteString("kind=" + keys.ErrorKind(err).String())
	b.WriteString(" gcerrors=" + gcerrors.Code(err).String())
	var ae smithy.APIError
	if errors.As(err, &ae) {
		b.WriteString(" aws=" + ae.ErrorCode())
	}
	b.WriteString(": " + err.Error())
	return b.String()
}

func open(t *testing.T, uri string) *keys.Keeper {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	k, err := keys.Open(ctx, uri)
	if err != nil {
		t.Fatalf("keys.Open: %v", err)
	}
	t.Cleanup(func() { _ = k.Close() })
	return k
}

func newDataKey(t *testing.T) []byte {
	t.Helper()
	dk, err := keys.NewDataKey(32)
	if err != nil {
		t.Fatal(err)
	}
	return dk
}

func wrap(t *testing.T, k *keys.Keeper, dk []byte) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ct, err := k.Wrap(ctx, dk)
	if err != nil {
		t.Fatalf("Wrap: %s", describe(err))
	}
	return ct
}

func mustUnwrap(t *testing.T, k *keys.Keeper, ct, want []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pt, err := k.Unwrap(ctx, ct)
	if err != nil {
		t.Fatalf("Unwrap: %s", describe(err))
	}
	if !bytes.Equal(pt, want) {
		t.Fatalf("Unwrap returned another key")
	}
}

// wantKind checks that op fails with kind, within bound.
func wantKind(t *testing.T, what string, kind keys.Kind, bound time.Duration, op func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	start := time.Now()
	err := op(ctx)
	took := time.Since(start)
	t.Logf("%s (%v): %s", what, took.Round(time.Millisecond), describe(err))
	if err == nil {
		t.Fatalf("%s: succeeded, want a %v error", what, kind)
	}
	if got := keys.ErrorKind(err); got != kind {
		t.Errorf("%s: ErrorKind = %v, want %v", what, got, kind)
	}
	if took > bound+time.Second {
		t.Errorf("%s: took %v, bound %v", what, took, bound)
	}
}

func TestLifecycle(t *testing.T) {
	srv := localkms.Start(t)
	if !strings.HasPrefix(srv.Endpoint, "http://127.0.0.1:") {
		t.Fatalf("Endpoint = %q", srv.Endpoint)
	}
	id, arn := srv.CreateKey(t)
	if !strings.HasSuffix(arn, ":key/"+id) {
		t.Fatalf("CreateKey: id %q, arn %q", id, arn)
	}
	srv.SetEnv(t)
	k := open(t, srv.KeyURI(id))

	dk := newDataKey(t)
	ct := wrap(t, k, dk)
	mustUnwrap(t, k, ct, dk)

	unwrap := func(ctx context.Context) error { _, err := k.Unwrap(ctx, ct); return err }
	wrapOp := func(ctx context.Context) error { _, err := k.Wrap(ctx, dk); return err }

	// Disabled: revoked.
	srv.DisableKey(t, id)
	wantKind(t, "Unwrap with disabled key", keys.KindDenied, 10*time.Second, unwrap)
	wantKind(t, "Wrap with disabled key", keys.KindDenied, 10*time.Second, wrapOp)
	srv.EnableKey(t, id)
	mustUnwrap(t, k, ct, dk)

	// Pending deletion: revoked.
	srv.ScheduleDeletion(t, id)
	wantKind(t, "Unwrap with key pending deletion", keys.KindDenied, 10*time.Second, unwrap)
	wantKind(t, "Wrap with key pending deletion", keys.KindDenied, 10*time.Second, wrapOp)
	srv.CancelDeletion(t, id)
	srv.EnableKey(t, id)
	mustUnwrap(t, k, ct, dk)

	// Unreachable: transient, within the caller's deadline.
	srv.Stop()
	wantKind(t, "Unwrap with KMS stopped", keys.KindTransient, 5*time.Second, unwrap)
	wantKind(t, "Wrap with KMS stopped", keys.KindTransient, 5*time.Second, wrapOp)
	// A short deadline is honoured too.
	wantKind(t, "Unwrap with KMS stopped, 200ms deadline", keys.KindTransient, 200*time.Millisecond, unwrap)

	// Back: same port, same data, same key.
	srv.Restart(t)
	mustUnwrap(t, k, ct, dk)
	ct2 := wrap(t, k, dk)
	mustUnwrap(t, open(t, srv.KeyURI(id)), ct2, dk)
}

func TestARNKeyURI(t *testing.T) {
	srv := localkms.Start(t)
	_, arn := srv.CreateKey(t)
	srv.SetEnv(t)
	uri := srv.KeyURI(arn)
	if !strings.HasPrefix(uri, "awskms:///arn:aws:kms:"+srv.Region+":") {
		t.Fatalf("KeyURI(%q) = %q", arn, uri)
	}
	k := open(t, uri)
	dk := newDataKey(t)
	mustUnwrap(t, k, wrap(t, k, dk), dk)
}

func TestUnknownKeyDenied(t *testing.T) {
	srv := localkms.Start(t)
	srv.SetEnv(t)
	k := open(t, srv.KeyURI("00000000-0000-4000-8000-000000000000"))
	wantKind(t, "Wrap with unknown key", keys.KindDenied, 10*time.Second, func(ctx context.Context) error {
		_, err := k.Wrap(ctx, newDataKey(t))
		return err
	})
}

func TestCorruptCiphertext(t *testing.T) {
	srv := localkms.Start(t)
	id, _ := srv.CreateKey(t)
	srv.SetEnv(t)
	k := open(t, srv.KeyURI(id))
	ct := wrap(t, k, newDataKey(t))
	bad := bytes.Clone(ct)
	bad[len(bad)-1] ^= 1
	wantKind(t, "Unwrap of damaged ciphertext", keys.KindCorrupt, 10*time.Second, func(ctx context.Context) error {
		_, err := k.Unwrap(ctx, bad)
		return err
	})
	wantKind(t, "Unwrap of truncated ciphertext", keys.KindCorrupt, 10*time.Second, func(ctx context.Context) error {
		_, err := k.Unwrap(ctx, ct[:len(ct)/2])
		return err
	})
}

// TestOtherKeyCiphertext records what AWS KMS semantics give for a key
// wrapped by another key of the same account: gocloud's awskms Decrypt sends
// no KeyId, so KMS picks the key named in the ciphertext.
func TestOtherKeyCiphertext(t *testing.T) {
	srv := localkms.Start(t)
	a, _ := srv.CreateKey(t)
	b, _ := srv.CreateKey(t)
	srv.SetEnv(t)
	ka, kb := open(t, srv.KeyURI(a)), open(t, srv.KeyURI(b))
	dk := newDataKey(t)
	ctB := wrap(t, kb, dk)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := ka.Unwrap(ctx, ctB)
	t.Logf("Unwrap with key A of a key wrapped by key B: %s", describe(err))
	srv.DisableKey(t, b)
	_, err = ka.Unwrap(ctx, ctB)
	t.Logf("... after disabling key B: %s", describe(err))
}

func TestURIHoldsNoCredentials(t *testing.T) {
	srv := localkms.Start(t)
	id, _ := srv.CreateKey(t)
	uri := srv.KeyURI(id)
	for _, secret := range []string{localkms.AccessKeyID, localkms.SecretAccessKey} {
		if strings.Contains(uri, secret) {
			t.Errorf("KeyURI %q holds a credential", uri)
		}
	}
	t.Logf("KeyURI: %s", uri)
	t.Logf("RedactURI: %s", keys.RedactURI(uri))
}

func TestBinaryCached(t *testing.T) {
	p1 := localkms.Binary(t)
	p2 := localkms.Binary(t)
	if p1 != p2 {
		t.Fatalf("Binary: %q then %q", p1, p2)
	}
	if _, err := os.Stat(p1); err != nil {
		t.Fatal(err)
	}
	t.Logf("local-kms binary: %s", p1)
}

const helperEnv = "LOCALKMS_TEST_HELPER_URI"

// TestEnvForChildProcess shows that Env is all a separate process (such as
// a pgshield daemon) needs to use KeyURI, with no AWS variables inherited.
func TestEnvForChildProcess(t *testing.T) {
	if uri := os.Getenv(helperEnv); uri != "" {
		return // run as the child, by TestHelperChild
	}
	srv := localkms.Start(t)
	id, _ := srv.CreateKey(t)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AWS_") {
			env = append(env, kv)
		}
	}
	env = append(env, helperEnv+"="+srv.KeyURI(id))
	run := func(extra []string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperChild$", "-test.v")
		cmd.Env = append(append([]string{}, env...), extra...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := run(srv.Env()); err != nil || !strings.Contains(out, "HELPER OK") {
		t.Fatalf("child with Env: %v\n%s", err, out)
	}
	// Without the credentials the SDK cannot sign: the child must fail.
	if out, err := run([]string{"AWS_EC2_METADATA_DISABLED=true", "HOME=" + t.TempDir()}); err == nil {
		t.Fatalf("child without credentials succeeded:\n%s", out)
	} else {
		t.Logf("child without credentials fails as expected: %s", lastLines(out, 3))
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

func TestHelperChild(t *testing.T) {
	uri := os.Getenv(helperEnv)
	if uri == "" {
		t.Skip("helper for TestEnvForChildProcess")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	k, err := keys.Open(ctx, uri)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer k.Close()
	dk := newDataKey(t)
	ct, err := k.Wrap(ctx, dk)
	if err != nil {
		t.Fatalf("Wrap: %s", describe(err))
	}
	pt, err := k.Unwrap(ctx, ct)
	if err != nil || !bytes.Equal(pt, dk) {
		t.Fatalf("Unwrap: %s", describe(err))
	}
	t.Log("HELPER OK")
}
