package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgshield/pgshield/internal/alerting"
	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/ctl/conf"
	"github.com/pgshield/pgshield/internal/tlsconf"
)

func TestDecide(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	rb := 30 * day
	tests := []struct {
		name     string
		own      bool
		notAfter time.Time
		caEnd    time.Time
		want     Decision
	}{
		{"own, far", true, now.Add(31 * day), now.Add(365 * day), Decision{}},
		{"own, at the lead time", true, now.Add(30 * day), now.Add(365 * day), Decision{Renew: true}},
		{"own, expired", true, now.Add(-day), now.Add(365 * day), Decision{Renew: true}},
		{"own, CA ends with it", true, now.Add(20 * day), now.Add(20 * day), Decision{Alert: alerting.Medium}},
		{"own, CA ends with it, last week", true, now.Add(3 * day), now.Add(3 * day), Decision{Alert: alerting.High}},
		{"user, far", false, now.Add(31 * day), time.Time{}, Decision{}},
		{"user, within", false, now.Add(29 * day), time.Time{}, Decision{Alert: alerting.Medium}},
		{"user, 8 days", false, now.Add(8 * day), time.Time{}, Decision{Alert: alerting.Medium}},
		{"user, 7 days", false, now.Add(7 * day), time.Time{}, Decision{Alert: alerting.High}},
		{"user, expired", false, now.Add(-time.Hour), time.Time{}, Decision{Alert: alerting.High}},
	}
	for _, tt := range tests {
		if got := Decide(tt.own, tt.notAfter, tt.caEnd, now, rb); got != tt.want {
			t.Errorf("%s: Decide = %+v; want %+v", tt.name, got, tt.want)
		}
	}
}

// fixture is a server with pgshield's own CA, a fake clock, and what the
// controller records.
type fixture struct {
	t       *testing.T
	l       config.Layout
	store   *conf.Store
	c       *Controller
	now     time.Time
	mu      sync.Mutex
	events  []audit.Event
	alerts  []alerting.Finding
	applied []*tlsconf.Cert
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	l := config.Layout{Root: t.TempDir()}
	if err := os.MkdirAll(l.TLSDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := tlsconf.GenerateCA(l.CACert(), l.CAKey(), "test CA"); err != nil {
		t.Fatal(err)
	}
	if err := tlsconf.GenerateServer(l.CACert(), l.CAKey(), l.ServerCert(), l.ServerKey(), []string{"db.example", "127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	cfg := &config.Config{ServerID: "t", TLSCertFile: l.ServerCert(), TLSKeyFile: l.ServerKey(), CAFile: l.CACert(),
		Parameters: map[string]string{}}
	f := &fixture{t: t, l: l, store: conf.New(l, cfg), now: time.Now()}
	f.c = New(Config{Layout: l, Conf: f.store, Now: f.clock,
		Audit: func(e audit.Event) { f.mu.Lock(); f.events = append(f.events, e); f.mu.Unlock() },
		Alert: func(a alerting.Finding) { f.mu.Lock(); f.alerts = append(f.alerts, a); f.mu.Unlock() },
		Apply: func(c *tlsconf.Cert) { f.mu.Lock(); f.applied = append(f.applied, c); f.mu.Unlock() }})
	if _, err := f.c.Load(); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) clock() time.Time { return f.now }

func (f *fixture) lastEvent(typ string) audit.Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := len(f.events) - 1; i >= 0; i-- {
		if f.events[i].Type == typ {
			return f.events[i]
		}
	}
	f.t.Fatalf("no %s event in %+v", typ, f.events)
	return audit.Event{}
}

// userPair writes a certificate and key issued by a CA of the test's own
// into dir (0700, key 0600) and returns the paths and the CA's file.
func userPair(t *testing.T, dir string, now time.Time) (certPath, keyPath, caPath string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	ca, caKey, err := tlsconf.NewCA("user CA", now)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := tlsconf.IssueServer(ca, caKey, []string{"db.example"}, now)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath, caPath = filepath.Join(dir, "fullchain.pem"), filepath.Join(dir, "privkey.pem"), filepath.Join(dir, "ca.pem")
	for p, b := range map[string][]byte{certPath: certPEM, keyPath: keyPEM, caPath: tlsconf.EncodeCert(ca.Raw)} {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return certPath, keyPath, caPath
}

func fingerprint(c *tlsconf.Cert) string { return tlsconf.Fingerprint(c.Leaf()) }

func TestCheckRenewsOwnCertificate(t *testing.T) {
	f := newFixture(t)
	old := f.c.Current()
	f.c.Check()
	if len(f.applied) != 0 {
		t.Fatalf("a certificate two years from its end was renewed")
	}
	if got := testutil.ToFloat64(f.c.Collectors()[0]); got != float64(old.Leaf().NotAfter.Unix()) {
		t.Errorf("expiry gauge = %v; want %d", got, old.Leaf().NotAfter.Unix())
	}
	// 29 days before its end (the default lead time is 30 days).
	f.now = old.Leaf().NotAfter.Add(-29 * 24 * time.Hour)
	f.c.Check()
	if len(f.applied) != 1 {
		t.Fatalf("Check within the lead time applied %d certificates; want 1", len(f.applied))
	}
	cur := f.c.Current()
	if fingerprint(cur) == fingerprint(old) || !cur.Leaf().NotAfter.After(old.Leaf().NotAfter) {
		t.Fatalf("renewed certificate ends %v; want after %v", cur.Leaf().NotAfter, old.Leaf().NotAfter)
	}
	if strings.Join(tlsconf.Hosts(cur.Leaf()), ",") != strings.Join(tlsconf.Hosts(old.Leaf()), ",") {
		t.Errorf("renewed for %v; want the same names %v", tlsconf.Hosts(cur.Leaf()), tlsconf.Hosts(old.Leaf()))
	}
	if cur.EndPoint.Matches(old.EndPoint) {
		t.Errorf("channel binding unchanged across a renewal")
	}
	// What is on disk is what is in force (a restart keeps it).
	disk, err := readPair(f.l.ServerCert(), f.l.ServerKey())
	if err != nil || fingerprint(disk) != fingerprint(cur) {
		t.Fatalf("on disk: %v, err %v; want the renewed certificate", disk, err)
	}
	if fi, err := os.Stat(f.l.ServerKey()); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("server key mode %v (%v); want 0600", fi.Mode(), err)
	}
	if e := f.lastEvent("certificate.rotate"); e.Outcome != audit.OutcomeSuccess || e.Fields["trigger"] != "renewal" ||
		e.Fields["previous_sha256"] != fingerprint(old) {
		t.Errorf("audit event %+v; want a successful renewal naming the previous certificate", e)
	}
	if len(f.alerts) != 0 {
		t.Errorf("alerts %+v for a renewal that worked", f.alerts)
	}
	if got := testutil.ToFloat64(f.c.Collectors()[0]); got != float64(cur.Leaf().NotAfter.Unix()) {
		t.Errorf("expiry gauge after renewal = %v; want %d", got, cur.Leaf().NotAfter.Unix())
	}
	// The new one is far from its end again: the next check does nothing.
	f.c.Check()
	if len(f.applied) != 1 {
		t.Errorf("a second check renewed again")
	}
}

func TestCheckRenewBeforeParameter(t *testing.T) {
	f := newFixture(t)
	if err := f.store.Edit(func(cur *config.Config, commit func(*config.Config) error) error {
		n := *cur
		n.Parameters = map[string]string{"pgshield.certificate_renew_before": "2400h"}
		return commit(&n)
	}); err != nil {
		t.Fatal(err)
	}
	f.now = f.c.Current().Leaf().NotAfter.Add(-99 * 24 * time.Hour)
	f.c.Check()
	if len(f.applied) != 1 {
		t.Fatalf("99 days before the end with a 100-day lead time: %d renewals; want 1", len(f.applied))
	}
}

func TestCheckAlertsUserSupplied(t *testing.T) {
	f := newFixture(t)
	certPath, keyPath, caPath := userPair(t, filepath.Join(t.TempDir(), "live"), f.now)
	if _, err := f.c.Rotate(apitype.CertificateRotateRequest{CertFile: certPath, KeyFile: keyPath, CAFile: caPath}); err != nil {
		t.Fatal(err)
	}
	if len(f.alerts) != 0 {
		t.Fatalf("alerts %+v for a certificate two years from its end", f.alerts)
	}
	leaf := f.c.Current().Leaf()
	f.now = leaf.NotAfter.Add(-20 * 24 * time.Hour)
	f.c.Check()
	f.now = leaf.NotAfter.Add(-2 * 24 * time.Hour)
	f.c.Check()
	if len(f.applied) != 1 {
		t.Errorf("a user-supplied certificate was renewed by pgshield (%d applied)", len(f.applied))
	}
	if len(f.alerts) != 2 || f.alerts[0].Severity != alerting.Medium || f.alerts[1].Severity != alerting.High ||
		f.alerts[0].Type != alerting.TypeCertificateExpiring || f.alerts[1].Details["sha256"] != fingerprint(f.c.Current()) {
		t.Fatalf("alerts %+v; want certificate_expiring Medium at 20 days, then High at 2", f.alerts)
	}
	if f.alerts[0].Key == f.alerts[1].Key {
		t.Errorf("the High alert shares the Medium one's key: it would be counted on it, not raised")
	}
}

func wantInvalid(t *testing.T, err error, substr string) {
	t.Helper()
	ce, ok := clienterr.As(err)
	if !ok || ce.Code != apitype.CodeInvalid || !strings.Contains(err.Error(), substr) {
		t.Fatalf("err = %v; want an invalid-request error containing %q", err, substr)
	}
}

func TestRotateRefusals(t *testing.T) {
	f := newFixture(t)
	before := fingerprint(f.c.Current())
	dir := filepath.Join(t.TempDir(), "a")
	certA, keyA, caA := userPair(t, dir, f.now)
	_, keyB, _ := userPair(t, filepath.Join(t.TempDir(), "b"), f.now)

	_, err := f.c.Rotate(apitype.CertificateRotateRequest{CertFile: certA, KeyFile: keyB})
	wantInvalid(t, err, "do not match")
	// An expired and a not-yet-valid certificate.
	past := userDir(t, f.now.Add(-3*365*24*time.Hour))
	_, err = f.c.Rotate(apitype.CertificateRotateRequest{CertFile: past[0], KeyFile: past[1]})
	wantInvalid(t, err, "expired")
	future := userDir(t, f.now.Add(48*time.Hour))
	_, err = f.c.Rotate(apitype.CertificateRotateRequest{CertFile: future[0], KeyFile: future[1]})
	wantInvalid(t, err, "not valid before")
	// A key file others can read, and one in a directory others can enter.
	if err := os.Chmod(keyA, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = f.c.Rotate(apitype.CertificateRotateRequest{CertFile: certA, KeyFile: keyA})
	wantInvalid(t, err, "wider than 0600")
	if err := os.Chmod(keyA, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	_, err = f.c.Rotate(apitype.CertificateRotateRequest{CertFile: certA, KeyFile: keyA})
	wantInvalid(t, err, "wider than 0700")
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	// A CA file the certificate does not verify with.
	_, _, otherCA := userPair(t, filepath.Join(t.TempDir(), "c"), f.now)
	_, err = f.c.Rotate(apitype.CertificateRotateRequest{CertFile: certA, KeyFile: keyA, CAFile: otherCA})
	wantInvalid(t, err, "does not verify")
	_, err = f.c.Rotate(apitype.CertificateRotateRequest{CertFile: "relative.pem", KeyFile: keyA})
	wantInvalid(t, err, "absolute")

	if got := fingerprint(f.c.Current()); got != before || len(f.applied) != 0 {
		t.Fatalf("a refused rotation changed the certificate in force")
	}
	if cfg := f.store.Get(); cfg.TLSCertFile != f.l.ServerCert() || cfg.CAFile != f.l.CACert() {
		t.Fatalf("a refused rotation changed the configuration: %+v", cfg)
	}
	e := f.lastEvent("certificate.rotate")
	if e.Outcome != audit.OutcomeFailure {
		t.Errorf("refusal audited as %+v", e)
	}
	for _, ev := range f.events {
		if strings.Contains(ev.Reason, "PRIVATE KEY") {
			t.Errorf("key material in an audit event: %+v", ev)
		}
	}

	// The good pair is taken, and its paths and CA saved.
	info, err := f.c.Rotate(apitype.CertificateRotateRequest{CertFile: certA, KeyFile: keyA, CAFile: caA})
	if err != nil {
		t.Fatal(err)
	}
	if info.Source != apitype.CertUserSupplied || info.CAFile != caA || len(f.applied) != 1 {
		t.Fatalf("info %+v after a user rotation", info)
	}
	if cfg := f.store.Get(); cfg.TLSCertFile != certA || cfg.TLSKeyFile != keyA || cfg.CAFile != caA {
		t.Fatalf("configuration %+v; want the user's files", cfg)
	}
	// pgshield does not issue over a user's certificate.
	_, err = f.c.Rotate(apitype.CertificateRotateRequest{})
	wantInvalid(t, err, "user-supplied")
}

// userDir is userPair's certificate and key, issued as of now.
func userDir(t *testing.T, now time.Time) [2]string {
	c, k, _ := userPair(t, filepath.Join(t.TempDir(), "u"), now)
	return [2]string{c, k}
}

// verifies reports whether a client trusting caPEM accepts the chain.
func verifies(t *testing.T, c *tlsconf.Cert, caPEM []byte, now time.Time) bool {
	t.Helper()
	cas, err := tlsconf.ParseCerts(caPEM)
	if err != nil {
		t.Fatal(err)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, ca := range cas {
		roots.AddCert(ca)
	}
	for _, der := range c.TLS.Certificate[1:] {
		ic, _ := x509.ParseCertificate(der)
		inter.AddCert(ic)
	}
	_, err = c.Leaf().Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: "db.example", CurrentTime: now})
	return err == nil
}

// TestCARollover: with a CA of path length 1 (what init makes now) the
// new CA issues from the start of the transition, sent with its
// cross-signed certificate, so a client with only the old CA, one with
// only the new and one with the bundle all verify; after finish the new
// CA alone and the bundle do.
func TestCARollover(t *testing.T) { testCARollover(t, false) }

// TestCARolloverPathLenZero: a CA of path length 0 (init's before) cannot
// cross-sign; the old CA issues until finish, so old-only clients still
// verify during the transition.
func TestCARolloverPathLenZero(t *testing.T) { testCARollover(t, true) }

func testCARollover(t *testing.T, pathLenZero bool) {
	f := newFixture(t)
	if pathLenZero {
		legacyCA(t, f)
	}
	oldCA, err := os.ReadFile(f.l.CACert())
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.c.FinishRollover()
	wantInvalid(t, err, "no CA rollover")

	info, err := f.c.Rotate(apitype.CertificateRotateRequest{CA: true})
	if err != nil {
		t.Fatal(err)
	}
	if !info.Rollover || len(info.CABundle) != 2 {
		t.Fatalf("after rotate --ca: rollover %v, bundle of %d; want a transition with old and new", info.Rollover, len(info.CABundle))
	}
	bundle, _ := os.ReadFile(f.l.CACert())
	nextPEM, _ := os.ReadFile(nextCA(f.l))
	next, _ := tlsconf.ParseCerts(nextPEM)
	mid := f.c.Current()
	if !verifies(t, mid, oldCA, f.now) || !verifies(t, mid, bundle, f.now) {
		t.Fatalf("during the transition a client with the old CA (%v) or the bundle (%v) does not verify",
			verifies(t, mid, oldCA, f.now), verifies(t, mid, bundle, f.now))
	}
	newIssues := mid.Leaf().CheckSignatureFrom(next[0]) == nil
	if newIssues == pathLenZero || verifies(t, mid, nextPEM, f.now) == pathLenZero {
		t.Fatalf("path length 0 %v: the new CA issues %v, a client with only the new CA verifies %v; want %v",
			pathLenZero, newIssues, verifies(t, mid, nextPEM, f.now), !pathLenZero)
	}
	if e := f.lastEvent("certificate.ca_rollover"); e.Fields["cross_signed"] != !pathLenZero {
		t.Errorf("rollover start audited %+v; want cross_signed %v", e, !pathLenZero)
	}
	_, err = f.c.Rotate(apitype.CertificateRotateRequest{CA: true})
	wantInvalid(t, err, "already")
	// A renewal during the transition still works (the old CA signs).
	if _, err := f.c.Rotate(apitype.CertificateRotateRequest{}); err != nil {
		t.Fatal(err)
	}
	if e := f.lastEvent("certificate.rotate"); e.Fields["trigger"] != "manual" {
		t.Errorf("certificate rotate audited with trigger %v; want manual", e.Fields["trigger"])
	}
	if !verifies(t, f.c.Current(), oldCA, f.now) || !verifies(t, f.c.Current(), bundle, f.now) {
		t.Fatalf("a renewal during the transition lost the old CA's or the bundle's clients")
	}

	info, err = f.c.FinishRollover()
	if err != nil {
		t.Fatal(err)
	}
	newCA, _ := os.ReadFile(f.l.CACert())
	end := f.c.Current()
	if info.Rollover || len(info.CABundle) != 1 || info.CABundle[0].SHA256 != info.Chain[0].SHA256 {
		t.Fatalf("after finish: %+v; want the new CA only, issuing the server certificate", info)
	}
	if !verifies(t, end, newCA, f.now) || !verifies(t, end, bundle, f.now) {
		t.Fatalf("after the transition a client with the new CA or the transition's bundle does not verify")
	}
	if verifies(t, end, oldCA, f.now) {
		t.Fatalf("after the transition the old CA alone still verifies: it was not dropped")
	}
	for _, p := range []string{nextCA(f.l), nextCAKey(f.l), crossCA(f.l)} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left after the transition (%v)", p, err)
		}
	}
	// The new CA renews from now on.
	f.now = end.Leaf().NotAfter.Add(-time.Hour)
	f.c.Check()
	if !verifies(t, f.c.Current(), newCA, f.now) || fingerprint(f.c.Current()) == fingerprint(end) {
		t.Fatalf("renewal after the rollover is not from the new CA")
	}
}

func TestReload(t *testing.T) {
	f := newFixture(t)
	dir := filepath.Join(t.TempDir(), "live")
	certPath, keyPath, caPath := userPair(t, dir, f.now)
	b, err := os.ReadFile(caPath)
	if err != nil {
		t.Fatal(err)
	}
	// The user's CA signs the renewals, as a public CA would.
	cas, _ := tlsconf.ParseCerts(b)
	ca, caKey, err := tlsconf.NewCA("user CA", f.now)
	if err != nil {
		t.Fatal(err)
	}
	cas = append(cas, ca)
	if err := os.WriteFile(caPath, append(tlsconf.EncodeCert(cas[0].Raw), tlsconf.EncodeCert(ca.Raw)...), 0o600); err != nil {
		t.Fatal(err)
	}
	renew := func(certPath, keyPath string) {
		t.Helper()
		certPEM, keyPEM, err := tlsconf.IssueServer(ca, caKey, []string{"db.example"}, f.now)
		if err != nil {
			t.Fatal(err)
		}
		if keyPath != "" {
			if err := os.WriteFile(keyPath, keyPEM, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(certPath, certPEM, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.c.Rotate(apitype.CertificateRotateRequest{CertFile: certPath, KeyFile: keyPath, CAFile: caPath}); err != nil {
		t.Fatal(err)
	}
	first := fingerprint(f.c.Current())
	// Unchanged files: nothing applied.
	if err := f.c.Reload("SIGHUP"); err != nil || len(f.applied) != 1 {
		t.Fatalf("reload of unchanged files: err %v, %d applied; want nothing new", err, len(f.applied))
	}
	// The files renewed in place (certbot): the new pair is taken.
	renew(certPath, keyPath)
	if err := f.c.Reload("SIGHUP"); err != nil {
		t.Fatal(err)
	}
	second := fingerprint(f.c.Current())
	if second == first || len(f.applied) != 2 {
		t.Fatalf("reload after renewal kept %s", first)
	}
	// Half a renewal (a new certificate, the old key): refused, kept.
	renew(certPath, "")
	err = f.c.Reload("SIGHUP")
	wantInvalid(t, err, "do not match")
	if fingerprint(f.c.Current()) != second || len(f.applied) != 2 {
		t.Fatalf("a mismatched pair on reload replaced the certificate in force")
	}
	if e := f.lastEvent("certificate.reload"); e.Outcome != audit.OutcomeFailure || e.Fields["trigger"] != "SIGHUP" {
		t.Errorf("refused reload audited as %+v", e)
	}
	// A pair from another CA than the configured CA file: clients could
	// no longer verify it; refused, kept.
	c4, k4, _ := userPair(t, filepath.Join(t.TempDir(), "other-ca"), f.now)
	copyFile(t, c4, certPath)
	copyFile(t, k4, keyPath)
	wantInvalid(t, f.c.Reload("SIGHUP"), "does not verify")
	if fingerprint(f.c.Current()) != second {
		t.Fatalf("a certificate the CA file does not verify replaced the certificate in force on reload")
	}
	// An expired certificate: refused, kept.
	old := userDir(t, f.now.Add(-3*365*24*time.Hour))
	copyFile(t, old[0], certPath)
	copyFile(t, old[1], keyPath)
	wantInvalid(t, f.c.Reload("SIGHUP"), "expired")
	if fingerprint(f.c.Current()) != second {
		t.Fatalf("an expired certificate on reload replaced the certificate in force")
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestLoadRecoversCutRotation: a rotation cut short after writing the new
// key but not the certificate leaves a pair that does not match; at start
// the own CA issues a new one for the same names. A user's mismatched
// pair is an error (pgshield cannot issue for it).
func TestLoadRecoversCutRotation(t *testing.T) {
	f := newFixture(t)
	old := f.c.Current()
	otherKey := userDir(t, f.now)[1]
	copyFile(t, otherKey, f.l.ServerKey())
	c := New(Config{Layout: f.l, Conf: f.store, Now: f.clock,
		Audit: func(e audit.Event) { f.mu.Lock(); f.events = append(f.events, e); f.mu.Unlock() }})
	cur, err := c.Load()
	if err != nil {
		t.Fatalf("Load after a cut rotation: %v", err)
	}
	if fingerprint(cur) == fingerprint(old) || strings.Join(tlsconf.Hosts(cur.Leaf()), ",") != strings.Join(tlsconf.Hosts(old.Leaf()), ",") {
		t.Fatalf("recovered certificate %v; want a new one for %v", tlsconf.Hosts(cur.Leaf()), tlsconf.Hosts(old.Leaf()))
	}
	if disk, err := readPair(f.l.ServerCert(), f.l.ServerKey()); err != nil || fingerprint(disk) != fingerprint(cur) {
		t.Fatalf("on disk after recovery: %v", err)
	}
	if e := f.lastEvent("certificate.rotate"); e.Fields["trigger"] != "recovery" || e.Fields["previous_sha256"] != fingerprint(old) {
		t.Errorf("recovery audited as %+v", e)
	}

	u := newFixture(t)
	certPath, keyPath, _ := userPair(t, filepath.Join(t.TempDir(), "live"), u.now)
	if _, err := u.c.Rotate(apitype.CertificateRotateRequest{CertFile: certPath, KeyFile: keyPath}); err != nil {
		t.Fatal(err)
	}
	copyFile(t, otherKey, keyPath)
	if _, err := New(Config{Layout: u.l, Conf: u.store}).Load(); !errors.Is(err, tlsconf.ErrMismatch) {
		t.Fatalf("Load of a mismatched user pair: %v; want ErrMismatch", err)
	}
}

// TestKeyFileOwner: a key file or directory another user owns could be
// widened or swapped by that user: refused even at 0600 in 0700.
func TestKeyFileOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files away")
	}
	f := newFixture(t)
	dir := filepath.Join(t.TempDir(), "live")
	certPath, keyPath, _ := userPair(t, dir, f.now)
	if err := os.Chown(keyPath, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	_, err := f.c.Rotate(apitype.CertificateRotateRequest{CertFile: certPath, KeyFile: keyPath})
	wantInvalid(t, err, "owned by uid 65534")
	if err := os.Chown(keyPath, 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	_, err = f.c.Rotate(apitype.CertificateRotateRequest{CertFile: certPath, KeyFile: keyPath})
	wantInvalid(t, err, "owned by uid 65534")
	if err := os.Chown(dir, 0, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.c.Rotate(apitype.CertificateRotateRequest{CertFile: certPath, KeyFile: keyPath}); err != nil {
		t.Fatalf("root's files after the owner check: %v", err)
	}
	// A FIFO named as the certificate is refused, not waited on.
	fifo := filepath.Join(dir, "fifo.pem")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = f.c.Rotate(apitype.CertificateRotateRequest{CertFile: fifo, KeyFile: keyPath})
	wantInvalid(t, err, "not a regular file")
}

// TestRotateToExpiringAlertsAtOnce: a user certificate already within the
// lead time alerts when it is put in force, not at the next check.
func TestRotateToExpiringAlertsAtOnce(t *testing.T) {
	f := newFixture(t)
	certPath, keyPath, _ := userPair(t, filepath.Join(t.TempDir(), "live"), f.now)
	// The same files, but the clock 3 days before their end.
	b, _ := os.ReadFile(certPath)
	certs, _ := tlsconf.ParseCerts(b)
	f.now = certs[0].NotAfter.Add(-3 * 24 * time.Hour)
	if _, err := f.c.Rotate(apitype.CertificateRotateRequest{CertFile: certPath, KeyFile: keyPath}); err != nil {
		t.Fatal(err)
	}
	if len(f.alerts) != 1 || f.alerts[0].Severity != alerting.High || f.alerts[0].Details["days_left"] != "3" {
		t.Fatalf("alerts after rotating to a certificate 3 days from its end: %+v; want one High", f.alerts)
	}
}

// legacyCA replaces the fixture's CA and certificate with a CA of path
// length 0, as init made before, and reloads.
func legacyCA(t *testing.T, f *fixture) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "legacy CA"},
		NotBefore: f.now.Add(-time.Hour), NotAfter: f.now.Add(tlsconf.CALifetime), IsCA: true, BasicConstraintsValid: true,
		MaxPathLenZero: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	if tlsconf.CanCrossSign(ca) {
		t.Fatal("a path-length-0 CA reported as able to cross-sign")
	}
	keyPEM, _ := tlsconf.EncodeKey(key)
	if err := os.WriteFile(f.l.CAKey(), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.l.CACert(), tlsconf.EncodeCert(der), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := tlsconf.GenerateServer(f.l.CACert(), f.l.CAKey(), f.l.ServerCert(), f.l.ServerKey(), []string{"db.example"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.c.Load(); err != nil {
		t.Fatal(err)
	}
}
