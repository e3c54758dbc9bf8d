package params

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sys/unix"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/postgres"
)

// A PostgreSQL parameter on a cluster node (issue #18). ALTER SYSTEM
// would change this node alone (postgresql.auto.conf is not replicated
// by Patroni) and be lost at the next failover; the value goes instead
// into Patroni's dynamic configuration in etcd, which every node's
// Patroni writes into its postgresql.conf. Whatever is stored there
// reaches every node's next start as it is, so it is checked by
// PostgreSQL's own parser first (checkValue): an invalid value would make
// every node's postmaster refuse to start at its next restart.

// clusterWait bounds how long SetParameter waits for this node's
// PostgreSQL to show a value stored in the cluster's configuration: the
// Patroni that was asked applies it at once (it wakes its loop); the
// others at their next cycle (loop_wait, 10 s by default).
var clusterWait = 15 * time.Second

// checkTimeout bounds `postgres -C`, which reads one line and exits.
const checkTimeout = 10 * time.Second

func (c *Controller) setClusterParam(ctx context.Context, name, value string) (apitype.ParameterValue, error) {
	if hasControl(value) {
		return apitype.ParameterValue{}, clienterr.New(apitype.CodeInvalid, "invalid value for parameter %q: control characters are not allowed on a cluster node", name)
	}
	canonical, shown, err := c.checkValue(ctx, name, value)
	if err != nil {
		return apitype.ParameterValue{}, err
	}
	if err := c.c.ClusterSet(ctx, name, canonical); err != nil {
		if _, ok := clienterr.As(err); ok {
			return apitype.ParameterValue{}, err
		}
		return apitype.ParameterValue{}, clienterr.New(apitype.CodeUnavailable, "storing the parameter in the cluster's configuration: %v", err)
	}
	// Stored in etcd: every node takes it, whatever this node shows next.
	c.c.Log.Info("PostgreSQL parameter stored in the cluster's configuration.", "name", name)
	c.c.Audit(audit.Event{Type: "parameter.set", Outcome: audit.OutcomeSuccess,
		Fields: map[string]any{"name": name, "value": audit.Redact(value), "cluster": true}})
	ctx, cancel := context.WithTimeout(ctx, clusterWait)
	defer cancel()
	for {
		v, err := scanSetting(c.c.Pool().QueryRow(ctx, sqlSettingByName, name))
		switch {
		case err == nil && (slices.Contains(shown, v.Value) || v.PendingRestart):
			return v, nil
		case ctx.Err() != nil:
			return apitype.ParameterValue{}, clienterr.New(apitype.CodeUnavailable,
				"parameter %q is stored in the cluster's configuration, but this node's PostgreSQL does not show it after %s (Patroni applies it at its next cycle; a value set on this node with ALTER SYSTEM would hide it): check with 'pgshield parameter show %s'",
				name, clusterWait, name)
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// hasControl: Patroni writes a value between single quotes into
// postgresql.conf, where a line break ends the line and with it the whole
// file's validity.
func hasControl(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

// checkValue asks PostgreSQL whether value is valid for name without
// applying it anywhere, and returns it in PostgreSQL's canonical form
// (integers in the parameter's base unit, enums and booleans in their
// own spelling), which is what is sent to Patroni: Patroni runs its own
// parsers over the value (int(), parse_int) and leaves out silently what
// they cannot read, such as "1e3" for max_connections, which PostgreSQL
// accepts. shown are the forms pg_settings will show once it is in force.
//
// Two checks. A parameter a session may set (context user or superuser)
// is set with set_config in a transaction that is rolled back, which
// runs the check hooks of the libraries this server has loaded
// (pgaudit.log). Then, for every parameter, `postgres -C name` reads a
// configuration file holding just that line, written as Patroni writes
// it: the parser and checks of the same binary that will read the
// node's postgresql.conf, including what a session cannot set
// (shared_buffers, checkpoint_timeout). The file is in memory (memfd),
// given as standard input: the value never reaches an argument list, an
// environment or a disk. (A pipe would not do: PostgreSQL reads its
// configuration file twice.)
func (c *Controller) checkValue(ctx context.Context, name, value string) (canonical string, shown []string, err error) {
	var pgctx string
	if err := c.c.Pool().QueryRow(ctx, sqlSettingContext, name).Scan(&pgctx); err != nil {
		return "", nil, clienterr.New(apitype.CodeUnavailable, "PostgreSQL is not available: %v", err)
	}
	if pgctx == "user" || pgctx == "superuser" {
		s, err := c.trySession(ctx, name, value)
		if err != nil {
			return "", nil, err
		}
		shown = append(shown, s)
	}
	canonical, err = checkWithPostgres(ctx, c.c.Cluster, name, value)
	if err != nil {
		return "", nil, err
	}
	return canonical, append(shown, canonical), nil
}

// checkWithPostgres is `postgres -C name` of cl's binary, as cl's OS
// user, reading name = 'value' (as Patroni writes it) from an in-memory
// file: PostgreSQL's canonical form of value, or its reason (CodeInvalid).
func checkWithPostgres(ctx context.Context, cl *postgres.Cluster, name, value string) (string, error) {
	conf, err := memFile("pgshield-parameter", confLine(name, value), cl.User.UID, cl.User.GID)
	if err != nil {
		return "", fmt.Errorf("checking the value: %w", err)
	}
	defer conf.Close()
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	cmd := cl.User.Command(cl.Bin("postgres"), configCheckArgs(name)...)
	cmd.Stdin = conf
	// What a process running as PostgreSQL's OS user prints is bounded
	// and checked like any input.
	var out, stderr capped
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := startWait(ctx, cmd); err != nil {
		if msg := fatalMessage(stderr.String()); msg != "" {
			return "", clienterr.New(apitype.CodeInvalid, "%s", msg)
		}
		return "", fmt.Errorf("checking the value with postgres -C: %w", err)
	}
	canonical, ok := strings.CutSuffix(out.String(), "\n")
	if !ok || out.over || hasControl(canonical) {
		return "", errors.New("checking the value with postgres -C: unexpected output")
	}
	return canonical, nil
}

// capped keeps the first maxCheckOutput bytes written to it.
type capped struct {
	bytes.Buffer
	over bool
}

const maxCheckOutput = 64 << 10

func (c *capped) Write(p []byte) (int, error) {
	if room := maxCheckOutput - c.Len(); len(p) > room {
		c.over = true
		c.Buffer.Write(p[:max(room, 0)])
		return len(p), nil
	}
	return c.Buffer.Write(p)
}

// memFile is an anonymous in-memory file holding body, readable by
// uid:gid only, at offset 0.
func memFile(name, body string, uid, gid uint32) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), name)
	_, err = f.WriteString(body)
	if err == nil {
		err = f.Chown(int(uid), int(gid))
	}
	if err == nil {
		err = f.Chmod(0o400)
	}
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// startWait runs cmd, killed when ctx ends.
func startWait(ctx context.Context, cmd *exec.Cmd) error {
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-done
		return ctx.Err()
	}
}

// configCheckArgs make `postgres -C` read its configuration from standard
// input and nothing else: data_directory names a path nobody can create
// (so no postgresql.auto.conf is merged in), and the hba and ident files
// are required to be named, not read.
func configCheckArgs(name string) []string {
	return []string{"-C", name, "-c", "config_file=/dev/stdin", "-c", "data_directory=/proc/self/pgshield-none",
		"-c", "hba_file=/dev/null", "-c", "ident_file=/dev/null"}
}

// confLine is name = 'value' as Patroni 3.0.2 writes it into
// postgresql.conf (ConfigWriter.escape doubles quotes and backslashes).
func confLine(name, value string) string {
	return name + " = '" + strings.NewReplacer(`'`, `''`, `\`, `\\`).Replace(value) + "'\n"
}

// fatalMessage is PostgreSQL's reason from `postgres -C`'s standard error
// ("LOG:  invalid value for parameter ...", its HINT), without the log
// line prefix nor the lines about the check's own files.
func fatalMessage(stderr string) string {
	var parts []string
	for _, line := range strings.Split(stderr, "\n") {
		for _, tag := range []string{"LOG:", "FATAL:", "ERROR:", "DETAIL:", "HINT:"} {
			_, rest, ok := strings.Cut(line, tag)
			if rest = strings.TrimSpace(rest); !ok || rest == "" || strings.HasPrefix(rest, "skipping missing configuration file") ||
				strings.HasPrefix(rest, `configuration file "/dev/stdin"`) {
				continue
			}
			parts = append(parts, rest)
			break
		}
	}
	return strings.ToValidUTF8(strings.Join(parts, " "), "?")
}

// trySession sets the parameter in a transaction it rolls back, and
// returns pg_settings' form of the value (after the parameter's show
// hook: "UTC" for timezone 'utc').
func (c *Controller) trySession(ctx context.Context, name, value string) (string, error) {
	tx, err := c.c.Pool().Begin(ctx)
	if err != nil {
		return "", clienterr.New(apitype.CodeUnavailable, "PostgreSQL is not available: %v", err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	if _, err := tx.Exec(ctx, sqlTrySetting, name, value); err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) {
			return "", clienterr.New(apitype.CodeInvalid, "%s", pe.Message)
		}
		return "", clienterr.New(apitype.CodeUnavailable, "PostgreSQL is not available: %v", err)
	}
	v, err := scanSetting(tx.QueryRow(ctx, sqlSettingByName, name))
	if err != nil {
		return "", clienterr.New(apitype.CodeUnavailable, "PostgreSQL is not available: %v", err)
	}
	return v.Value, nil
}
