package conf

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/pgshield/pgshield/internal/config"
)

func TestEdit(t *testing.T) {
	l := config.Layout{Root: t.TempDir()}
	first := &config.Config{ServerID: "test", StorageSize: 1, Parameters: map[string]string{}}
	s := New(l, first)
	if s.Get() != first {
		t.Fatalf("Get() is not the configuration the store was made with")
	}
	// A change that fails before commit keeps the old value, on disk too.
	boom := errors.New("boom")
	if err := s.Edit(func(cur *config.Config, _ func(*config.Config) error) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("Edit() error = %v; want %v", err, boom)
	}
	if s.Get() != first {
		t.Errorf("a failed Edit replaced the configuration")
	}
	if _, err := os.Stat(l.ConfigFile()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed Edit wrote the file: %v", err)
	}
	err := s.Edit(func(cur *config.Config, commit func(*config.Config) error) error {
		next := *cur
		next.StorageSize = 42
		return commit(&next)
	})
	if err != nil || s.Get().StorageSize != 42 || first.StorageSize != 1 {
		t.Fatalf("Edit() = %v, size %d (first %d); want 42 in force and the old value untouched", err, s.Get().StorageSize, first.StorageSize)
	}
	b, err := os.ReadFile(l.ConfigFile())
	if err != nil || !strings.Contains(string(b), `"storage_size": 42`) {
		t.Errorf("saved configuration = %s, %v; want storage_size 42", b, err)
	}
	// A commit that cannot save keeps the value in force.
	bad := New(config.Layout{Root: "/nonexistent/pgshield-test"}, first)
	if err := bad.Edit(func(cur *config.Config, commit func(*config.Config) error) error {
		next := *cur
		next.StorageSize = 7
		return commit(&next)
	}); err == nil || bad.Get() != first {
		t.Errorf("Edit() with an unsavable file = %v, in force %+v; want an error and the old value", err, bad.Get())
	}
}
