package storage

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// TestNew checks which backend each configuration gets and what it says it
// can do. New touches nothing on disk, so this needs no root.
func TestNew(t *testing.T) {
	dir := t.TempDir()
	base := Options{
		Mount:     filepath.Join(dir, "volume"),
		Image:     filepath.Join(dir, "storage", "volume.img"),
		CipherDir: filepath.Join(dir, "storage", "gocryptfs"),
	}
	with := func(f func(*Options)) Options { o := base; f(&o); return o }
	path := filepath.Join(dir, "disk")
	tests := []struct {
		name       string
		opts       Options
		kind       string
		desc       string // substring of Description
		resizable  bool
		wantStatus Status
		exits      bool // Exited is a channel that can fire
	}{
		{name: "default is fscrypt on an image", opts: base, kind: BackendFscrypt, desc: "fscrypt (AES-256-XTS", resizable: true,
			wantStatus: Status{Image: base.Image}},
		{name: "fscrypt on an image", opts: with(func(o *Options) { o.Kind = BackendFscrypt }), kind: BackendFscrypt, desc: "fscrypt", resizable: true,
			wantStatus: Status{Image: base.Image}},
		{name: "fscrypt on a storage path", opts: with(func(o *Options) { o.Kind, o.Path = BackendFscrypt, path }), kind: BackendFscrypt, desc: "fscrypt (AES-256-XTS contents, AES-256-CTS names) on " + path,
			wantStatus: Status{Path: path, FixedSize: "the storage path's filesystem is managed outside pgshield"}},
		{name: "gocryptfs", opts: with(func(o *Options) { o.Kind = BackendGocryptfs }), kind: BackendGocryptfs, desc: GocryptfsDescription, exits: true,
			wantStatus: Status{CipherDir: base.CipherDir, FixedSize: "gocryptfs keeps its ciphertext as files on the host filesystem, which grow with the data"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := New(tt.opts)
			if err != nil {
				t.Fatalf("New(%+v) error = %v; want nil", tt.opts, err)
			}
			if got := b.Kind(); got != tt.kind {
				t.Errorf("Kind() = %q; want %q", got, tt.kind)
			}
			if got := b.Description(); !strings.Contains(got, tt.desc) {
				t.Errorf("Description() = %q; want it to contain %q", got, tt.desc)
			}
			err = b.CanResize()
			if tt.resizable != (err == nil) {
				t.Errorf("CanResize() = %v; want resizable %v", err, tt.resizable)
			}
			if !tt.resizable {
				if !errors.Is(err, ErrNotResizable) {
					t.Errorf("CanResize() = %v; want it to match ErrNotResizable", err)
				}
				if _, _, err := b.Size(); !errors.Is(err, ErrNotResizable) {
					t.Errorf("Size() error = %v; want ErrNotResizable", err)
				}
				if err := b.Resize(context.Background(), 1<<30); !errors.Is(err, ErrNotResizable) {
					t.Errorf("Resize() error = %v; want ErrNotResizable", err)
				}
			}
			// Nothing is attached: no loop device, no process.
			if got := b.Status(context.Background()); got != tt.wantStatus {
				t.Errorf("Status() = %+v; want %+v", got, tt.wantStatus)
			}
			if got := b.Exited() != nil; got != tt.exits {
				t.Errorf("Exited() != nil is %v; want %v", got, tt.exits)
			}
		})
	}
}

func TestNewRefuses(t *testing.T) {
	dir := t.TempDir()
	mnt, img := filepath.Join(dir, "volume"), filepath.Join(dir, "volume.img")
	tests := []struct {
		name    string
		opts    Options
		wantErr string
	}{
		{name: "unknown kind", opts: Options{Kind: "zfs", Mount: mnt, Image: img}, wantErr: `backend "zfs"`},
		{name: "gocryptfs with a storage path", opts: Options{Kind: BackendGocryptfs, Mount: mnt, CipherDir: img, Path: dir}, wantErr: "no storage path"},
		{name: "gocryptfs without a cipher directory", opts: Options{Kind: BackendGocryptfs, Mount: mnt}, wantErr: "CipherDir"},
		{name: "fscrypt without a mount point", opts: Options{Image: img}, wantErr: "Mount is required"},
		{name: "fscrypt image under the mount point", opts: Options{Mount: mnt, Image: filepath.Join(mnt, "img")}, wantErr: "must not live under"},
		{name: "fscrypt with a bad size", opts: Options{Mount: mnt, Image: img, Size: 1 << 20}, wantErr: "below the minimum"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := New(tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New(%+v) = %v, %v; want an error containing %q", tt.opts, b, err, tt.wantErr)
			}
		})
	}
}

func TestReadyError(t *testing.T) {
	boom := errors.New("boom")
	if err := readyError(true, nil, "locked"); err != nil {
		t.Errorf("readyError(present) = %v; want nil", err)
	}
	if err := readyError(false, nil, "encrypted volume is locked"); err == nil || err.Error() != "encrypted volume is locked" {
		t.Errorf("readyError(absent) = %v; want the locked text", err)
	}
	if err := readyError(false, boom, "locked"); !errors.Is(err, boom) || !strings.HasPrefix(err.Error(), "encrypted volume is not available: ") {
		t.Errorf("readyError(error) = %v; want it wrapped as not available", err)
	}
}
