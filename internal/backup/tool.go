package backup

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Tool runs pgbackrest with one configuration file.
type Tool struct {
	// Command makes the child process: postgres.OSUser.Command, so that
	// pgBackRest runs as the postgres OS user with a minimal environment.
	Command func(name string, args ...string) *exec.Cmd
	// Config is the configuration file (on the encrypted volume).
	Config string
	Log    *slog.Logger
}

// Error is a failed pgbackrest run.
type Error struct {
	// Command is the pgbackrest command (backup, restore, ...).
	Command string
	// Code is pgBackRest's exit code (its error number), -1 if killed.
	Code int
	// Output is the end of what it printed, without secrets.
	Output string
}

func (e *Error) Error() string {
	if e.Output == "" {
		return fmt.Sprintf("pgbackrest %s failed (exit %d)", e.Command, e.Code)
	}
	return fmt.Sprintf("pgbackrest %s failed (exit %d): %s", e.Command, e.Code, e.Output)
}

// Bounds on what is kept of a run's output.
const (
	tailLines  = 12
	maxLineLen = 8 << 10
)

// progressRE matches the percentage pgBackRest prints at log level detail
// for each file it copies: "backup file /p/base/1/1259 (96KB, 12.34%) ...".
var progressRE = regexp.MustCompile(`(?:backup|restore) file .*\([^()]*, ([0-9]{1,3}(?:\.[0-9]+)?)%\)`)

// ParseProgress returns the percentage a detail line of backup or restore
// reports, if it reports one.
func ParseProgress(line string) (float64, bool) {
	m := progressRE.FindStringSubmatch(line)
	if m == nil {
		return 0, false
	}
	p, err := strconv.ParseFloat(m[1], 64)
	if err != nil || p < 0 || p > 100 {
		return 0, false
	}
	return p, true
}

var labelRE = regexp.MustCompile(`new backup label = ([0-9]{8}-[0-9]{6}F(?:_[0-9]{8}-[0-9]{6}[DI])?)\b`)

// ParseLabel returns the label of the new backup from the line that
// announces it.
func ParseLabel(line string) (string, bool) {
	m := labelRE.FindStringSubmatch(line)
	if m == nil {
		return "", false
	}
	return m[1], true
}

// run runs `pgbackrest --config=C --stanza=pgshield args...`. Each line it
// prints goes to onLine (if set); stdout is also returned when keepStdout.
// Lines naming the passphrase option are dropped from any kept output
// unless pgBackRest already redacted them (it does).
func (t *Tool) run(ctx context.Context, keepStdout bool, onLine func(string), args ...string) ([]byte, error) {
	if t.Command == nil || t.Config == "" {
		return nil, errors.New("backup: Tool needs Command and Config")
	}
	cmdName := ""
	for _, a := range args {
		if !strings.HasPrefix(a, "-") {
			cmdName = a
			break
		}
	}
	cmd := t.Command(Bin, append([]string{"--config=" + t.Config, "--stanza=" + Stanza}, args...)...)
	if cmd.SysProcAttr == nil || !cmd.SysProcAttr.Setpgid {
		return nil, errors.New("backup: Command must start pgbackrest in a process group of its own")
	}
	// pgBackRest ends if pgshield dies: it holds files on the volume.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGTERM
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting pgbackrest %s: %w", cmdName, err)
	}
	// pgBackRest forks worker processes (process-max) into its process
	// group: cancelling ctx stops them all, SIGTERM first (pgBackRest then
	// releases its locks), SIGKILL 30 s later.
	exited := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
		case <-exited:
			return
		}
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
	}()
	var (
		mu   sync.Mutex
		tail []string
		out  bytes.Buffer
		wg   sync.WaitGroup
	)
	keep := func(line string) {
		if strings.Contains(line, "cipher-pass") && !strings.Contains(line, "<redacted>") {
			return
		}
		mu.Lock()
		tail = append(tail, CleanMessage(line))
		if len(tail) > tailLines {
			tail = tail[1:]
		}
		mu.Unlock()
	}
	read := func(r io.Reader, isStdout bool) {
		defer wg.Done()
		br := bufio.NewReaderSize(r, maxLineLen)
		for {
			line, err := br.ReadSlice('\n')
			if len(line) > 0 {
				if isStdout && keepStdout {
					if out.Len() < maxInfoSize+1 {
						out.Write(line)
					}
				} else {
					s := strings.TrimRight(string(line), "\r\n")
					keep(s)
					if onLine != nil {
						onLine(s)
					}
				}
			}
			if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
				return
			}
		}
	}
	wg.Add(2)
	go read(stdout, true)
	go read(stderr, false)
	wg.Wait()
	werr := cmd.Wait()
	close(exited)
	if t.Log != nil {
		t.Log.Debug("pgbackrest finished.", "command", cmdName, "took", time.Since(start).Round(time.Millisecond), "error", werr)
	}
	if werr != nil {
		code := -1
		var ee *exec.ExitError
		if errors.As(werr, &ee) {
			code = ee.ExitCode()
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("pgbackrest %s: %w", cmdName, ctx.Err())
		}
		mu.Lock()
		msg := strings.Join(tail, " | ")
		mu.Unlock()
		if keepStdout && msg == "" {
			msg = CleanMessage(out.String())
		}
		return nil, &Error{Command: cmdName, Code: code, Output: msg}
	}
	return out.Bytes(), nil
}

// lockErrorCode is pgBackRest's LockAcquireError: another pgBackRest
// process (an asynchronous archive-push, for one) holds the stanza's lock.
const lockErrorCode = 50

// EnsureStanza creates the stanza in the repository unless it is there.
// PostgreSQL must be running and not in recovery. stanza-create takes the
// archive lock, which an asynchronous archive-push may hold for a moment:
// it is retried for up to 30 s.
func (t *Tool) EnsureStanza(ctx context.Context) error {
	_, err := t.Info(ctx)
	if !errors.Is(err, ErrNoStanza) {
		return err
	}
	for i := 0; ; i++ {
		_, err = t.run(ctx, false, nil, "stanza-create")
		var be *Error
		if !errors.As(err, &be) || be.Code != lockErrorCode || i >= 30 {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// Backup takes a backup of type full, diff or incr (pgBackRest turns a
// diff or incr into a full when there is no full yet), then expires
// backups and WAL older than retentionDays of point-in-time restore.
// progress, if set, gets the percentage copied as it grows. It returns the
// new backup's label.
func (t *Tool) Backup(ctx context.Context, typ string, retentionDays int, progress func(float64)) (string, error) {
	switch typ {
	case "full", "diff", "incr":
	default:
		return "", fmt.Errorf("backup type %q: use full, diff or incr", typ)
	}
	if retentionDays < 1 {
		return "", fmt.Errorf("backup retention of %d days: at least 1", retentionDays)
	}
	var label string
	_, err := t.run(ctx, false, func(line string) {
		if p, ok := ParseProgress(line); ok && progress != nil {
			progress(p)
		}
		if l, ok := ParseLabel(line); ok {
			label = l
		}
	}, "--type="+typ, "--log-level-console=detail",
		// Time-based retention keeps every full backup younger than the
		// window plus the newest older one, so any time in the window
		// can be restored; WAL only those backups need goes with them.
		"--repo1-retention-full-type=time", "--repo1-retention-full="+strconv.Itoa(retentionDays),
		"backup")
	if err != nil {
		return "", err
	}
	if label == "" {
		return "", errors.New("pgbackrest backup succeeded but named no backup label")
	}
	return label, nil
}

// Info lists the repository's backups.
func (t *Tool) Info(ctx context.Context) (*Info, error) {
	out, err := t.run(ctx, true, nil, "--output=json", "info")
	if err != nil {
		return nil, err
	}
	return ParseInfo(out, Stanza)
}

// RestoreOptions says where and how far to restore.
type RestoreOptions struct {
	// PGData is the empty data directory to restore into.
	PGData string
	// Plan comes from ChooseBackup.
	Plan Plan
}

// TargetString formats a recovery target time for PostgreSQL's
// recovery_target_time: UTC, microseconds.
func TargetString(t time.Time) string {
	return t.UTC().Format("2006-01-02 15:04:05.999999") + "+00"
}

// Restore restores a backup into an empty data directory and writes the
// recovery settings (restore_command through this Tool's configuration,
// the target, recovery_target_action=promote): PostgreSQL, once started,
// fetches the WAL it needs from the repository, stops at the target and
// promotes.
func (t *Tool) Restore(ctx context.Context, o RestoreOptions, progress func(float64)) error {
	args := []string{"--pg1-path=" + o.PGData, "--set=" + o.Plan.Backup.Label, "--log-level-console=detail"}
	switch o.Plan.Type {
	case RestoreDefault:
		args = append(args, "--type=default")
	case RestoreImmediate:
		args = append(args, "--type=immediate", "--target-action=promote")
	case RestoreTime:
		args = append(args, "--type=time", "--target="+TargetString(o.Plan.Target), "--target-action=promote")
	default:
		return fmt.Errorf("restore type %q", o.Plan.Type)
	}
	_, err := t.run(ctx, false, func(line string) {
		if p, ok := ParseProgress(line); ok && progress != nil {
			progress(p)
		}
	}, append(args, "restore")...)
	return err
}
