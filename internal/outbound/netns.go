package outbound

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// openNetns opens the network namespace of pid (the postmaster, which
// runs as postgres) without CAP_SYS_PTRACE: opening /proc/PID/ns/net is a
// ptrace read access check on the caller's file-system credentials, which
// passes when they are the target's own user and group. So the file is
// opened on a thread whose fsuid and fsgid are the postmaster's, and the
// service unit's capability set can leave CAP_SYS_PTRACE out.
func openNetns(pid int) (*os.File, error) {
	uid, gid, err := procIDs(pid)
	if err != nil {
		return nil, err
	}
	type result struct {
		f   *os.File
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// The thread's credentials change: it is locked to this goroutine
		// and, if they cannot be put back, ends with it (no UnlockOSThread).
		runtime.LockOSThread()
		f, err := openAs(pid, uid, gid)
		restored := setfs(0, 0) == nil
		ch <- result{f, err}
		if restored {
			runtime.UnlockOSThread()
		}
	}()
	r := <-ch
	return r.f, r.err
}

func openAs(pid, uid, gid int) (*os.File, error) {
	if err := setfs(uid, gid); err != nil {
		return nil, err
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return nil, fmt.Errorf("PostgreSQL's network namespace: %w", err)
	}
	return f, nil
}

// setfs sets this thread's fsgid and fsuid and checks that they took
// (setfsuid reports no error, only the previous value).
func setfs(uid, gid int) error {
	_, _ = unix.SetfsgidRetGid(gid)
	_, _ = unix.SetfsuidRetUid(uid)
	// An invalid ID changes nothing and returns the current one.
	if cur, _ := unix.SetfsgidRetGid(-1); cur != gid {
		return fmt.Errorf("setfsgid(%d): still %d", gid, cur)
	}
	if cur, _ := unix.SetfsuidRetUid(-1); cur != uid {
		return fmt.Errorf("setfsuid(%d): still %d", uid, cur)
	}
	return nil
}

// procIDs is pid's user and group, which must be the same real, effective
// and saved IDs (the ptrace check compares all three).
func procIDs(pid int) (uid, gid int, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	ids := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "Uid" && k != "Gid") {
			continue
		}
		f := strings.Fields(v)
		if len(f) < 3 || f[0] != f[1] || f[0] != f[2] {
			return 0, 0, fmt.Errorf("process %d: %s %q: real, effective and saved differ", pid, k, v)
		}
		n, err := strconv.Atoi(f[0])
		if err != nil {
			return 0, 0, err
		}
		ids[k] = n
	}
	u, okU := ids["Uid"]
	g, okG := ids["Gid"]
	if !okU || !okG {
		return 0, 0, errors.New("process " + strconv.Itoa(pid) + ": no Uid or Gid in its status")
	}
	return u, g, nil
}

// runInNetns runs args (ip ...) in the network namespace ns through
// nsenter, which is handed the namespace as its descriptor 3.
func runInNetns(ns *os.File, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=/proc/self/fd/3"}, args...)...)
	cmd.ExtraFiles = []*os.File{ns}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("nsenter %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}
