package storage

import (
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// GocryptfsDescription names the gocryptfs backend's cryptography: contents
// in AES-256-GCM (gocryptfs' default), names in AES-256-EME.
const GocryptfsDescription = "gocryptfs (AES-256-GCM contents, AES-256-EME names, FUSE)"

// gocryptfsPasswordInfo separates the gocryptfs password from any other key
// that may ever be derived from the same data key.
const gocryptfsPasswordInfo = "pgshield gocryptfs password v1"

// Errors of the gocryptfs backend.
var (
	// ErrGocryptfsExited means the gocryptfs process ended; the mount is
	// gone or dead ("transport endpoint is not connected").
	ErrGocryptfsExited = errors.New("storage: the gocryptfs process exited")
	// ErrCipherDirExists is returned by Create when the cipher directory
	// already holds something; Create never overwrites.
	ErrCipherDirExists = errors.New("storage: gocryptfs cipher directory is not empty")
)

// Gocryptfs is the FUSE backend, for kernels without fscrypt: the
// ciphertext lives in CipherDir on the host filesystem and a gocryptfs
// process that this package starts in the foreground and watches (gocryptfs
// -fg) serves the decrypted view at Mount. DataDir sits in that view, as
// with a Volume, so callers use the same paths for both.
//
// The gocryptfs password is derived from the volume's 64-byte data key with
// HKDF-SHA-256; it reaches gocryptfs through a pipe on file descriptor 3
// (-passfile /dev/fd/3), never argv or environment. gocryptfs keeps the key
// in its own memory only: once it is unmounted (Unmount) nothing on the host
// can read the data.
//
// If the process dies, the mount stays behind, dead, and Exited reports it;
// call Open again (it clears the dead mount first).
//
// Methods serialize on an internal mutex; a Gocryptfs must not be copied.
type Gocryptfs struct {
	// CipherDir holds the encrypted files and gocryptfs.conf (made 0711, so
	// that the PostgreSQL user may traverse the mount root, whose mode is
	// CipherDir's; put it in a 0700 parent).
	CipherDir string
	// Mount is the mount point; it is created 0700 when missing and must
	// be empty.
	Mount string
	// Program is the gocryptfs binary; default "gocryptfs" from PATH (or
	// /usr/bin).
	Program string
	// ReadyTimeout bounds a mount (scrypt, then FUSE); default 2 minutes.
	ReadyTimeout time.Duration
	// Log receives lifecycle events and gocryptfs' own output. It never
	// receives key material.
	Log *slog.Logger

	mu    sync.Mutex
	proc  *gocryptfsProc // the running process, guarded by mu
	exits chan error     // unexpected exits; see Exited
	once  sync.Once      // makes exits
	last  atomic.Int64   // pid of the latest process, for PID
	stats atomic.Int64   // unexpected exits so far
}

// gocryptfsProc is one gocryptfs process.
type gocryptfsProc struct {
	cmd      *exec.Cmd
	done     chan struct{} // closed when Wait returned
	err      error         // Wait's result; read after done
	stopping atomic.Bool   // an exit now is asked for, not a failure
	isReady  atomic.Bool   // the mount answered once
	reported atomic.Bool   // its unexpected exit was reported
	out      *tailWriter
}

func (p *gocryptfsProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// CheckAndSetDefaults validates the paths and fills in defaults.
func (g *Gocryptfs) CheckAndSetDefaults() error {
	if g.CipherDir == "" || g.Mount == "" {
		return errors.New("storage: gocryptfs needs CipherDir and Mount")
	}
	cd, err := filepath.Abs(g.CipherDir)
	if err != nil {
		return err
	}
	mnt, err := filepath.Abs(g.Mount)
	if err != nil {
		return err
	}
	if mnt == "/" {
		return errors.New("storage: Mount must not be /")
	}
	if cd == mnt || strings.HasPrefix(cd, mnt+string(filepath.Separator)) || strings.HasPrefix(mnt, cd+string(filepath.Separator)) {
		return errors.New("storage: the gocryptfs cipher directory and the mount point must not nest")
	}
	if g.CipherDir != cd {
		g.CipherDir = cd
	}
	if g.Mount != mnt {
		g.Mount = mnt
	}
	if g.ReadyTimeout == 0 {
		g.ReadyTimeout = 2 * time.Minute
	}
	if g.Log == nil {
		g.Log = slog.New(slog.DiscardHandler)
	}
	g.once.Do(func() { g.exits = make(chan error, 1) })
	return nil
}

// DataDir returns Mount/data, where everything that holds customer data goes.
func (g *Gocryptfs) DataDir() string { return filepath.Join(g.Mount, DataDirName) }

// Exited delivers one notice (the exit status) when a gocryptfs process
// exits without Unmount or ForceUnmount having asked; notices do not pile
// up. The mount is then dead until Open (or ForceUnmount).
func (g *Gocryptfs) Exited() <-chan error {
	g.once.Do(func() { g.exits = make(chan error, 1) })
	return g.exits
}

// PID returns the pid of the latest gocryptfs process (0 before the first).
func (g *Gocryptfs) PID() int { return int(g.last.Load()) }

// UnexpectedExits counts the gocryptfs processes that died unasked.
func (g *Gocryptfs) UnexpectedExits() int { return int(g.stats.Load()) }

// gocryptfsPassword derives the gocryptfs password from the data key:
// HKDF-SHA-256 to 32 bytes, hex-encoded (gocryptfs reads one text line),
// with a newline. The caller wipes the result.
func gocryptfsPassword(key []byte) ([]byte, error) {
	if len(key) != KeySize {
		return nil, ErrKeySize
	}
	k, err := hkdf.Key(sha256.New, key, nil, gocryptfsPasswordInfo, 32)
	if err != nil {
		return nil, err
	}
	defer clear(k)
	pw := make([]byte, hex.EncodedLen(len(k))+1)
	hex.Encode(pw, k)
	pw[len(pw)-1] = '\n'
	return pw, nil
}

// tailWriter logs each line a child writes and keeps the last few for
// error messages.
type tailWriter struct {
	log    *slog.Logger
	prefix string
	mu     sync.Mutex
	buf    []byte // partial line
	tail   []string
}

func (w *tailWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := strings.IndexByte(string(w.buf), '\n')
		if i < 0 {
			break
		}
		w.lineLocked(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) > maxToolOutput { // a line without end: log what there is
		w.lineLocked(string(w.buf))
		w.buf = w.buf[:0]
	}
	return len(p), nil
}

func (w *tailWriter) lineLocked(line string) {
	line = strings.TrimSpace(line)
	if line == "" {
		return
	}
	if len(line) > maxToolOutput {
		line = line[:maxToolOutput] + "..."
	}
	if w.log != nil {
		w.log.Info(w.prefix, "output", line)
	}
	w.tail = append(w.tail, line)
	if len(w.tail) > 8 {
		w.tail = w.tail[len(w.tail)-8:]
	}
}

// String returns the last lines written.
func (w *tailWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(w.tail, "; ")
}
