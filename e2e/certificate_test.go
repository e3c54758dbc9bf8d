package e2e

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgshield/pgshield/internal/tlsconf"
)

// TestCertificateRotation drives certificate rotation end to end on a
// server of its own (a CA rollover there would break other tests' cached
// ca.crt): an open session survives every change, and new verify-full +
// channel_binding=require logins (pgx and psql: SCRAM-SHA-256-PLUS over
// the new certificate) succeed with the CA file connection-string names
// after a rotation, during a CA rollover (also for a client still holding
// only the old CA), after the rollover ends (the new CA only; the old one
// alone no longer verifies), with the user's own files, and after those
// files are renewed in place and SIGHUP sent. Mismatched, expired and
// world-readable inputs are refused (exit 5) and the certificate in force
// is kept.
func TestCertificateRotation(t *testing.T) {
	s := startedServer(t, "certrot")
	var conn struct {
		SSLRootCert string `json:"sslrootcert"`
	}
	if err := json.Unmarshal([]byte(mustCLI(t, s, "connection-string", "-o", "json")), &conn); err != nil {
		t.Fatal(err)
	}
	clientDir := t.TempDir()
	oldCA := filepath.Join(clientDir, "old-ca.crt")
	copyTo(t, conn.SSLRootCert, oldCA)

	// caOf is what connection-string names now.
	caOf := func() string {
		t.Helper()
		var c struct {
			SSLRootCert string `json:"sslrootcert"`
		}
		if err := json.Unmarshal([]byte(mustCLI(t, s, "connection-string", "-o", "json")), &c); err != nil {
			t.Fatal(err)
		}
		return c.SSLRootCert
	}
	dsnWith := func(ca string) string {
		return strings.Replace(s.dsn("user="+admin+" password="+adminPassword+" sslmode=verify-full channel_binding=require"),
			"sslrootcert="+s.caFile(), "sslrootcert="+ca, 1)
	}
	// login makes a new pgx session with the CA file ca and returns the
	// fingerprint of the certificate its handshake saw.
	login := func(ca string) (string, error) {
		t.Helper()
		c, err := pgxConnect(t, dsnWith(ca))
		if err != nil {
			return "", err
		}
		defer c.Close(context.Background())
		var one int
		if err := c.QueryRow(context.Background(), "SELECT 1").Scan(&one); err != nil {
			return "", err
		}
		tc, ok := c.PgConn().Conn().(*tls.Conn)
		if !ok {
			return "", errors.New("not TLS")
		}
		return tlsconf.Fingerprint(tc.ConnectionState().PeerCertificates[0]), nil
	}
	show := func() string {
		t.Helper()
		var info struct {
			Server struct {
				SHA256 string `json:"sha256_fingerprint"`
			} `json:"server"`
		}
		if err := json.Unmarshal([]byte(mustCLI(t, s, "certificate", "show", "-o", "json")), &info); err != nil {
			t.Fatal(err)
		}
		return info.Server.SHA256
	}
	// mustLogin checks pgx and psql logins with ca against the certificate
	// certificate show reports.
	mustLogin := func(when, ca string) {
		t.Helper()
		want := show()
		fp, err := login(ca)
		if err != nil || fp != want {
			t.Fatalf("%s: pgx verify-full, channel_binding=require with %s: presented %s, %v; want %s", when, ca, fp, err, want)
		}
		if out, err := psql(t, strings.Replace(s.dsn("user="+admin+" sslmode=verify-full channel_binding=require"),
			"sslrootcert="+s.caFile(), "sslrootcert="+ca, 1), adminPassword, "-c", "SELECT 'psql ok'"); err != nil || out != "psql ok" {
			t.Fatalf("%s: psql verify-full, channel_binding=require with %s: %q, %v", when, ca, out, err)
		}
	}

	open, err := pgxConnect(t, dsnWith(conn.SSLRootCert))
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close(context.Background())
	var pid int
	if err := open.QueryRow(context.Background(), "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	stillOpen := func(when string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var got int
		if err := open.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&got); err != nil || got != pid {
			t.Fatalf("%s: the session open since before the first rotation: pid %d, %v; want %d", when, got, err, pid)
		}
	}
	first := show()
	mustLogin("before", conn.SSLRootCert)

	// 1. A new key and certificate from the own CA.
	mustCLI(t, s, "certificate", "rotate")
	if show() == first {
		t.Fatalf("certificate rotate left the fingerprint at %s", first)
	}
	stillOpen("after rotate")
	mustLogin("after rotate", caOf())
	if tbl := mustCLI(t, s, "certificate", "show"); !strings.Contains(tbl, "own-ca") || !strings.Contains(tbl, show()) ||
		!strings.Contains(tbl, "CA 1") || !strings.Contains(tbl, "localhost") {
		t.Errorf("certificate show (table):\n%s", tbl)
	}

	// 2. A CA rollover: ca.crt holds old and new; the old CA alone still
	// verifies during the transition.
	out := mustCLI(t, s, "certificate", "rotate", "--ca", "-o", "json")
	var ro struct {
		Rollover bool              `json:"ca_rollover"`
		Bundle   []json.RawMessage `json:"ca_bundle"`
	}
	if err := json.Unmarshal([]byte(out), &ro); err != nil || !ro.Rollover || len(ro.Bundle) != 2 {
		t.Fatalf("rotate --ca: %s (%v); want a rollover with two CAs in the bundle", out, err)
	}
	if caOf() != conn.SSLRootCert {
		t.Fatalf("connection-string names %s during the rollover; want the same ca.crt", caOf())
	}
	bundle := filepath.Join(clientDir, "bundle.crt")
	copyTo(t, conn.SSLRootCert, bundle)
	stillOpen("rollover started")
	mustLogin("rollover, connection-string's CA", caOf())
	mustLogin("rollover, old CA only", oldCA)

	// 3. The transition ends: the new CA only.
	mustCLI(t, s, "certificate", "rollover", "finish")
	stillOpen("rollover finished")
	mustLogin("rollover finished, connection-string's CA", caOf())
	mustLogin("rollover finished, the transition's bundle", bundle)
	if _, err := login(oldCA); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("after the rollover a client with only the old CA: %v; want a verification failure", err)
	}

	// 4. The user's own files (as certbot keeps them: 0600 in 0700).
	live := filepath.Join(baseDir, "certrot-live")
	if err := os.MkdirAll(live, 0o700); err != nil {
		t.Fatal(err)
	}
	userCA, userKey := newUserCA(t)
	certPath, keyPath := filepath.Join(live, "fullchain.pem"), filepath.Join(live, "privkey.pem")
	writeUserPair(t, userCA, userKey, certPath, keyPath, time.Now())
	caPath := filepath.Join(live, "chain.pem")
	if err := os.WriteFile(caPath, tlsconf.EncodeCert(userCA.Raw), 0o644); err != nil {
		t.Fatal(err)
	}
	// A mismatched pair first: refused, the certificate in force kept.
	before := show()
	otherCert, otherKey := filepath.Join(live, "other.pem"), filepath.Join(live, "other.key")
	writeUserPair(t, userCA, userKey, otherCert, otherKey, time.Now())
	wantRefused(t, s, "do not match", "certificate", "rotate", "--cert", certPath, "--key", otherKey, "--ca-file", caPath)
	if err := os.Chmod(keyPath, 0o644); err != nil {
		t.Fatal(err)
	}
	wantRefused(t, s, "wider than 0600", "certificate", "rotate", "--cert", certPath, "--key", keyPath, "--ca-file", caPath)
	if err := os.Chmod(keyPath, 0o600); err != nil {
		t.Fatal(err)
	}
	if show() != before {
		t.Fatalf("a refused rotation changed the certificate in force")
	}
	mustLogin("after refusals", caOf())

	// A certificate 5 days from its end is taken, and alerts (High) at once.
	shortCA, shortKey := shortLivedCA(t, 5*24*time.Hour)
	shortCert, shortPriv := filepath.Join(live, "short.pem"), filepath.Join(live, "short.key")
	writeUserPair(t, shortCA, shortKey, shortCert, shortPriv, time.Now())
	shortChain := filepath.Join(live, "short-ca.pem")
	if err := os.WriteFile(shortChain, tlsconf.EncodeCert(shortCA.Raw), 0o644); err != nil {
		t.Fatal(err)
	}
	mustCLI(t, s, "certificate", "rotate", "--cert", shortCert, "--key", shortPriv, "--ca-file", shortChain)
	var alerts []struct {
		Type     string            `json:"type"`
		Severity string            `json:"severity"`
		Details  map[string]string `json:"details"`
	}
	if err := json.Unmarshal([]byte(mustCLI(t, s, "alert", "list", "-o", "json")), &alerts); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, a := range alerts {
		found = found || a.Type == "alert.certificate_expiring" && a.Severity == "High" && a.Details["sha256"] == show()
	}
	if !found {
		t.Fatalf("no High alert.certificate_expiring for a certificate 5 days from its end: %+v", alerts)
	}
	mustLogin("short-lived user certificate", shortChain)

	mustCLI(t, s, "certificate", "rotate", "--cert", certPath, "--key", keyPath, "--ca-file", caPath)
	if caOf() != caPath {
		t.Fatalf("connection-string names %s; want the user's CA file %s", caOf(), caPath)
	}
	stillOpen("user files")
	mustLogin("user files", caPath)
	userFirst := show()

	// 5. Renewed in place, then SIGHUP.
	daemonPID := readPID(t, s)
	hupUntil := func(when string, changed func(string) bool) string {
		t.Helper()
		if err := syscall.Kill(daemonPID, syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(15 * time.Second)
		for {
			fp := show()
			if changed(fp) {
				return fp
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: certificate show still reports %s 15 s after SIGHUP", when, fp)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	writeUserPair(t, userCA, userKey, certPath, keyPath, time.Now())
	renewed := hupUntil("renewed in place", func(fp string) bool { return fp != userFirst })
	stillOpen("SIGHUP reload")
	mustLogin("SIGHUP reload", caPath)

	// Half a renewal on disk (a new certificate, the old key) and SIGHUP:
	// refused and audited; the renewed certificate stays.
	writeUserPair(t, userCA, userKey, otherCert, otherKey, time.Now())
	copyTo(t, otherCert, certPath)
	if err := syscall.Kill(daemonPID, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(mustCLI(t, s, "audit", "search", "--event", "certificate.reload", "-o", "json"), "do not match") {
		if time.Now().After(deadline) {
			t.Fatalf("no refused certificate.reload audited after SIGHUP with a mismatched pair")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if show() != renewed {
		t.Fatalf("a mismatched pair on SIGHUP replaced the certificate in force")
	}
	mustLogin("mismatched reload refused", caPath)
	stillOpen("end")

	// Every change is audited, and no private key reached the audit log.
	rot := mustCLI(t, s, "audit", "search", "--event", "certificate.rotate", "-o", "json")
	for _, want := range []string{`"manual"`, `"ca_rollover_start"`, `"ca_rollover_finish"`, `"user_files"`, `"SIGHUP"`} {
		if !strings.Contains(rot, want) {
			t.Errorf("certificate.rotate records lack trigger %s:\n%s", want, rot)
		}
	}
	if all := mustCLI(t, s, "audit", "search", "-o", "json"); strings.Contains(all, "PRIVATE KEY") {
		t.Errorf("a private key in the audit log")
	}
}

// wantRefused runs a pgshield command that must fail with exit code 5
// (invalid value) and a message containing msg.
func wantRefused(t *testing.T, s *server, msg string, args ...string) {
	t.Helper()
	out, err := s.cli(args...)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 5 || !strings.Contains(out, msg) {
		t.Fatalf("pgshield %v: %v\n%s\nwant exit 5 with %q", args, err, out, msg)
	}
}

func copyTo(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func readPID(t *testing.T, s *server) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.dataDir, "run", "pgshield.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		t.Fatalf("pid file: %q", b)
	}
	return pid
}

// newUserCA is a CA of the test's own, standing for a public one.
func newUserCA(t *testing.T) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	ca, key, err := tlsconf.NewCA("certrot user CA", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return ca, key
}

// writeUserPair writes a new key (0600) and a certificate for localhost
// issued by ca as of now, in place.
func writeUserPair(t *testing.T, ca *x509.Certificate, caKey crypto.Signer, certPath, keyPath string, now time.Time) {
	t.Helper()
	certPEM, keyPEM, err := tlsconf.IssueServer(ca, caKey, []string{"localhost", "127.0.0.1"}, now)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certPath, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
}

// shortLivedCA is a CA that ends in life: what it issues ends with it.
func shortLivedCA(t *testing.T, life time.Duration) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "certrot short CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(life), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return ca, key
}
