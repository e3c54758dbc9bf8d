package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestServiceCapabilitiesNeeded shows the unit's capability set is the
// narrowest that works: without any one of them the server does not
// start, serve a login, open its outbound path or stop. It runs only with
// PGSHIELD_E2E_CAPS=1 (about 4 minutes; README "Running as a service"
// has its result): the suite runs the sufficiency half,
// TestServiceUnitHardened.
func TestServiceCapabilitiesNeeded(t *testing.T) {
	if os.Getenv("PGSHIELD_E2E_CAPS") != "1" {
		t.Skip("set PGSHIELD_E2E_CAPS=1 to run")
	}
	s, _, bin := newServiceServer(t)
	unit := mustCLI(t, s, "service", "unit", "--binary", bin)
	capsLine, _ := unitValue(unit, "CapabilityBoundingSet")
	all := strings.Fields(capsLine)

	// With every capability: the kernel firewall on and an outbound rule,
	// so that their capabilities are exercised at the next starts.
	run := func(caps []string) *sandboxRun { return startSandbox(t, sandboxScriptCaps(t, unit, caps)) }
	r := run(all)
	if !r.available(s, 90*time.Second) {
		t.Fatalf("the server did not start with the unit's capabilities:\n%s", r.log.String())
	}
	mustCLI(t, s, "parameter", "set", "pgshield.kernel_firewall", "on")
	mustCLI(t, s, "network-rule", "create", "--name", "out", "--priority", "100", "--access", "Allow",
		"--direction", "Outbound", "--destination-address-prefix", "192.0.2.1/32", "--destination-port-range", "443")
	if res := r.finish(t, s); res != "" {
		t.Fatalf("with the unit's capabilities: %s\n%s", res, r.log.String())
	}

	for _, drop := range all {
		var caps []string
		for _, c := range all {
			if c != drop {
				caps = append(caps, c)
			}
		}
		r := run(caps)
		var broke []string
		if !r.available(s, 90*time.Second) {
			broke = append(broke, "no start")
		} else if out, err := psql(t, s.dsn("user="+admin+" sslmode=verify-full"), adminPassword, "-c", "SELECT 1"); err != nil {
			broke = append(broke, "no login: "+out)
		}
		if strings.Contains(r.log.String(), "Opening the outbound path failed") {
			broke = append(broke, "no outbound path")
		}
		if res := r.finish(t, s); res != "" {
			broke = append(broke, res)
		}
		if len(broke) == 0 {
			t.Errorf("without %s everything works: it is not needed", drop)
		}
		t.Logf("without %s: %s; last log lines:\n%s", drop, strings.Join(broke, "; "), lastLines(r.log.String(), 3))
	}
}

// sandboxRun is a daemon started by a sandbox script.
type sandboxRun struct {
	cmd    *exec.Cmd
	log    *syncBuffer
	exited chan struct{}
	err    error
	mntNS  string
}

func startSandbox(t *testing.T, script string) *sandboxRun {
	t.Helper()
	r := &sandboxRun{log: &syncBuffer{}, exited: make(chan struct{})}
	r.cmd = exec.Command("unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script)
	r.cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	r.cmd.Stdout, r.cmd.Stderr = r.log, r.log
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.err = r.cmd.Wait(); close(r.exited) }()
	return r
}

// available waits up to limit for status Available; false if the daemon
// exits or the time runs out.
func (r *sandboxRun) available(s *server, limit time.Duration) bool {
	for end := time.Now().Add(limit); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		select {
		case <-r.exited:
			return false
		default:
		}
		if r.mntNS == "" {
			r.mntNS, _ = os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", r.cmd.Process.Pid))
		}
		if out, err := s.cli("status", "-o", "json"); err == nil && strings.Contains(out, `"state": "Available"`) {
			return true
		}
	}
	return false
}

// finish stops the daemon with `down` (60 s at most), then kills whatever
// is left in its mount namespace and detaches the volume; it returns what
// went wrong, "" if nothing.
func (r *sandboxRun) finish(t *testing.T, s *server) string {
	t.Helper()
	var res string
	select {
	case <-r.exited:
		res = fmt.Sprintf("exited: %v", r.err)
	default:
		_, _ = s.cli("down", "--timeout", "60s")
		select {
		case <-r.exited:
			if r.err != nil {
				res = fmt.Sprintf("down: exit %v", r.err)
			}
		case <-time.After(5 * time.Second):
			res = "no stop within 60 s of down"
			_ = r.cmd.Process.Kill()
			<-r.exited
		}
	}
	// PostgreSQL and anything else still in the sandbox's namespace.
	for i := 0; i < 100 && r.mntNS != ""; i++ {
		left := 0
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); ns == r.mntNS {
				left++
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		if left == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	img := filepath.Join(s.dataDir, "storage", "volume.img")
	if out, err := exec.Command("losetup", "--noheadings", "--output", "NAME", "--associated", img).Output(); err == nil {
		for _, dev := range strings.Fields(string(out)) {
			_ = exec.Command("losetup", "-d", dev).Run()
		}
	}
	_ = os.Remove(filepath.Join(s.dataDir, "run", "pgshield.pid"))
	return res
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
