package keys

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The checked-in envelope testdata/wrapped-v1.json was written by WrapKey
// with this test-only key (32 ASCII bytes; never a real key) and data key. It
// catches drift in the envelope format and in localsecrets' ciphertext
// format, either of which would make existing wrapped keys unreadable.
const (
	fixtureKeyURI  = "base64key://cGdzaGllbGQtdGVzdC1rZWstZG8tbm90LXVzZS0wMDE=" // "pgshield-test-kek-do-not-use-001"
	fixtureDataKey = "pgshield fixture data key, 64 bytes, not secret: 0123456789abcde"
)

func TestLoadWrappedFixture(t *testing.T) {
	w, err := LoadWrapped("testdata/wrapped-v1.json")
	if err != nil {
		t.Fatalf("LoadWrapped(fixture) error = %v", err)
	}
	if w.Version != 1 || w.KeyURI != "base64key://REDACTED" || w.Purpose != PurposeVolume ||
		!w.CreatedAt.Equal(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)) {
		t.Errorf("LoadWrapped(fixture) = %+v; want version 1, base64key://REDACTED, volume, 2026-11-25T12:00:00Z", w)
	}
	k := mustOpen(t, fixtureKeyURI)
	got, err := k.UnwrapKey(context.Background(), w)
	if err != nil {
		t.Fatalf("UnwrapKey(fixture) error = %v", err)
	}
	if string(got) != fixtureDataKey {
		t.Errorf("UnwrapKey(fixture) = %q; want %q", got, fixtureDataKey)
	}
}

func validWrapped() *WrappedKey {
	return &WrappedKey{
		Version:    WrappedKeyVersion,
		KeyURI:     "awskms://alias/pgshield?region=us-east-1",
		Purpose:    PurposeBackup,
		Ciphertext: []byte{1, 2, 3, 4},
		CreatedAt:  time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC),
	}
}

func TestSaveLoadWrapped(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)

	dir := t.TempDir()
	path := filepath.Join(dir, "backup.key.json")
	w := validWrapped()
	if err := w.Save(path); err != nil {
		t.Fatalf("Save(%q) error = %v", path, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("Save: file mode %v; want 0600", fi.Mode().Perm())
	}
	got, err := LoadWrapped(path)
	if err != nil {
		t.Fatalf("LoadWrapped(%q) error = %v", path, err)
	}
	if got.Version != w.Version || got.KeyURI != w.KeyURI || got.Purpose != w.Purpose ||
		!bytes.Equal(got.Ciphertext, w.Ciphertext) || !got.CreatedAt.Equal(w.CreatedAt) {
		t.Errorf("LoadWrapped(Save(%+v)) = %+v", w, got)
	}

	// Saving again replaces the file and leaves no temporary file.
	w.Ciphertext = []byte{9, 9}
	if err := w.Save(path); err != nil {
		t.Fatalf("second Save error = %v", err)
	}
	if got, err := LoadWrapped(path); err != nil || !bytes.Equal(got.Ciphertext, []byte{9, 9}) {
		t.Errorf("LoadWrapped after second Save = %+v, %v; want ciphertext 0909", got, err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries after Save; want 1", len(entries))
	}
}

func TestSaveRefusesInvalid(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		desc   string
		modify func(*WrappedKey)
	}{
		{"version 0", func(w *WrappedKey) { w.Version = 0 }},
		{"version 2", func(w *WrappedKey) { w.Version = 2 }},
		{"purpose", func(w *WrappedKey) { w.Purpose = "wal" }},
		{"empty key URI", func(w *WrappedKey) { w.KeyURI = "" }},
		{"unredacted key URI", func(w *WrappedKey) { w.KeyURI = fixtureKeyURI }},
		{"unredacted query", func(w *WrappedKey) { w.KeyURI = "hashivault://k?token=s.x" }},
		{"empty ciphertext", func(w *WrappedKey) { w.Ciphertext = nil }},
		{"huge ciphertext", func(w *WrappedKey) { w.Ciphertext = make([]byte, maxCiphertextSize+1) }},
		{"no time", func(w *WrappedKey) { w.CreatedAt = time.Time{} }},
	} {
		w := validWrapped()
		tc.modify(w)
		path := filepath.Join(dir, "k.json")
		err := w.Save(path)
		if err == nil {
			t.Errorf("%s: Save error = nil; want an error", tc.desc)
		} else if strings.Contains(err.Error(), "cGdzaGll") || strings.Contains(err.Error(), "s.x") {
			t.Errorf("%s: Save error %q quotes the unredacted URI", tc.desc, err)
		}
		if _, err := os.Stat(path); err == nil {
			t.Errorf("%s: Save wrote a file", tc.desc)
		}
	}
	if err := validWrapped().Save(filepath.Join(dir, "missing", "k.json")); err == nil {
		t.Errorf("Save(into a missing directory) error = nil; want an error")
	}
}

func TestLoadWrappedStrict(t *testing.T) {
	valid, err := json.Marshal(validWrapped())
	if err != nil {
		t.Fatal(err)
	}
	replace := func(old, new string) string { return strings.Replace(string(valid), old, new, 1) }
	for _, tc := range []struct {
		desc string
		data string
		ok   bool
	}{
		{"valid", string(valid), true},
		{"valid with whitespace", "\n " + string(valid) + " \n", true},
		{"unknown field", replace(`{`, `{"plaintext":"AAAA",`), false},
		{"case-folded field", replace(`"version"`, `"VERSION"`), false},
		{"duplicate field", replace(`{`, `{"version":2,`), false},
		{"duplicate field, same value", replace(`{`, `{"version":1,`), false},
		{"trailing object", string(valid) + "{}", false},
		{"trailing garbage", string(valid) + "x", false},
		{"version 2", replace(`"version":1`, `"version":2`), false},
		{"version string", replace(`"version":1`, `"version":"1"`), false},
		{"purpose", replace(`"purpose":"backup"`, `"purpose":"other"`), false},
		{"bad base64", replace(`"ciphertext":"AQIDBA=="`, `"ciphertext":"!!!"`), false},
		{"empty ciphertext", replace(`"ciphertext":"AQIDBA=="`, `"ciphertext":""`), false},
		{"null ciphertext", replace(`"ciphertext":"AQIDBA=="`, `"ciphertext":null`), false},
		{"bad time", replace(`"created_at":"2026-01-02T03:04:05.000000006Z"`, `"created_at":"yesterday"`), false},
		{"unredacted URI", replace(`"key_uri":"awskms://alias/pgshield?region=us-east-1"`, `"key_uri":"`+fixtureKeyURI+`"`), false},
		{"null", "null", false},
		{"array", "[]", false},
		{"empty", "", false},
		{"huge", string(valid) + strings.Repeat(" ", maxWrappedFileSize), false},
	} {
		path := filepath.Join(t.TempDir(), "k.json")
		if err := os.WriteFile(path, []byte(tc.data), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := LoadWrapped(path)
		if tc.ok && err != nil {
			t.Errorf("%s: LoadWrapped(%q) error = %v; want nil", tc.desc, tc.data, err)
		}
		if !tc.ok && err == nil {
			t.Errorf("%s: LoadWrapped(%q) error = nil; want an error", tc.desc, tc.data)
		}
	}
	if _, err := LoadWrapped(filepath.Join(t.TempDir(), "missing.json")); err == nil {
		t.Errorf("LoadWrapped(missing) error = nil; want an error")
	}
}

func FuzzLoadWrapped(f *testing.F) {
	// Seeds beyond these are in testdata/fuzz/FuzzLoadWrapped.
	if b, err := os.ReadFile("testdata/wrapped-v1.json"); err == nil {
		f.Add(b)
	}
	if b, err := json.Marshal(validWrapped()); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		w, err := decodeWrapped(data)
		if err != nil {
			if w != nil {
				t.Fatalf("decodeWrapped error = %v with a non-nil envelope", err)
			}
			return
		}
		if err := w.Validate(); err != nil {
			t.Fatalf("decodeWrapped accepted an envelope that fails Validate: %v", err)
		}
		// What was accepted must survive a Save-style re-encoding.
		b, err := json.MarshalIndent(w, "", "  ")
		if err != nil {
			t.Fatalf("re-encoding an accepted envelope: %v", err)
		}
		w2, err := decodeWrapped(b)
		if err != nil {
			t.Fatalf("decodeWrapped(re-encoded %q) error = %v", b, err)
		}
		if w2.Version != w.Version || w2.KeyURI != w.KeyURI || w2.Purpose != w.Purpose ||
			!bytes.Equal(w2.Ciphertext, w.Ciphertext) || !w2.CreatedAt.Equal(w.CreatedAt) {
			t.Fatalf("re-encoded envelope %+v differs from %+v", w2, w)
		}
	})
}
