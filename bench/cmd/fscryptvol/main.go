// Command fscryptvol provisions and removes a throw-away fscrypt volume for
// bench/storage.sh, using pgshield's own internal/storage code, so that the
// benchmark measures exactly the volume pgshield runs PostgreSQL on.
//
//	fscryptvol up   -image PATH -mount DIR [-size BYTES]
//	fscryptvol down -image PATH -mount DIR
//
// up creates the sparse image (it must not exist), makes the ext4 filesystem,
// attaches it to a loop device, mounts it at DIR and unlocks it with a fresh
// random 64-byte key from crypto/rand, which encrypts DIR/data with the v2
// policy (AES-256-XTS contents, AES-256-CTS names, PAD_32). The key is held
// only in memory, handed to the kernel and wiped; it is never printed,
// written anywhere or passed to a child process. up prints the data
// directory (DIR/data) on stdout. If anything fails after the image was
// made, up locks and detaches again before exiting non-zero.
//
// down removes the key from the kernel (Lock), unmounts and detaches the
// loop device (Detach). It succeeds on a volume that is already partly or
// fully torn down, so it is safe to call from a cleanup trap more than once.
// Files still open on the volume make it fail (exit 1); stop PostgreSQL
// first.
//
// Exit status: 0 on success, 1 on failure, 2 on bad usage.
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/pgshield/pgshield/internal/storage"
)

const timeout = 2 * time.Minute

func usage(w io.Writer) {
	fmt.Fprintf(w, "usage: fscryptvol up -image PATH -mount DIR [-size BYTES]\n       fscryptvol down -image PATH -mount DIR\n")
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	cmd := args[0]
	fs := flag.NewFlagSet("fscryptvol "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	image := fs.String("image", "", "path of the sparse image file")
	mount := fs.String("mount", "", "mount point")
	size := fs.Int64("size", 4<<30, "image size in bytes (up only; a multiple of 4096)")
	verbose := fs.Bool("v", false, "log volume events to stderr")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if fs.NArg() != 0 || *image == "" || *mount == "" {
		usage(stderr)
		return 2
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	vol := &storage.Volume{Image: *image, Mount: *mount, Size: *size, Log: log}

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	var err error
	switch cmd {
	case "up":
		err = up(ctx, vol)
		if err == nil {
			fmt.Fprintln(stdout, vol.DataDir())
		}
	case "down":
		err = down(ctx, vol)
	default:
		usage(stderr)
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "fscryptvol %s: %v\n", cmd, err)
		return 1
	}
	return 0
}

func up(ctx context.Context, vol *storage.Volume) (err error) {
	if err := vol.Provision(ctx); err != nil {
		return err // Provision removes what it made
	}
	defer func() {
		if err != nil {
			if derr := down(context.WithoutCancel(ctx), vol); derr != nil {
				err = errors.Join(err, fmt.Errorf("tear down after failure: %w", derr))
			}
		}
	}()
	key := make([]byte, storage.KeySize)
	defer clear(key)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("random key: %w", err)
	}
	return vol.Unlock(key)
}

func down(ctx context.Context, vol *storage.Volume) error {
	var errs []error
	switch err := vol.Lock(); {
	case err == nil, errors.Is(err, storage.ErrNotMounted), errors.Is(err, storage.ErrNotProvisioned):
	default:
		// ErrFilesBusy: the key is out of the keyring already; unmounting
		// below fails while the files stay open, which is reported too.
		errs = append(errs, fmt.Errorf("lock: %w", err))
	}
	if err := vol.Detach(ctx); err != nil {
		errs = append(errs, fmt.Errorf("detach: %w", err))
	}
	return errors.Join(errs...)
}
