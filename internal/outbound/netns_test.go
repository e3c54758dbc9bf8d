package outbound

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// The outbound path enters PostgreSQL's network namespace without
// CAP_SYS_PTRACE, which the service unit leaves out: the namespace's
// process runs as another user, and nsenter -t PID needs the capability
// to open its /proc/PID/ns/net. The test runs itself again under setpriv
// with CAP_SYS_PTRACE out of the bounding set.
func TestNetnsWithoutPtrace(t *testing.T) {
	if pid := os.Getenv("PGSHIELD_NETNS_PID"); pid != "" {
		netnsHelper(t, pid, os.Getenv("PGSHIELD_NETNS_INO"))
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv is not installed")
	}
	// A process of another user in a network namespace of its own, as
	// the postmaster is.
	sleep := exec.Command("sleep", "60")
	sleep.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET,
		Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if err := sleep.Start(); err != nil {
		t.Skip("cannot start a process in a network namespace: ", err)
	}
	t.Cleanup(func() { _ = sleep.Process.Kill(); _ = sleep.Wait() })
	pid := strconv.Itoa(sleep.Process.Pid)
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/"+pid+"/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(setpriv, "--bounding-set=-sys_ptrace", os.Args[0], "-test.run=^TestNetnsWithoutPtrace$", "-test.v")
	cmd.Env = append(os.Environ(), "PGSHIELD_NETNS_PID="+pid, "PGSHIELD_NETNS_INO="+strconv.FormatUint(st.Ino, 10))
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "PASS") {
		t.Fatalf("without CAP_SYS_PTRACE: %v\n%s", err, out)
	}
}

func netnsHelper(t *testing.T, pidStr, ino string) {
	b, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:\t"); ok {
			if eff, err := strconv.ParseUint(v, 16, 64); err != nil || eff&(1<<19) != 0 { // CAP_SYS_PTRACE is 19
				t.Fatalf("CAP_SYS_PTRACE still effective (CapEff %s, %v)", v, err)
			}
		}
	}
	pid, _ := strconv.Atoi(pidStr)
	// What the path did before: refused without the capability.
	if out, err := exec.Command("nsenter", "-t", pidStr, "-n", "true").CombinedOutput(); err == nil {
		t.Fatalf("nsenter -t %s worked without CAP_SYS_PTRACE; the test proves nothing: %s", pidStr, out)
	}
	f, err := openNetns(pid)
	if err != nil {
		t.Fatalf("openNetns: %v", err)
	}
	defer f.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil || strconv.FormatUint(st.Ino, 10) != ino {
		t.Fatalf("opened namespace %d (%v); want %s", st.Ino, err, ino)
	}
	// In it: a fresh namespace holds only lo; the test's own has more.
	var in strings.Builder
	cmd := exec.Command("nsenter", "--net=/proc/self/fd/3", "ip", "-o", "link", "show")
	cmd.ExtraFiles, cmd.Stdout = []*os.File{f}, &in
	if err := cmd.Run(); err != nil || strings.Count(in.String(), "\n") != 1 || !strings.Contains(in.String(), ": lo:") {
		t.Fatalf("links in the namespace: %v %q", err, in.String())
	}
	if err := runInNetns(f, "ip", "link", "set", "lo", "up"); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ip", "-o", "link", "show").Output()
	if err != nil || strings.Count(string(out), "\n") < 2 {
		t.Fatalf("the test's own namespace: %v %s", err, out)
	}
}
