package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pgshield/pgshield/internal/keys"
	"github.com/pgshield/pgshield/internal/testutil/oidcissuer"
)

// The secrets sweep (issue #17, item 8). A registry collects every secret
// the suite uses, as it is made: passwords (every password literal in this
// package's sources, and the administrator's), OIDC tokens (oidcissuer
// reports each one it signs), each server's data key and backup passphrase
// (unwrapped through its system-managed key-encryption key right after
// `up`, while that key exists: stop() deletes it), and KMS credentials
// (from a server's environment). TestZZSecretsSweep (zz_sweep_test.go, so
// that it runs after every other test of the package) then looks for each
// of them, in the encodings they could take, in every file pgshield wrote
// outside the encrypted volumes, and in /proc/<pid>/cmdline and environ of
// every pgshield daemon still running and all its descendants. Planted
// controls prove that a secret in a file or in a process's argv and
// environment is found.

// secret is one registered value and its kind, for the report.
type secret struct {
	kind, name string
	value      []byte
}

var registry struct {
	sync.Mutex
	secrets []secret
	// notes say what could not be registered, for the sweep's log.
	notes []string
}

// registerSecret adds value, unless it is too short to search for without
// false hits.
func registerSecret(kind, name string, value []byte) {
	if len(value) < 8 {
		return
	}
	registry.Lock()
	defer registry.Unlock()
	for _, s := range registry.secrets {
		if bytes.Equal(s.value, value) {
			return
		}
	}
	registry.secrets = append(registry.secrets, secret{kind: kind, name: name, value: bytes.Clone(value)})
}

func registryNote(format string, args ...any) {
	registry.Lock()
	defer registry.Unlock()
	registry.notes = append(registry.notes, fmt.Sprintf(format, args...))
}

func init() {
	oidcissuer.OnSign(func(tok string) {
		registerSecret("oidc token", "token", []byte(tok))
		// The signature alone identifies the token too.
		if i := strings.LastIndexByte(tok, '.'); i > 0 {
			registerSecret("oidc token", "token signature", []byte(tok[i+1:]))
		}
	})
}

// registerServerSecrets records what newServer's server holds: its data key
// and backup passphrase, unwrapped as pgshield does, and any KMS
// credentials in its environment. The harness calls it after `up`.
func registerServerSecrets(s *server) {
	registerSecret("password", "administrator", []byte(adminPassword))
	for _, kv := range s.env {
		k, v, _ := strings.Cut(kv, "=")
		if strings.Contains(k, "SECRET") || strings.Contains(k, "ACCESS_KEY") || strings.Contains(k, "TOKEN") ||
			strings.Contains(k, "PASSWORD") || strings.Contains(k, "CREDENTIAL") {
			registerSecret("kms credential", s.name+" "+k, []byte(v))
		}
	}
	b, err := os.ReadFile(filepath.Join(s.dataDir, "pgshield.json"))
	if err != nil {
		registryNote("%s: no pgshield.json: %v", s.name, err)
		return
	}
	var c struct {
		KeyURI string `json:"key_uri"`
	}
	_ = json.Unmarshal(b, &c)
	if !strings.HasPrefix(c.KeyURI, keys.SchemeSystem+"://") {
		// A customer-managed key unwraps only with the KMS credentials in
		// the server's environment, not the test binary's.
		registryNote("%s: data key not registered (key %s is not system-managed)", s.name, keys.RedactURI(c.KeyURI))
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	k, err := keys.Open(ctx, c.KeyURI)
	if err != nil {
		registryNote("%s: opening the key-encryption key: %v", s.name, err)
		return
	}
	defer k.Close()
	for _, f := range []struct{ kind, file string }{
		{"data key", filepath.Join(s.dataDir, "secrets", "volume-key.json")},
		{"backup passphrase", filepath.Join(s.dataDir, "secrets", "backup-key.json")},
	} {
		w, err := keys.LoadWrapped(f.file)
		if err != nil {
			registryNote("%s: %s not registered: %v", s.name, f.kind, err)
			continue
		}
		pt, err := k.UnwrapKey(ctx, w)
		if err != nil {
			registryNote("%s: unwrapping the %s: %v", s.name, f.kind, err)
			continue
		}
		registerSecret(f.kind, s.name, pt)
		keys.Wipe(pt)
	}
}

// passwordLiteral finds the passwords the tests give roles and clients.
var passwordLiteral = regexp.MustCompile(`(?i)(?:PASSWORD\s+'([^']{8,})'|PGPASSWORD=([^\s"'` + "`" + `]{8,})|password=([^\s"'` + "`" + `]{8,}))`)

// registerSourcePasswords registers every password literal in this
// package's test sources: the roles the tests create through the gateway.
func registerSourcePasswords(t *testing.T) {
	files, _ := filepath.Glob("*_test.go")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range passwordLiteral.FindAllSubmatch(b, -1) {
			for _, g := range m[1:] {
				// Interpolated values (a %s, a concatenation) are not
				// literals.
				if len(g) > 0 && !bytes.ContainsAny(g, "%+$(") {
					registerSecret("password", f, g)
				}
			}
		}
	}
}

// needles are the byte strings each secret may appear as.
func needles(s secret) [][]byte {
	out := [][]byte{s.value}
	if s.kind == "data key" {
		// Binary keys: as hex (either case) and base64 (std and URL).
		out = append(out, []byte(hex.EncodeToString(s.value)), []byte(strings.ToUpper(hex.EncodeToString(s.value))),
			[]byte(base64.StdEncoding.EncodeToString(s.value)), []byte(base64.RawURLEncoding.EncodeToString(s.value)))
	}
	return out
}

// finding is one secret seen somewhere.
type finding struct{ where, kind, name string }

func (f finding) String() string { return fmt.Sprintf("%s: %s (%s)", f.where, f.kind, f.name) }

func scanBytes(where string, b []byte, secrets []secret) []finding {
	var out []finding
	for _, s := range secrets {
		for _, n := range needles(s) {
			if bytes.Contains(b, n) {
				out = append(out, finding{where, s.kind, s.name})
				break
			}
		}
	}
	return out
}

// maxScanFile bounds what is read of one file; bigger files are only the
// sparse volume images (ciphertext by construction, checked by the at-rest
// tests) and are listed as skipped.
const maxScanFile = 64 << 20

// scanTree scans every regular file under root, not descending into skip
// (mounted volumes). It returns the findings and the files it skipped.
func scanTree(root string, skip map[string]bool, secrets []secret) (found []finding, skipped []string, n int) {
	_ = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() && skip[path] {
			return filepath.SkipDir
		}
		if !d.Type().IsRegular() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		if info.Size() > maxScanFile {
			skipped = append(skipped, fmt.Sprintf("%s (%d MiB)", path, info.Size()>>20))
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return nil
		}
		b, _ := io.ReadAll(io.LimitReader(f, maxScanFile))
		f.Close()
		n++
		found = append(found, scanBytes(path, b, secrets)...)
		return nil
	})
	return found, skipped, n
}

// scanProcs scans the argv and environment of each pid.
func scanProcs(pids []int, secrets []secret) (found []finding) {
	for _, p := range pids {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p))
		for _, f := range []string{"cmdline", "environ"} {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", p, f))
			if err != nil {
				continue
			}
			found = append(found, scanBytes(fmt.Sprintf("/proc/%d/%s (%s)", p, f, strings.TrimSpace(string(comm))), b, secrets)...)
		}
	}
	return found
}

// daemons lists the pgshield daemons of this test run still running: their
// command line names a data directory under baseDir.
func daemons() []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		var p int
		if _, err := fmt.Sscan(e.Name(), &p); err != nil {
			continue
		}
		cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
		if err == nil && bytes.HasPrefix(cmd, []byte(pgshieldBin+"\x00up\x00--foreground")) && bytes.Contains(cmd, []byte(baseDir)) {
			out = append(out, p)
		}
	}
	return out
}

func secretsSweep(t *testing.T) {
	registerSourcePasswords(t)
	registerServerSecrets(shared) // again: harmless, and the sweep needs it even if the hook is skipped
	registry.Lock()
	secrets := append([]secret(nil), registry.secrets...)
	notes := append([]string(nil), registry.notes...)
	registry.Unlock()
	kinds := map[string]int{}
	for _, s := range secrets {
		kinds[s.kind]++
	}
	t.Logf("secrets sweep: %d secrets registered: %v", len(secrets), kinds)
	for _, n := range notes {
		t.Logf("secrets sweep: note: %s", n)
	}
	if kinds["password"] == 0 || kinds["data key"] == 0 {
		t.Fatalf("registry has no password or no data key (%v): the sweep would prove nothing", kinds)
	}

	// What to scan: every data directory the suite made (all files there
	// are pgshield's; the volume mount points are skipped, and hold
	// nothing once unmounted), and the key-encryption keys.
	skip := map[string]bool{}
	ents, _ := os.ReadDir(baseDir)
	var roots []string
	for _, e := range ents {
		if !e.IsDir() {
			continue // the harness's own files: the binary, password files
		}
		root := filepath.Join(baseDir, e.Name())
		roots = append(roots, root)
		skip[filepath.Join(root, "volume")] = true
	}
	roots = append(roots, "/etc/pgshield/keys")
	sort.Strings(roots)

	// Controls first: a planted file and a planted process must be found,
	// by the same functions, or the sweep proves nothing.
	var dataKey, password secret
	for _, s := range secrets {
		if s.kind == "data key" && dataKey.value == nil {
			dataKey = s
		}
		if s.kind == "password" && password.value == nil {
			password = s
		}
	}
	controlDir := filepath.Join(shared.dataDir, "log")
	control := filepath.Join(controlDir, "planted-control.txt")
	if err := os.WriteFile(control, []byte("x "+hex.EncodeToString(dataKey.value)+" y"), 0o600); err != nil {
		t.Fatal(err)
	}
	found, _, _ := scanTree(controlDir, nil, secrets)
	os.Remove(control)
	if !hasFinding(found, control, "data key") {
		t.Fatalf("control: a file holding a data key in hex was not found: %v", found)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// sh stays (a command follows sleep) with the secret as its $1.
	child := exec.CommandContext(ctx, "sh", "-c", `sleep 30; : "$1"`, "planted-control", string(password.value))
	child.Env = append(os.Environ(), "PLANTED="+string(password.value))
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	// Read again for a while if a side is missing: a scan just after the
	// start once saw the environment but not yet the arguments (a CI run).
	for i := 0; i < 20; i++ {
		found = scanProcs([]int{child.Process.Pid}, secrets)
		if hasFinding(found, "cmdline", "password") && hasFinding(found, "environ", "password") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = child.Process.Signal(syscall.SIGKILL)
	_ = child.Wait()
	if !hasFinding(found, "cmdline", "password") || !hasFinding(found, "environ", "password") {
		t.Fatalf("control: a process with a password in argv and environ: found %v; want both", found)
	}

	// The sweep.
	var all []finding
	files := 0
	for _, root := range roots {
		found, skipped, n := scanTree(root, skip, secrets)
		files += n
		all = append(all, found...)
		for _, s := range skipped {
			// Volume images (fscrypt) and the files of a gocryptfs cipher
			// directory are ciphertext by construction (the at-rest tests
			// check that); any other large file must be looked at.
			name := strings.Fields(s)[0]
			if !strings.HasSuffix(name, ".img") && !strings.Contains(name, "/storage/gocryptfs/") {
				t.Errorf("secrets sweep: skipped a large file that is not a volume image: %s", s)
			}
		}
	}
	var pids []int
	for _, d := range daemons() {
		pids = append(pids, d)
		pids = append(pids, descendants(d)...)
	}
	if len(pids) < 2 {
		t.Errorf("secrets sweep: found %d pgshield processes; want at least the shared daemon and its PostgreSQL", len(pids))
	}
	all = append(all, scanProcs(pids, secrets)...)
	t.Logf("secrets sweep: scanned %d files under %d roots and %d processes", files, len(roots), len(pids))
	for _, f := range all {
		t.Errorf("secrets sweep: %s", f)
	}
}

func hasFinding(fs []finding, where, kind string) bool {
	for _, f := range fs {
		if strings.Contains(f.where, where) && f.kind == kind {
			return true
		}
	}
	return false
}
