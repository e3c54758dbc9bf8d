package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// unitValue is the one value of key in a unit's text ("" and false if
// absent or repeated).
func unitValue(unit, key string) (string, bool) {
	var vals []string
	for _, line := range strings.Split(unit, "\n") {
		if v, ok := strings.CutPrefix(line, key+"="); ok {
			vals = append(vals, v)
		}
	}
	if len(vals) != 1 {
		return "", false
	}
	return vals[0], true
}

var capBits = map[string]uint{
	"CAP_CHOWN": unix.CAP_CHOWN, "CAP_DAC_OVERRIDE": unix.CAP_DAC_OVERRIDE, "CAP_FOWNER": unix.CAP_FOWNER,
	"CAP_KILL": unix.CAP_KILL, "CAP_SETUID": unix.CAP_SETUID, "CAP_SETGID": unix.CAP_SETGID,
	"CAP_NET_ADMIN": unix.CAP_NET_ADMIN, "CAP_SYS_ADMIN": unix.CAP_SYS_ADMIN, "CAP_SYS_PTRACE": unix.CAP_SYS_PTRACE,
	"CAP_NET_BIND_SERVICE": unix.CAP_NET_BIND_SERVICE, "CAP_DAC_READ_SEARCH": unix.CAP_DAC_READ_SEARCH,
}

// sandboxScript applies the unit's directives that systemd would apply
// before ExecStart, with the same kernel mechanisms, in the mount
// namespace it runs in (unshare --mount), then execs the daemon as the
// unit would. PID 1 here is not systemd, and booting one runs the host's
// boot units on the shared filesystems, so the directives are exercised
// this way.
func sandboxScript(t *testing.T, unit string) string {
	t.Helper()
	capsLine, _ := unitValue(unit, "CapabilityBoundingSet")
	return sandboxScriptCaps(t, unit, strings.Fields(capsLine))
}

// sandboxScriptCaps is sandboxScript with the bounding set caps instead
// of the unit's.
func sandboxScriptCaps(t *testing.T, unit string, capNames []string) string {
	t.Helper()
	want := map[string]string{"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes", "ProtectHome": "yes",
		"ProtectKernelTunables": "yes", "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "UMask": "0077",
		"AmbientCapabilities": "", "Type": "notify", "KillMode": "mixed"}
	for k, v := range want {
		if got, ok := unitValue(unit, k); !ok || got != v {
			t.Fatalf("unit: %s = %q; want %q", k, got, v)
		}
	}
	exe, _ := unitValue(unit, "ExecStart")
	rw, _ := unitValue(unit, "ReadWritePaths")
	var caps []string
	for _, c := range capNames {
		caps = append(caps, "+"+strings.ToLower(strings.TrimPrefix(c, "CAP_")))
	}
	var b strings.Builder
	b.WriteString("set -eu\n")
	// ProtectSystem=strict, ProtectKernelTunables, ProtectControlGroups:
	// every mount read-only but /dev and /proc (with /proc/sys read-only).
	b.WriteString(`awk '{print $5}' /proc/self/mountinfo | sort -u | while read -r mp; do
  case "$mp" in /proc|/proc/*|/dev|/dev/*) continue;; esac
  mount -o remount,bind,ro "$mp" || { echo "sandbox: cannot make $mp read-only" >&2; exit 1; }
done
mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys
`)
	for _, p := range strings.Fields(rw) {
		fmt.Fprintf(&b, "mount --bind %s %s && mount -o remount,bind,rw %s\n", p, p, p)
	}
	// PrivateTmp, ProtectHome, ProtectKernelLogs.
	b.WriteString(`mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=1777 tmpfs /var/tmp
for d in /home /root /run/user; do [ -d "$d" ] && mount -t tmpfs -o ro,mode=000 tmpfs "$d"; done
mount --bind /dev/null /dev/kmsg
mount --bind /dev/null /proc/kmsg
umask 0077
`)
	fmt.Fprintf(&b, "exec setpriv --no-new-privs --inh-caps=-all --ambient-caps=-all --bounding-set=-all,%s -- %s\n",
		strings.Join(caps, ","), exe)
	return b.String()
}

// TestServiceUnitHardened writes the unit with `service unit`, has
// systemd-analyze verify it, and runs the daemon under its directives:
// exactly its capability bounding set, no new privileges, a read-only
// system but the unit's ReadWritePaths, a private /tmp, no /home. The
// server starts, says READY=1 on $NOTIFY_SOCKET, serves a login, and
// stops on `down` after STOPPING=1 with every log line JSON.
func TestServiceUnitHardened(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed")
	}
	s, root, bin := newServiceServer(t)
	unit := mustCLI(t, s, "service", "unit", "--binary", bin)
	unitFile := filepath.Join(root, "pgshield-e2e.service")
	if err := os.WriteFile(unitFile, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	var verr bytes.Buffer
	verify := exec.Command(analyze, "verify", "--man=no", unitFile)
	verify.Stderr = &verr
	if err := verify.Run(); err != nil || verr.Len() > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s\n%s", err, verr.String(), unit)
	}
	if rw, _ := unitValue(unit, "ReadWritePaths"); rw != s.dataDir+" /etc/pgshield/keys" {
		t.Errorf("ReadWritePaths = %q; want the data directory and the key directory", rw)
	}
	// install writes the same unit (there is no systemd to load it here).
	units := filepath.Join(root, "units")
	mustCLI(t, s, "service", "install", "--binary", bin, "--unit-dir", units, "--name", "pgshield-e2e")
	if b, err := os.ReadFile(filepath.Join(units, "pgshield-e2e.service")); err != nil || string(b) != unit {
		t.Errorf("service install wrote %q (%v); want the unit service unit prints", b, err)
	}
	// A server under /tmp cannot be a service: the unit's /tmp is private.
	if strings.HasPrefix(shared.dataDir, "/tmp/") {
		out, err := shared.cli("service", "unit")
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 5 || !strings.Contains(out, "PrivateTmp") {
			t.Errorf("service unit for a server under /tmp: %v\n%s; want exit 5 naming PrivateTmp", err, out)
		}
	}

	sock := filepath.Join(root, "notify")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	states := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := notify.Read(buf)
			if err != nil {
				return
			}
			states <- string(buf[:n])
		}
	}()
	var logBuf syncBuffer
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "--", "sh", "-c", sandboxScript(t, unit))
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "NOTIFY_SOCKET=" + sock}
	cmd.Stdout, cmd.Stderr = &logBuf, &logBuf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var exitErr error
	exited := make(chan struct{})
	go func() { exitErr = cmd.Wait(); close(exited) }()
	defer func() {
		select {
		case <-exited:
		default:
			_ = cmd.Process.Kill()
			<-exited
		}
	}()
	// awaitState waits for a notification starting with prefix.
	awaitState := func(prefix string) {
		t.Helper()
		timeout := time.After(3 * time.Minute)
		for {
			select {
			case st := <-states:
				if strings.HasPrefix(st, prefix) {
					return
				}
			case <-exited:
				// It may have sent prefix just before exiting.
				select {
				case st := <-states:
					if strings.HasPrefix(st, prefix) {
						return
					}
				default:
				}
				t.Fatalf("the daemon exited (%v) before %s:\n%s", exitErr, prefix, logBuf.String())
			case <-timeout:
				t.Fatalf("no %s from the daemon within 3 minutes:\n%s", prefix, logBuf.String())
			}
		}
	}
	awaitState("READY=1")

	// The daemon runs with exactly the unit's capabilities, and no new
	// privileges.
	capsLine, _ := unitValue(unit, "CapabilityBoundingSet")
	var mask uint64
	for _, c := range strings.Fields(capsLine) {
		bit, ok := capBits[c]
		if !ok {
			t.Fatalf("unknown capability %s in the unit", c)
		}
		mask |= 1 << bit
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, field := range []string{"CapBnd", "CapEff", "CapPrm"} {
		if got := procField(string(status), field); got != fmt.Sprintf("%016x", mask) {
			t.Errorf("%s = %s; want %016x (the unit's CapabilityBoundingSet)", field, got, mask)
		}
	}
	if got := procField(string(status), "NoNewPrivs"); got != "1" {
		t.Errorf("NoNewPrivs = %q; want 1", got)
	}

	if out, err := psql(t, s.dsn("user="+admin+" sslmode=verify-full"), adminPassword, "-c",
		"CREATE TABLE svc(n int); INSERT INTO svc VALUES (1); SELECT count(*) FROM svc"); err != nil || lastLines(out, 1) != "1" {
		t.Errorf("login under the unit's directives: %q, %v", out, err)
	}
	if st := s.status(t); st["state"] != "Available" {
		t.Errorf("status: %v", st["state"])
	}

	out, err := s.cli("down")
	if err != nil {
		t.Errorf("down: %v\n%s", err, out)
	}
	awaitState("STOPPING=1")
	select {
	case <-exited:
		if exitErr != nil {
			t.Errorf("the daemon exited with %v after down; want 0", exitErr)
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("the daemon still runs 2 minutes after down")
	}
	for i, line := range strings.Split(strings.TrimSpace(logBuf.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil || rec["msg"] == nil || rec["level"] == nil {
			t.Errorf("daemon output line %d is not a JSON log record: %q", i+1, line)
		}
	}
}

// newServiceServer inits (does not start) a server a unit can run: under
// /var/lib, as the unit gives the service a /tmp of its own, with a copy
// of the binary there too. It is stopped and removed when the test ends.
func newServiceServer(t *testing.T) (s *server, root, bin string) {
	t.Helper()
	root, err := os.MkdirTemp("/var/lib", "pgshield-e2e-svc-")
	if err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(root, 0o711)
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	s = &server{name: "svc", dataDir: filepath.Join(root, "data"), port: port}
	t.Cleanup(func() {
		s.stop()
		os.RemoveAll(root)
	})
	bin = filepath.Join(root, "pgshield")
	if out, err := exec.Command("cp", pgshieldBin, bin).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	pw := filepath.Join(root, "pw")
	if err := os.WriteFile(pw, []byte(adminPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	mustCLI(t, s, "init", "--listen", s.addr(), "--admin-password-file", pw, "--storage-size", "1GiB")
	return s, root, bin
}

// procField is a field of /proc/PID/status.
func procField(status, name string) string {
	for _, line := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// syncBuffer is a bytes.Buffer safe for a process's output and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
