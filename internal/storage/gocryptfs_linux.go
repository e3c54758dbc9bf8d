package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// gocryptfsMountArgs are the flags of every mount (gocryptfs 2.3, Debian 12).
//
//   - -fg: stay in the foreground as our child, so that we see it die.
//   - -nosyslog: its messages come to us on stdout/stderr (Log).
//   - -allow_other: PostgreSQL runs as another user. Mounted by root,
//     gocryptfs then also sets default_permissions: the kernel checks the
//     modes and owners, which mirror the ciphertext files'.
//   - -nosuid -nodev -noexec: as on the fscrypt volume.
//   - -kernel_cache: keep the page cache of a file across opens. Safe
//     because nothing but this mount writes the cipher directory, and the
//     largest win for reads (PostgreSQL reopens its segment files often).
//     Writes still go through to gocryptfs at once (no writeback cache), and
//     fsync reaches the ciphertext files: gocryptfs fsyncs the backing file
//     before it answers, so what PostgreSQL has synced survives the death of
//     the process.
//   - preallocation stays on (no -noprealloc): gocryptfs reserves the
//     blocks of a write before it writes, so a full host filesystem fails
//     the write cleanly instead of leaving a torn ciphertext block.
//   - -passfile /dev/fd/3: the password, from a pipe (added per call).
var gocryptfsMountArgs = []string{"-fg", "-nosyslog", "-allow_other", "-nosuid", "-nodev", "-noexec", "-kernel_cache"}

// gocryptfs exit codes that mean something to us (its internal/exitcodes).
const gocryptfsExitPasswordIncorrect = 12

// fuseType is the mountinfo type of a gocryptfs mount.
const fuseType = "fuse.gocryptfs"

func (g *Gocryptfs) program() (string, error) {
	name := g.Program
	if name == "" {
		name = "gocryptfs"
	}
	if strings.ContainsRune(name, '/') {
		return name, nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	if p := filepath.Join("/usr/bin", name); fileExecutable(p) {
		return p, nil
	}
	return "", fmt.Errorf("storage: %s not found (apt-get install gocryptfs): %w", name, exec.ErrNotFound)
}

func fileExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// passPipe returns the read end of a pipe that holds the password derived
// from key, then EOF. The password is far below the pipe's capacity, so
// writing it before the child starts cannot block.
func passPipe(key []byte) (*os.File, error) {
	pw, err := gocryptfsPassword(key)
	if err != nil {
		return nil, err
	}
	defer clear(pw)
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	_, err = w.Write(pw)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("storage: password pipe: %w", err)
	}
	return r, nil
}

// mountState of Mount: nothing, a gocryptfs mount of CipherDir (live or
// dead), or something else.
func (g *Gocryptfs) mountStateLocked() mountState {
	e, ok := mountAt(g.Mount)
	switch {
	case !ok:
		return notMounted
	case e.fstype == fuseType && e.source == g.CipherDir:
		return mountedOurs
	default:
		return mountedOther
	}
}

// aliveLocked reports whether our process serves Mount and answers.
func (g *Gocryptfs) aliveLocked() bool {
	p := g.proc
	if p == nil || p.exited() || g.mountStateLocked() != mountedOurs {
		return false
	}
	var s unix.Statfs_t
	return statfsFUSE(g.Mount, &s) == nil
}

// Alive reports whether the volume is mounted by a live gocryptfs process of
// ours that answers: the gocryptfs counterpart of an unlocked volume.
func (g *Gocryptfs) Alive() (bool, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.CheckAndSetDefaults(); err != nil {
		return false, err
	}
	return g.aliveLocked(), nil
}

// Create initializes an empty (or missing) CipherDir with `gocryptfs
// -init` (AES-256-GCM, the default), mounts it and makes DataDir (0700).
// It refuses a CipherDir that holds anything. On failure it removes the
// CipherDir it made.
func (g *Gocryptfs) Create(ctx context.Context, key []byte) (err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.CheckAndSetDefaults(); err != nil {
		return err
	}
	if len(key) != KeySize {
		return ErrKeySize
	}
	entries, err := os.ReadDir(g.CipherDir)
	switch {
	case err == nil && len(entries) > 0:
		return fmt.Errorf("%w: %s", ErrCipherDirExists, g.CipherDir)
	case err == nil:
	case errors.Is(err, fs.ErrNotExist):
		if err := os.Mkdir(g.CipherDir, 0o711); err != nil {
			return fmt.Errorf("storage: cipher directory: %w", err)
		}
	default:
		return fmt.Errorf("storage: cipher directory: %w", err)
	}
	defer func() {
		if err != nil {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
			defer cancel()
			if uerr := g.unmountLocked(cctx, true); uerr != nil {
				g.Log.Error("Failed to unmount after failed creation; cipher directory kept.", "error", uerr)
				return
			}
			_ = os.RemoveAll(g.CipherDir)
		}
	}()
	// The mount root shows CipherDir's mode: PostgreSQL must traverse it.
	if err := os.Chmod(g.CipherDir, 0o711); err != nil {
		return fmt.Errorf("storage: cipher directory: %w", err)
	}
	if err := g.initLocked(ctx, key); err != nil {
		return err
	}
	if err := g.startLocked(ctx, key); err != nil {
		return err
	}
	if err := os.Mkdir(g.DataDir(), 0o700); err != nil {
		return fmt.Errorf("storage: data directory: %w", err)
	}
	if err := syncPath(g.CipherDir); err != nil {
		return err
	}
	g.Log.InfoContext(ctx, "Created gocryptfs volume.", "cipher_dir", g.CipherDir, "mount", g.Mount)
	return nil
}

// initLocked runs `gocryptfs -init`. Its stdout is discarded: on a
// terminal gocryptfs would print the master key there.
func (g *Gocryptfs) initLocked(ctx context.Context, key []byte) error {
	prog, err := g.program()
	if err != nil {
		return err
	}
	r, err := passPipe(key)
	if err != nil {
		return err
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(ctx, g.ReadyTimeout)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, prog, "-init", "-q", "-passfile", "/dev/fd/3", "--", g.CipherDir)
	cmd.Env = toolEnv
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	cmd.ExtraFiles = []*os.File{r}
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > maxToolOutput {
			msg = msg[:maxToolOutput] + "..."
		}
		return fmt.Errorf("storage: gocryptfs -init %s: %w: %s", g.CipherDir, err, msg)
	}
	return nil
}

// Open starts gocryptfs on CipherDir at Mount and waits until the mount
// answers. It is a no-op when our process already serves it. A mount left
// behind (by a gocryptfs that died, or by an earlier pgshield) is unmounted
// first. A key that does not open CipherDir is ErrWrongKey.
func (g *Gocryptfs) Open(ctx context.Context, key []byte) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.CheckAndSetDefaults(); err != nil {
		return err
	}
	if len(key) != KeySize {
		return ErrKeySize
	}
	if g.aliveLocked() {
		return nil
	}
	if _, err := os.Stat(filepath.Join(g.CipherDir, "gocryptfs.conf")); err != nil {
		return fmt.Errorf("%w: %s has no gocryptfs.conf: %v", ErrNotProvisioned, g.CipherDir, err)
	}
	if err := g.unmountLocked(ctx, true); err != nil {
		return err
	}
	return g.startLocked(ctx, key)
}

// startLocked starts the gocryptfs process and waits for the mount.
func (g *Gocryptfs) startLocked(ctx context.Context, key []byte) error {
	prog, err := g.program()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(g.Mount, 0o700); err != nil {
		return fmt.Errorf("storage: mount point: %w", err)
	}
	r, err := passPipe(key)
	if err != nil {
		return err
	}
	out := &tailWriter{log: g.Log, prefix: "gocryptfs says."}
	args := append(append([]string(nil), gocryptfsMountArgs...), "-passfile", "/dev/fd/3", "--", g.CipherDir, g.Mount)
	cmd := exec.Command(prog, args...)
	cmd.Env = toolEnv
	cmd.Stdout, cmd.Stderr = out, out
	cmd.ExtraFiles = []*os.File{r}
	// Its own process group: a Ctrl-C aimed at `pgshield up --foreground`
	// must not unmount the volume under a PostgreSQL still shutting down.
	// No parent-death signal either, for the same reason: if pgshield
	// dies, PostgreSQL finishes its shutdown through this mount, and the
	// next pgshield takes the mount over (Open).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	r.Close()
	if err != nil {
		return fmt.Errorf("storage: starting gocryptfs: %w", err)
	}
	p := &gocryptfsProc{cmd: cmd, done: make(chan struct{}), out: out}
	g.proc = p
	g.last.Store(int64(cmd.Process.Pid))
	go g.wait(p)

	deadline := time.NewTimer(g.ReadyTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	abort := func(why error) error {
		p.stopping.Store(true)
		_ = cmd.Process.Kill()
		<-p.done
		if g.mountStateLocked() == mountedOurs {
			_ = unix.Unmount(g.Mount, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW)
		}
		g.proc = nil
		return why
	}
	for {
		select {
		case <-p.done:
			g.proc = nil
			if cmd.ProcessState.ExitCode() == gocryptfsExitPasswordIncorrect {
				return fmt.Errorf("%w: gocryptfs cannot open %s with it", ErrWrongKey, g.CipherDir)
			}
			return fmt.Errorf("%w while mounting (%v): %s", ErrGocryptfsExited, p.err, out.String())
		case <-ctx.Done():
			return abort(ctx.Err())
		case <-deadline.C:
			return abort(fmt.Errorf("storage: gocryptfs did not mount %s within %s: %s", g.Mount, g.ReadyTimeout, out.String()))
		case <-tick.C:
			if g.mountStateLocked() != mountedOurs {
				continue
			}
			var s unix.Statfs_t
			if statfsFUSE(g.Mount, &s) == nil {
				p.ready()
				g.Log.InfoContext(ctx, "Mounted gocryptfs volume.", "pid", cmd.Process.Pid, "cipher_dir", g.CipherDir, "mount", g.Mount)
				return nil
			}
		}
	}
}

// ready marks the process as serving: from now on an exit it was not asked
// for is reported.
func (p *gocryptfsProc) ready() { p.isReady.Store(true) }

// wait reaps the process and reports an exit nobody asked for.
func (g *Gocryptfs) wait(p *gocryptfsProc) {
	p.err = p.cmd.Wait()
	close(p.done)
	pid := p.cmd.Process.Pid
	if p.stopping.Load() || !p.isReady.Load() {
		g.Log.Info("gocryptfs exited.", "pid", pid, "exit", p.cmd.ProcessState.String())
		return
	}
	g.notifyExit(p)
}

func (g *Gocryptfs) notifyExit(p *gocryptfsProc) {
	if !p.reported.CompareAndSwap(false, true) {
		return
	}
	g.stats.Add(1)
	err := fmt.Errorf("%w unexpectedly (pid %d, %s)", ErrGocryptfsExited, p.cmd.Process.Pid, p.cmd.ProcessState.String())
	g.Log.Error("gocryptfs exited unexpectedly; the volume is unavailable until it is remounted.",
		"pid", p.cmd.Process.Pid, "exit", p.cmd.ProcessState.String(), "output", p.out.String())
	select {
	case g.exits <- err:
	default: // one notice is pending already
	}
}

// Unmount unmounts the volume and waits for gocryptfs to exit; the key then
// exists nowhere on the host. Files still open make it return ErrFilesBusy
// with everything still mounted: close them (stop PostgreSQL) and call it
// again. Unmounting an unmounted volume is a no-op.
func (g *Gocryptfs) Unmount(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.CheckAndSetDefaults(); err != nil {
		return err
	}
	return g.unmountLocked(ctx, false)
}

// ForceUnmount is Unmount for a volume whose gocryptfs died or hangs: it
// kills the process, and when files are still open it detaches the mount
// lazily (the kernel finishes once they are closed) instead of failing.
func (g *Gocryptfs) ForceUnmount(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.CheckAndSetDefaults(); err != nil {
		return err
	}
	return g.unmountLocked(ctx, true)
}

func (g *Gocryptfs) unmountLocked(ctx context.Context, force bool) error {
	p := g.proc
	st := g.mountStateLocked()
	if st == mountedOther {
		return fmt.Errorf("%w: %s", ErrMountBusy, g.Mount)
	}
	if p != nil {
		p.stopping.Store(true)
		if force && !p.exited() {
			_ = p.cmd.Process.Kill()
		}
	}
	if st == mountedOurs {
		if err := g.umountLocked(ctx, force); err != nil {
			if p != nil && errors.Is(err, ErrFilesBusy) {
				p.stopping.Store(false)
				if p.exited() && p.isReady.Load() {
					g.notifyExit(p) // died while we were trying
				}
			}
			return err
		}
	}
	if p != nil {
		reap(p, 10*time.Second)
		g.proc = nil
	}
	if st == mountedOurs || p != nil {
		g.Log.InfoContext(ctx, "Unmounted gocryptfs volume.", "mount", g.Mount, "forced", force)
	}
	return nil
}

// umountLocked unmounts Mount. Busy, a forced unmount retries for a moment
// (processes that just exited may still hold files) and then detaches
// lazily; an orderly one returns ErrFilesBusy.
func (g *Gocryptfs) umountLocked(ctx context.Context, force bool) error {
	tries := 1
	if force {
		tries = 20
	}
	var err error
	for i := 0; i < tries; i++ {
		err = unix.Unmount(g.Mount, unix.UMOUNT_NOFOLLOW)
		if err == nil || err == unix.EINVAL || err == unix.ENOENT { // EINVAL: not mounted (any more)
			return nil
		}
		if err != unix.EBUSY {
			return fmt.Errorf("storage: unmount %s: %w", g.Mount, err)
		}
		if i+1 < tries {
			select {
			case <-ctx.Done():
				i = tries
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	if !force {
		return ErrFilesBusy
	}
	g.Log.WarnContext(ctx, "Volume busy; detaching the gocryptfs mount lazily.", "mount", g.Mount)
	if err := unix.Unmount(g.Mount, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil && err != unix.EINVAL {
		return fmt.Errorf("storage: lazy unmount %s: %w", g.Mount, err)
	}
	return nil
}

// reap waits for p to exit after its unmount, then asks, then kills.
func reap(p *gocryptfsProc, timeout time.Duration) {
	for _, sig := range []syscall.Signal{0, syscall.SIGTERM, syscall.SIGKILL} {
		if sig != 0 {
			_ = p.cmd.Process.Signal(sig)
		}
		select {
		case <-p.done:
			return
		case <-time.After(timeout):
		}
	}
	<-p.done
}

// Usage returns the size and free space of the host filesystem that holds
// the ciphertext, as the mount reports it.
func (g *Gocryptfs) Usage() (total, free uint64, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.CheckAndSetDefaults(); err != nil {
		return 0, 0, err
	}
	if !g.aliveLocked() {
		return 0, 0, fmt.Errorf("%w: %s", ErrNotMounted, g.Mount)
	}
	var s unix.Statfs_t
	if err := statfsFUSE(g.Mount, &s); err != nil {
		return 0, 0, &fs.PathError{Op: "statfs", Path: g.Mount, Err: err}
	}
	bs := uint64(s.Bsize)
	return s.Blocks * bs, s.Bavail * bs, nil
}

// statfsFUSE is statfs on a FUSE mount: a signal (the Go runtime preempts
// goroutines with SIGURG) interrupts a request waiting for gocryptfs with
// EINTR, which only means "ask again". Bounded.
func statfsFUSE(path string, s *unix.Statfs_t) error {
	var err error
	for range 32 {
		if err = unix.Statfs(path, s); err != unix.EINTR {
			return err
		}
	}
	return err
}
