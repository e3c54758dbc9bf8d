// Package localkms runs a real AWS-KMS-compatible server,
// github.com/nsmithuk/local-kms, on the loopback interface for tests of
// customer-managed keys (awskms:// key URIs).
//
// The local-kms binary is built from the Go module proxy with
//
//	GOBIN=<cache> go install github.com/nsmithuk/local-kms@<Version>
//
// once per machine (see Binary), or taken from $PGSHIELD_LOCAL_KMS_BIN.
// Nothing of local-kms is vendored into this repository.
//
// Typical use:
//
//	srv := localkms.Start(t)
//	id, _ := srv.CreateKey(t)
//	srv.SetEnv(t) // fake AWS credentials for this process
//	k, err := keys.Open(ctx, srv.KeyURI(id))
//
// A pgshield daemon started as a child process needs the variables of
// (*Server).Env in its environment instead: AWS_ACCESS_KEY_ID and
// AWS_SECRET_ACCESS_KEY (fake, local-kms checks no signature) are required;
// the others only shield the test from the developer's own AWS settings.
// Credentials are never part of the key URI.
//
// local-kms listens on all interfaces (it takes only a port, no address);
// every client made here talks to 127.0.0.1 only (or, with StartIn, to the
// address given, through the dialer given).
package localkms

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
)

// Module and Version pin the local-kms build. The upstream v3.x tags are not
// valid versions of the module (its path has no /v3), so the proxy only
// serves pseudo-versions; this one is upstream master of 2026-02-28.
const (
	Module  = "github.com/nsmithuk/local-kms"
	Version = "v0.0.0-20260228092603-2a5e92d09ab6"
)

// BinEnv names an environment variable that, when set, is the path of a
// local-kms binary to use instead of building one.
const BinEnv = "PGSHIELD_LOCAL_KMS_BIN"

// Fake credentials and account of every Server. local-kms verifies no
// signature; the AWS SDK only needs some credentials to sign with.
const (
	AccessKeyID     = "AKIAPGSHIELDLOCALKMS"
	SecretAccessKey = "pgshield-local-kms-fake-secret"
	Region          = "eu-west-2"
	AccountID       = "111122223333"
)

// Bounds of the waits done here.
const (
	buildTimeout = 10 * time.Minute
	startTimeout = 20 * time.Second
	opTimeout    = 15 * time.Second
)

var (
	binMu   sync.Mutex
	binPath string // set once built (or found)
)

// Binary returns the path of the local-kms binary, building it into
// $(go env GOCACHE)/pgshield-localkms/<Version>/local-kms the first time on
// this machine. It fails t (never skips) when the binary cannot be had.
func Binary(t testing.TB) string {
	t.Helper()
	binMu.Lock()
	defer binMu.Unlock()
	if binPath != "" {
		return binPath
	}
	if p := os.Getenv(BinEnv); p != "" {
		if err := checkExecutable(p); err != nil {
			t.Fatalf("localkms: $%s: %v", BinEnv, err)
		}
		binPath = p
		return p
	}
	gobin, err := goTool()
	if err != nil {
		t.Fatalf("localkms: cannot build local-kms: %v", err)
	}
	dir, err := cacheDir(gobin)
	if err != nil {
		t.Fatalf("localkms: cannot build local-kms: %v", err)
	}
	p := filepath.Join(dir, "local-kms"+exeSuffix())
	if checkExecutable(p) == nil {
		binPath = p
		return p
	}
	if err := build(gobin, dir, p); err != nil {
		t.Fatalf("localkms: cannot build %s@%s: %v", Module, Version, err)
	}
	binPath = p
	return p
}

func exeSuffix() string {
	if runtime.GOOS == "windows" {
		return ".exe"
	}
	return ""
}

func checkExecutable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() || (runtime.GOOS != "windows" && fi.Mode().Perm()&0o111 == 0) {
		return fmt.Errorf("%s is not an executable file", p)
	}
	return nil
}

// goTool finds the go command: on $PATH, else under $GOROOT.
func goTool() (string, error) {
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	if root := os.Getenv("GOROOT"); root != "" {
		p := filepath.Join(root, "bin", "go"+exeSuffix())
		if checkExecutable(p) == nil {
			return p, nil
		}
	}
	return "", errors.New("the go command is not on $PATH (nor in $GOROOT/bin)")
}

// cacheDir returns (and creates) the per-version cache directory.
func cacheDir(gobin string) (string, error) {
	out, err := exec.Command(gobin, "env", "GOCACHE").Output()
	base := strings.TrimSpace(string(out))
	if err != nil || base == "" || base == "off" {
		if base, err = os.UserCacheDir(); err != nil {
			return "", fmt.Errorf("no cache directory: GOCACHE is unset or off and %v", err)
		}
	}
	dir := filepath.Join(base, "pgshield-localkms", Version)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	return dir, nil
}

// build runs go install into a private directory under dir and renames the
// result to dst, so that concurrent builds (test binaries of several
// packages) never see a partial file.
func build(gobin, dir, dst string) error {
	tmp, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, gobin, "install", Module+"@"+Version)
	cmd.Dir = tmp // outside any module or workspace
	cmd.Env = append(os.Environ(),
		"GOBIN="+tmp,
		"GOWORK=off",
		"GOFLAGS=",
		"CGO_ENABLED=0",
		"GOOS="+runtime.GOOS,
		"GOARCH="+runtime.GOARCH,
	)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out.String())
	}
	src := filepath.Join(tmp, "local-kms"+exeSuffix())
	if err := checkExecutable(src); err != nil {
		return fmt.Errorf("go install produced no binary: %v", err)
	}
	return os.Rename(src, dst)
}

// Server is a running (or stopped) local-kms process.
type Server struct {
	// Endpoint is the server's URL, http://127.0.0.1:PORT. It stays the
	// same across Stop and Restart.
	Endpoint string
	// Region is the region local-kms puts in key ARNs (Region).
	Region string

	bin     string
	prefix  []string // argv before the binary (StartIn)
	host    string   // where the test reaches it; 127.0.0.1 unless StartIn
	dial    func(ctx context.Context, network, addr string) (net.Conn, error)
	dataDir string
	seed    string
	port    string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has been waited for
	log  *syncBuffer
}

// Start starts local-kms on a free port of 127.0.0.1 with its data in a
// fresh t.TempDir, waits until it answers, and stops it when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	return startWith(t, Elsewhere{}, "0")
}

// Elsewhere is where StartIn runs local-kms: in another network
// namespace, say, for daemons that run in namespaces of their own.
type Elsewhere struct {
	// Prefix comes before the binary in its argv (ip netns exec NS).
	Prefix []string
	// Host is the address the daemons and the test reach it at.
	Host string
	// Dial connects the test's own KMS client to Host (from inside the
	// namespace).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// StartIn starts local-kms as Start does, but as at describes, on port.
func StartIn(t testing.TB, at Elsewhere, port int) *Server {
	t.Helper()
	if at.Host == "" || at.Dial == nil || port <= 0 {
		t.Fatal("localkms: StartIn needs a host, a dialer and a port")
	}
	return startWith(t, at, fmt.Sprint(port))
}

func startWith(t testing.TB, at Elsewhere, port string) *Server {
	t.Helper()
	root := t.TempDir()
	s := &Server{
		Region:  Region,
		bin:     Binary(t),
		prefix:  at.Prefix,
		host:    cmp.Or(at.Host, "127.0.0.1"),
		dial:    at.Dial,
		dataDir: filepath.Join(root, "data"),
		seed:    filepath.Join(root, "no-seed.yaml"), // absent: no seeding
	}
	t.Cleanup(s.Stop)
	if err := s.start(port); err != nil {
		t.Fatalf("localkms: start: %v", err)
	}
	return s
}

var startedRE = regexp.MustCompile(`Local KMS started on [^ ]*:([0-9]+)`)

// start runs local-kms on port ("0": any free port, read from its log).
func (s *Server) start(port string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("already running")
	}
	log := &syncBuffer{}
	argv := append(slices.Clone(s.prefix), s.bin)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = []string{
		"PORT=" + port,
		"KMS_REGION=" + s.Region,
		"KMS_ACCOUNT_ID=" + AccountID,
		"KMS_DATA_PATH=" + s.dataDir,
		"KMS_SEED_PATH=" + s.seed,
	}
	cmd.Stdout = log
	cmd.Stderr = log
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	s.cmd, s.done, s.log = cmd, done, log

	fail := func(format string, args ...any) error {
		_ = cmd.Process.Kill()
		<-done
		s.cmd, s.done = nil, nil
		return fmt.Errorf("%s; local-kms output:\n%s", fmt.Sprintf(format, args...), log.String())
	}
	deadline := time.Now().Add(startTimeout)
	// The log line is written after the listener is bound.
	for {
		if m := startedRE.FindStringSubmatch(log.String()); m != nil {
			if port != "0" && m[1] != port {
				return fail("local-kms listens on port %s, want %s", m[1], port)
			}
			port = m[1]
			break
		}
		select {
		case <-done:
			return fail("local-kms exited (%v)", cmd.ProcessState)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fail("local-kms did not start within %v", startTimeout)
		}
	}
	s.port = port
	s.Endpoint = "http://" + net.JoinHostPort(s.host, port)
	// Then wait until it answers a KMS request.
	c := s.newClient()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.ListKeys(ctx, &kms.ListKeysInput{}, func(o *kms.Options) { o.RetryMaxAttempts = 1 })
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-done:
			return fail("local-kms exited (%v)", cmd.ProcessState)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fail("local-kms did not answer ListKeys within %v: %v", startTimeout, err)
		}
	}
}

// Stop kills local-kms and waits for it to exit, so that the endpoint
// refuses connections (an unreachable KMS). Its keys stay in its data
// directory for Restart. Stop is idempotent, and runs at the end of the test.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd, s.done = nil, nil
}

// Restart stops local-kms if it runs and starts it again on the same port
// and data directory: Endpoint, key URIs and keys stay valid.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	if err := s.start(s.port); err != nil {
		t.Fatalf("localkms: restart on port %s: %v", s.port, err)
	}
}

// Log returns what local-kms has written to its stdout and stderr since it
// was last (re)started.
func (s *Server) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.log == nil {
		return ""
	}
	return s.log.String()
}

func (s *Server) newClient() *kms.Client {
	return kms.NewFromConfig(aws.Config{
		Region:       s.Region,
		Credentials:  credentials.NewStaticCredentialsProvider(AccessKeyID, SecretAccessKey, ""),
		BaseEndpoint: aws.String(s.Endpoint),
		HTTPClient:   s.httpClient(),
	})
}

// httpClient is nil (the SDK's own) unless the server is elsewhere.
func (s *Server) httpClient() aws.HTTPClient {
	if s.dial == nil {
		return nil
	}
	return &http.Client{Transport: &http.Transport{DialContext: s.dial}}
}

// Client returns an AWS SDK v2 KMS client for the server, with the fake
// static credentials. It does not read the environment.
func (s *Server) Client(t testing.TB) *kms.Client {
	t.Helper()
	return s.newClient()
}

func opContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), opTimeout)
}

// CreateKey creates a symmetric encryption key (SYMMETRIC_DEFAULT) and
// returns its key ID and ARN.
func (s *Server) CreateKey(t testing.TB) (keyID, arn string) {
	t.Helper()
	ctx, cancel := opContext()
	defer cancel()
	out, err := s.newClient().CreateKey(ctx, &kms.CreateKeyInput{Description: aws.String("pgshield test key")})
	if err != nil {
		t.Fatalf("localkms: CreateKey: %v", err)
	}
	if out.KeyMetadata == nil || out.KeyMetadata.KeyId == nil || out.KeyMetadata.Arn == nil {
		t.Fatalf("localkms: CreateKey: response without key ID or ARN")
	}
	return *out.KeyMetadata.KeyId, *out.KeyMetadata.Arn
}

// DisableKey disables the key (key ID or ARN).
func (s *Server) DisableKey(t testing.TB, keyID string) {
	t.Helper()
	ctx, cancel := opContext()
	defer cancel()
	if _, err := s.newClient().DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(keyID)}); err != nil {
		t.Fatalf("localkms: DisableKey %s: %v", keyID, err)
	}
}

// EnableKey enables the key (key ID or ARN).
func (s *Server) EnableKey(t testing.TB, keyID string) {
	t.Helper()
	ctx, cancel := opContext()
	defer cancel()
	if _, err := s.newClient().EnableKey(ctx, &kms.EnableKeyInput{KeyId: aws.String(keyID)}); err != nil {
		t.Fatalf("localkms: EnableKey %s: %v", keyID, err)
	}
}

// ScheduleDeletion schedules the key's deletion with the minimum pending
// window, 7 days; the key is unusable (KMSInvalidStateException) until
// CancelDeletion.
func (s *Server) ScheduleDeletion(t testing.TB, keyID string) {
	t.Helper()
	ctx, cancel := opContext()
	defer cancel()
	if _, err := s.newClient().ScheduleKeyDeletion(ctx, &kms.ScheduleKeyDeletionInput{
		KeyId:               aws.String(keyID),
		PendingWindowInDays: aws.Int32(7),
	}); err != nil {
		t.Fatalf("localkms: ScheduleKeyDeletion %s: %v", keyID, err)
	}
}

// CancelDeletion cancels the key's scheduled deletion. Real AWS KMS leaves
// the key disabled afterwards (call EnableKey); local-kms re-enables it.
func (s *Server) CancelDeletion(t testing.TB, keyID string) {
	t.Helper()
	ctx, cancel := opContext()
	defer cancel()
	if _, err := s.newClient().CancelKeyDeletion(ctx, &kms.CancelKeyDeletionInput{KeyId: aws.String(keyID)}); err != nil {
		t.Fatalf("localkms: CancelKeyDeletion %s: %v", keyID, err)
	}
}

// KeyURI returns the gocloud.dev awskms URL of the key (a key ID, ARN or
// alias) at this server:
//
//	awskms://KEYID?endpoint=http%3A%2F%2F127.0.0.1%3APORT&region=REGION
//
// (awskms:///ARN for an ARN). It holds no credentials: the opening process
// needs the variables of Env (or SetEnv).
func (s *Server) KeyURI(keyID string) string {
	q := url.Values{"region": {s.Region}, "endpoint": {s.Endpoint}}
	if strings.Contains(keyID, ":") {
		// An ARN's colons cannot be in a URL host.
		return "awskms:///" + keyID + "?" + q.Encode()
	}
	return "awskms://" + keyID + "?" + q.Encode()
}

// Env returns the environment, as KEY=VALUE, a process needs to open
// KeyURI: the fake credentials, and empty values that keep a developer's
// AWS profile, session token and endpoint overrides out of the way.
// Append it to os.Environ() for a child process (later entries win).
func (s *Server) Env() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + AccessKeyID,
		"AWS_SECRET_ACCESS_KEY=" + SecretAccessKey,
		"AWS_SESSION_TOKEN=",
		"AWS_PROFILE=",
		"AWS_DEFAULT_PROFILE=",
		"AWS_ENDPOINT_URL=",
		"AWS_ENDPOINT_URL_KMS=",
		"AWS_EC2_METADATA_DISABLED=true",
	}
}

// SetEnv sets Env in this process with t.Setenv (so not in parallel tests),
// for keys.Open called by the test itself.
func (s *Server) SetEnv(t testing.TB) {
	t.Helper()
	for _, kv := range s.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent writes and reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
