package provision

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgshield/pgshield/internal/config"
)

// init with --tls-key refuses a key file up would refuse (0644 here),
// before creating anything: before, init accepted it and the check came
// only at reload.
func TestInitRefusesWideKeyFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	cert, key := filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	for _, f := range []string{cert, key} {
		if err := os.WriteFile(f, []byte("-"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	data := filepath.Join(dir, "data")
	_, err := Init(context.Background(), InitOptions{Layout: config.Layout{Root: data}, TLSCert: cert, TLSKey: key})
	var oe *OptionError
	if !errors.As(err, &oe) || !strings.Contains(err.Error(), "wider than 0600") {
		t.Fatalf("Init with a 0644 key: %v; want an option error about its mode", err)
	}
	if _, err := os.Stat(data); !os.IsNotExist(err) {
		t.Fatalf("the data directory was created: %v", err)
	}
}
