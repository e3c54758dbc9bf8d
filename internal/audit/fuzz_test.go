package audit

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzVerify checks that Verify, Search and Open never panic or fail on
// arbitrary file contents, and that Open keeps a verifying log verifying.
func FuzzVerify(f *testing.F) {
	f.Add([]byte(""))
	f.Add([]byte("{}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, currentName), data, 0o600); err != nil {
			t.Fatal(err)
		}
		rep, err := Verify(dir)
		if err != nil {
			t.Fatalf("Verify() error = %v", err)
		}
		if rep.OK && len(data) > 0 && rep.Records == 0 {
			t.Fatalf("Verify() = %+v on %q; want records or a problem", rep, data)
		}
		if _, err := Search(dir, Filter{}); err != nil {
			t.Fatalf("Search() error = %v", err)
		}
		l, err := Open(dir)
		if err != nil {
			t.Fatalf("Open() error = %v", err)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		// Open seals damage at the tail only; it must never break a log
		// that verified.
		after, err := Verify(dir)
		if err != nil || (rep.OK && !after.OK) {
			t.Fatalf("Verify() after Open = %+v, %v; before = %+v", after, err, rep)
		}
	})
}
