package cli

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// unitValues returns the values of key in a unit's text, in order.
func unitValues(unit, key string) []string {
	var out []string
	for _, line := range strings.Split(unit, "\n") {
		if v, ok := strings.CutPrefix(line, key+"="); ok {
			out = append(out, v)
		}
	}
	return out
}

func TestServiceUnit(t *testing.T) {
	spec := serviceUnitSpec{Binary: "/usr/local/bin/pgshield", DataDir: "/var/lib/pgshield",
		ReadWrite: []string{"/var/lib/pgshield", "/etc/pgshield/keys", "/srv/backups"}}
	unit, err := serviceUnit(spec)
	if err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{
		"Type":                  "notify",
		"NotifyAccess":          "main",
		"ExecStart":             "/usr/local/bin/pgshield up --foreground --data-dir /var/lib/pgshield",
		"KillMode":              "mixed",
		"Restart":               "on-failure",
		"NoNewPrivileges":       "yes",
		"AmbientCapabilities":   "",
		"ProtectSystem":         "strict",
		"ReadWritePaths":        "/var/lib/pgshield /etc/pgshield/keys /srv/backups",
		"PrivateTmp":            "yes",
		"ProtectHome":           "yes",
		"ProtectKernelTunables": "yes",
		"UMask":                 "0077",
		"CapabilityBoundingSet": "CAP_CHOWN CAP_DAC_OVERRIDE CAP_FOWNER CAP_KILL CAP_SETUID CAP_SETGID CAP_NET_ADMIN CAP_SYS_ADMIN",
	} {
		if got := unitValues(unit, key); len(got) != 1 || got[0] != want {
			t.Errorf("%s = %q; want exactly %q", key, got, want)
		}
	}
	// The daemon reloads on SIGHUP (pgshield.json, the certificate).
	if got := unitValues(unit, "ExecReload"); len(got) != 1 || got[0] != "/bin/kill -HUP $MAINPID" {
		t.Errorf("ExecReload = %q; want a SIGHUP to the main process", got)
	}

	home := spec
	home.DataDir, home.ReadWrite = "/root/pg", []string{"/root/pg", "/etc/pgshield/keys"}
	unit, err = serviceUnit(home)
	if err != nil {
		t.Fatal(err)
	}
	if got := unitValues(unit, "ProtectHome"); len(got) != 1 || got[0] != "read-only" {
		t.Errorf("data directory under /root: ProtectHome = %q; want read-only (ReadWritePaths reopens it)", got)
	}

	for _, bad := range []serviceUnitSpec{
		{Binary: "/usr/local/bin/pgshield", DataDir: "/tmp/pgshield", ReadWrite: []string{"/tmp/pgshield"}},
		{Binary: "/usr/local/bin/pgshield", DataDir: "/var/tmp/x", ReadWrite: []string{"/var/tmp/x"}},
		{Binary: "/usr/local/bin/pgshield", DataDir: "/srv/a b", ReadWrite: []string{"/srv/a b"}},
		{Binary: "/usr/local/bin/pgshield", DataDir: "/srv/%h", ReadWrite: []string{"/srv/%h"}},
		{Binary: "/usr/local/bin/pgshield", DataDir: "/srv/$HOME", ReadWrite: []string{"/srv/$HOME"}},
		{Binary: "/usr/local/bin/pgshield", DataDir: "/srv/x\nExecStartPre=/bin/sh", ReadWrite: []string{"/srv/x"}},
		{Binary: "pgshield", DataDir: "/srv/x", ReadWrite: []string{"/srv/x"}},
		{Binary: "/usr/local/bin/pgshield", DataDir: "/srv/../etc", ReadWrite: []string{"/srv/x"}},
	} {
		if _, err := serviceUnit(bad); err == nil {
			t.Errorf("serviceUnit(%+v) accepted", bad)
		}
	}
}

// TestServiceUnitVerifies runs systemd's own checker on the unit.
func TestServiceUnitVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed")
	}
	// The unit names an executable that exists (verify checks it); the
	// test binary itself lives under /tmp, which a unit refuses.
	bin, err := exec.LookPath("true")
	if err != nil {
		t.Fatal(err)
	}
	data := "/var/lib/pgshield-unit-test"
	unit, err := serviceUnit(serviceUnitSpec{Binary: bin, DataDir: data, ReadWrite: []string{data, "/etc/pgshield/keys"}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "pgshield-test.service")
	if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(analyze, "verify", "--man=no", path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	// verify warns on stderr (an unknown key, a bad value) and still
	// exits 0: both must be clean.
	if err := cmd.Run(); err != nil || stderr.Len() > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s\n%s", err, stderr.String(), unit)
	}
	// The checker does see a bad unit.
	bad := strings.Replace(unit, "KillMode=mixed", "KillMode=mixd\nBogusKey=1", 1)
	if err := os.WriteFile(path, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command(analyze, "verify", "--man=no", path).CombinedOutput()
	if !strings.Contains(string(out), "BogusKey") || !strings.Contains(string(out), "mixd") {
		t.Errorf("systemd-analyze verify of a broken unit said %q; want both faults named", out)
	}
}
