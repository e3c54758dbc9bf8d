package main

import (
	"bytes"
	"path/filepath"
	"testing"
)

// These tests need no privileges: they never get as far as a loop device.

func TestUsage(t *testing.T) {
	for name, args := range map[string][]string{
		"no args":         nil,
		"unknown command": {"sideways", "-image", "/x/img", "-mount", "/x/mnt"},
		"no image":        {"up", "-mount", "/x/mnt"},
		"no mount":        {"down", "-image", "/x/img"},
		"extra argument":  {"down", "-image", "/x/img", "-mount", "/x/mnt", "extra"},
		"unknown flag":    {"up", "-image", "/x/img", "-mount", "/x/mnt", "-key", "00"},
	} {
		t.Run(name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if got := run(args, &stdout, &stderr); got != 2 {
				t.Errorf("run(%q) = %d; want 2 (stderr %q)", args, got, stderr.String())
			}
			if stdout.Len() != 0 {
				t.Errorf("run(%q) printed %q on stdout; want nothing", args, stdout.String())
			}
		})
	}
}

// down must succeed on a volume that does not exist (or no longer does), so
// that a cleanup trap can call it unconditionally.
func TestDownNothingThere(t *testing.T) {
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	args := []string{"down", "-image", filepath.Join(dir, "volume.img"), "-mount", filepath.Join(dir, "mnt")}
	if got := run(args, &stdout, &stderr); got != 0 {
		t.Fatalf("run(%q) = %d; want 0 (stderr %q)", args, got, stderr.String())
	}
}
