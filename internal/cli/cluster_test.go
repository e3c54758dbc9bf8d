package cli

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/pgshield/pgshield/internal/cluster/promote"
)

type hookVolume struct{ check error }

func (hookVolume) Guard() error                  { return nil }
func (v hookVolume) Check(context.Context) error { return v.check }
func (hookVolume) SessionsAllowed() error        { return nil }

// TestClusterPrePromote runs the hook's command line against a promotion
// server: exit 0 only when the server allows it, non-zero otherwise, and
// when nothing answers.
func TestClusterPrePromote(t *testing.T) {
	dir, err := os.MkdirTemp("", "hook")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	for _, tc := range []struct {
		name  string
		check error
		want  int
	}{
		{"allowed", nil, exitOK},
		{"key revoked", errors.New("AccessDenied"), exitError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := filepath.Join(dir, tc.name[:3]+".sock")
			ln, err := promote.Listen(sock, os.Getuid())
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			v := hookVolume{check: tc.check}
			go func() { done <- (&promote.Server{Volume: v, Keys: v, UID: os.Getuid()}).Serve(ctx, ln) }()
			defer func() { cancel(); <-done }()
			if got := Execute([]string{"cluster", "pre-promote", "--socket", sock}); got != tc.want {
				t.Errorf("exit %d, want %d", got, tc.want)
			}
		})
	}
	if got := Execute([]string{"cluster", "pre-promote", "--socket", filepath.Join(dir, "none.sock")}); got == exitOK {
		t.Error("exit 0 with no daemon")
	}
	if got := Execute([]string{"cluster", "pre-promote"}); got != exitUsage {
		t.Errorf("no --socket: exit %d, want %d", got, exitUsage)
	}
}
