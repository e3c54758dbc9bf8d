package storage

import (
	"math"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckAndSetDefaults(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name     string
		v        *Volume
		wantErr  string // substring; empty means success
		wantSize int64
	}{
		{name: "defaults", v: &Volume{Image: filepath.Join(dir, "img"), Mount: filepath.Join(dir, "mnt")}, wantSize: DefaultSize},
		{name: "explicit size", v: &Volume{Image: filepath.Join(dir, "img"), Mount: filepath.Join(dir, "mnt"), Size: 64 << 20}, wantSize: 64 << 20},
		{name: "no image", v: &Volume{Mount: dir}, wantErr: "Image is required"},
		{name: "no mount", v: &Volume{Image: dir}, wantErr: "Mount is required"},
		{name: "root mount", v: &Volume{Image: filepath.Join(dir, "img"), Mount: "/"}, wantErr: "must not be /"},
		{name: "image under mount", v: &Volume{Image: filepath.Join(dir, "mnt", "img"), Mount: filepath.Join(dir, "mnt")}, wantErr: "must not live under"},
		{name: "image is mount", v: &Volume{Image: filepath.Join(dir, "mnt"), Mount: filepath.Join(dir, "mnt/")}, wantErr: "must not live under"},
		{name: "too small", v: &Volume{Image: filepath.Join(dir, "img"), Mount: filepath.Join(dir, "mnt"), Size: 1 << 20}, wantErr: "below the minimum"},
		{name: "unaligned", v: &Volume{Image: filepath.Join(dir, "img"), Mount: filepath.Join(dir, "mnt"), Size: 64<<20 + 1}, wantErr: "not a multiple"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.v.CheckAndSetDefaults()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("CheckAndSetDefaults() error = %v; want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("CheckAndSetDefaults() error = %v; want nil", err)
			}
			if tt.v.Size != tt.wantSize {
				t.Errorf("Size = %d; want %d", tt.v.Size, tt.wantSize)
			}
			if tt.v.Log == nil {
				t.Error("Log = nil; want a default logger")
			}
			if got, want := tt.v.DataDir(), filepath.Join(dir, "mnt", DataDirName); got != want {
				t.Errorf("DataDir() = %q; want %q", got, want)
			}
		})
	}
}

func TestCheckAndSetDefaultsRelativePaths(t *testing.T) {
	t.Chdir(t.TempDir())
	v := Volume{Image: "img", Mount: "mnt"}
	if err := v.CheckAndSetDefaults(); err != nil {
		t.Fatalf("CheckAndSetDefaults() error = %v; want nil", err)
	}
	if !filepath.IsAbs(v.Image) || !filepath.IsAbs(v.Mount) {
		t.Errorf("Image, Mount = %q, %q; want absolute paths", v.Image, v.Mount)
	}
}

func TestNeedsGrowMath(t *testing.T) {
	tests := []struct {
		name        string
		total, free uint64
		threshold   float64
		want        bool
	}{
		{"plenty free", 100, 50, 0.10, false},
		{"exactly at threshold", 100, 10, 0.10, false},
		{"below threshold", 100, 9, 0.10, true},
		{"full", 100, 0, 0.10, true},
		{"zero total", 0, 0, 0.10, false},
		{"custom threshold", 100, 20, 0.25, true},
		{"zero threshold means default", 100, 9, 0, true},
		{"negative threshold means default", 100, 11, -1, false},
		{"threshold one means default", 100, 11, 1, false},
		{"NaN threshold means default", 100, 9, math.NaN(), true},
		{"large volume", 20 << 30, 2<<30 - 1, 0.10, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := needsGrow(tt.total, tt.free, tt.threshold); got != tt.want {
				t.Errorf("needsGrow(%d, %d, %v) = %v; want %v", tt.total, tt.free, tt.threshold, got, tt.want)
			}
		})
	}
}
