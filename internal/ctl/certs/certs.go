// Package certs is the daemon's controller of the gateway's server
// certificate: it loads it, rotates it live (a new key and certificate
// from pgshield's own CA, or the user's files), renews the own CA's
// certificate ahead of expiry, raises alert.certificate_expiring for a
// user-supplied one, runs a CA rollover (ca.crt holds the old and the new
// CA during the transition) and reloads the files on SIGHUP.
//
// Whatever it is handed, from the API or from disk, is checked before the
// gateway sees it: the key must be the certificate's, the certificate
// valid now and for server authentication, a user's key file 0600 in a
// 0700 directory. A refusal keeps the certificate in force and is an audit
// event; so is every change. Private keys never reach a log, an audit
// record or an error.
//
// Lock order: mu is taken before conf.Store's lock (a user-supplied
// certificate is saved in pgshield.json) and before the gateway's and the
// alerts controller's leaves (Apply, Alert); none of those calls back.
package certs

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgshield/pgshield/internal/alerting"
	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/ctl/conf"
	"github.com/pgshield/pgshield/internal/tlsconf"
)

// Defaults.
const (
	// checkInterval is how often expiry is checked: under the alerts
	// store's repeat window (an hour), so a standing expiry alert is one
	// alert whose count grows, not a new one each check.
	checkInterval = 30 * time.Minute
	// highWithin: an expiry this close raises a High alert, not Medium.
	highWithin = 7 * 24 * time.Hour
	// maxFile bounds what is read of a certificate or key file.
	maxFile = 1 << 20
)

// Config is what the controller needs.
type Config struct {
	Layout config.Layout
	Conf   *conf.Store
	Log    *slog.Logger
	Audit  func(audit.Event)
	// Alert raises an alert (the alerts controller's Raise); nil: none.
	Alert func(alerting.Finding)
	// Apply hands a new certificate to the gateway; nil until it runs.
	Apply func(*tlsconf.Cert)
	// Now is the clock; nil is time.Now.
	Now func() time.Time
	// CheckInterval overrides checkInterval.
	CheckInterval time.Duration
}

// Controller owns the certificate in force.
type Controller struct {
	cfg Config
	mu  struct {
		sync.Mutex
		cur      *tlsconf.Cert
		loadedAt time.Time
	}
}

// New makes the controller; Load reads the certificate.
func New(cfg Config) *Controller {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Audit == nil {
		cfg.Audit = func(audit.Event) {}
	}
	if cfg.Alert == nil {
		cfg.Alert = func(alerting.Finding) {}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.CheckInterval <= 0 {
		cfg.CheckInterval = checkInterval
	}
	return &Controller{cfg: cfg}
}

// nextCA and nextCAKey hold the new CA during a rollover's transition.
func nextCA(l config.Layout) string    { return filepath.Join(l.TLSDir(), "ca-next.crt") }
func nextCAKey(l config.Layout) string { return filepath.Join(l.TLSDir(), "ca-next.key") }

// crossCA is the new CA signed by the old one, during a rollover's
// transition (an old CA of path length 1).
func crossCA(l config.Layout) string { return filepath.Join(l.TLSDir(), "ca-cross.crt") }

// Load reads the configured certificate at start. It is not refused for
// its dates here: an expired certificate alerts (Check) rather than
// keeping the whole server down.
func (c *Controller) Load() (*tlsconf.Cert, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cfg := c.cfg.Conf.Get()
	cert, err := readPair(cfg.TLSCertFile, cfg.TLSKeyFile)
	if errors.Is(err, tlsconf.ErrMismatch) && c.ownCA(cfg) {
		// A rotation cut short between its two writes (the key is written
		// first): the own CA issues again for the names on file.
		cert, err = c.recoverLocked(err)
	}
	if err != nil {
		return nil, err
	}
	// Reload's other checks, but for the dates (checked at the leaf's own
	// start): an expired certificate alerts rather than keeping the server down.
	if err := tlsconf.CheckServing(cert.Leaf(), cert.Leaf().NotBefore); err != nil {
		return nil, fmt.Errorf("server certificate %s: %w", cfg.TLSCertFile, err)
	}
	c.mu.cur, c.mu.loadedAt = cert, c.cfg.Now()
	return cert, nil
}

// recoverLocked issues a new pair when server.key no longer matches
// server.crt at start.
func (c *Controller) recoverLocked(cause error) (*tlsconf.Cert, error) {
	l := c.cfg.Layout
	b, err := readBounded(l.ServerCert())
	if err != nil {
		return nil, cause
	}
	chain, err := tlsconf.ParseCerts(b)
	if err != nil {
		return nil, cause
	}
	ca, caKey, err := c.signer()
	if err != nil {
		return nil, fmt.Errorf("%w; the own CA cannot issue a new one: %v", cause, err)
	}
	c.mu.cur = &tlsconf.Cert{TLS: tls.Certificate{Leaf: chain[0]}} // the names to issue for
	if err := c.issueLocked(ca, caKey, "recovery"); err != nil {
		return nil, fmt.Errorf("%w; issuing a new one failed: %v", cause, err)
	}
	c.cfg.Log.Warn("The server key did not match its certificate (a rotation was cut short); a new pair was issued.")
	return c.mu.cur, nil
}

// Collectors are the controller's Prometheus metrics.
func (c *Controller) Collectors() []prometheus.Collector {
	return []prometheus.Collector{prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "pgshield_certificate_expiry_timestamp_seconds",
		Help: "When the server certificate the gateway presents expires (Unix time)."}, func() float64 {
		if cur := c.Current(); cur != nil {
			return float64(cur.Leaf().NotAfter.Unix())
		}
		return 0
	})}
}

// Current is the certificate in force.
func (c *Controller) Current() *tlsconf.Cert {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.cur
}

// ownCA reports whether pgshield's CA issues the server certificate.
func (c *Controller) ownCA(cfg *config.Config) bool {
	l := c.cfg.Layout
	if cfg.TLSCertFile != l.ServerCert() || cfg.TLSKeyFile != l.ServerKey() {
		return false
	}
	_, err := os.Stat(l.CAKey())
	return err == nil
}

func (c *Controller) inRollover() bool {
	_, err := os.Stat(nextCAKey(c.cfg.Layout))
	return err == nil
}

// readPair reads a certificate chain and its key, bounded, and pairs them.
func readPair(certPath, keyPath string) (*tlsconf.Cert, error) {
	certPEM, err := readBounded(certPath)
	if err != nil {
		return nil, fmt.Errorf("server certificate: %w", err)
	}
	// The key file's checks hold at start as on reload: the checked
	// descriptor is the one read.
	keyPEM, err := tlsconf.ReadKeyFile(keyPath, maxFile)
	if err != nil {
		return nil, fmt.Errorf("server key: %w", err)
	}
	return tlsconf.ParsePair(certPEM, keyPEM)
}

func readBounded(path string) ([]byte, error) {
	// A FIFO or device named by mistake must not block or stream.
	if fi, err := os.Stat(path); err != nil {
		return nil, err
	} else if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, maxFile+1)
	n, err := f.ReadAt(b, 0)
	if n > maxFile {
		return nil, fmt.Errorf("%s is over %d bytes", path, maxFile)
	}
	if err != nil && n == 0 {
		return nil, err
	}
	return b[:n], nil
}

// invalid is a refusal of what the caller handed in (HTTP 400, exit 5).
func invalid(format string, args ...any) error {
	return clienterr.New(apitype.CodeInvalid, format, args...)
}

// signer finds the CA that issues server certificates: the member of the
// ca.crt bundle whose key is ca.key. Found by key, not position, so that a
// rollover's finish interrupted between its writes still finds it.
func (c *Controller) signer() (*x509.Certificate, crypto.Signer, error) {
	l := c.cfg.Layout
	b, err := readBounded(l.CACert())
	if err != nil {
		return nil, nil, err
	}
	bundle, err := tlsconf.ParseCerts(b)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", l.CACert(), err)
	}
	kb, err := readBounded(l.CAKey())
	if err != nil {
		return nil, nil, err
	}
	key, err := tlsconf.ParseKey(kb)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", l.CAKey(), err)
	}
	for _, ca := range bundle {
		if tlsconf.SameKey(ca.PublicKey, key) {
			return ca, key, nil
		}
	}
	return nil, nil, fmt.Errorf("no CA in %s belongs to %s", l.CACert(), l.CAKey())
}

// Rotate replaces the certificate in force, live: new handshakes present
// the new one, open sessions keep theirs. See apitype.CertificateRotateRequest.
func (c *Controller) Rotate(req apitype.CertificateRotateRequest) (apitype.CertificateInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var reason string
	var err error
	switch {
	case req.CA && (req.CertFile != "" || req.KeyFile != "" || req.CAFile != ""):
		err = invalid("--ca makes a new CA of pgshield's own; it takes no --cert, --key or --ca-file")
	case req.CA:
		reason = "ca_rollover_start"
		err = c.startRolloverLocked()
	case req.CertFile != "" || req.KeyFile != "":
		reason = "user_files"
		err = c.useFilesLocked(req)
	case req.CAFile != "":
		err = invalid("--ca-file goes with --cert and --key")
	default:
		reason = "manual"
		err = c.renewLocked()
	}
	if err != nil {
		c.refused("certificate.rotate", reason, err)
		return apitype.CertificateInfo{}, err
	}
	c.checkLocked() // a certificate already near its end alerts now
	return c.infoLocked(), nil
}

// refused records a refused or failed change; the certificate in force
// stays.
func (c *Controller) refused(typ, reason string, err error) {
	c.cfg.Log.Error("Certificate change refused; the certificate in force is kept.", "reason", reason, "error", err)
	c.cfg.Audit(audit.Event{Type: typ, Outcome: audit.OutcomeFailure, Reason: err.Error(),
		Fields: map[string]any{"trigger": reason}})
}

// renewLocked issues a new key and certificate from the own CA for the
// same names.
func (c *Controller) renewLocked() error {
	cfg := c.cfg.Conf.Get()
	if !c.ownCA(cfg) {
		return invalid("the server certificate is user-supplied (%s): rotate it with --cert and --key, or replace its files and send pgshield SIGHUP", cfg.TLSCertFile)
	}
	ca, key, err := c.signer()
	if err != nil {
		return err
	}
	return c.issueLocked(ca, key, "manual")
}

func (c *Controller) issueLocked(ca *x509.Certificate, caKey crypto.Signer, what string) error {
	now := c.cfg.Now()
	certPEM, keyPEM, err := tlsconf.IssueServerChain(ca, caKey, tlsconf.Hosts(c.mu.cur.Leaf()), now, c.chainFor(ca))
	if err != nil {
		return err
	}
	next, err := tlsconf.ParsePair(certPEM, keyPEM)
	if err != nil {
		return err
	}
	if err := tlsconf.CheckServing(next.Leaf(), now); err != nil {
		return err
	}
	l := c.cfg.Layout
	// The key first: a crash between the two writes leaves a pair that
	// does not match, which the next start issues anew (Load), rather than
	// a certificate whose key is gone.
	if err := config.WriteFileAtomic(l.ServerKey(), keyPEM, 0o600); err != nil {
		return err
	}
	if err := config.WriteFileAtomic(l.ServerCert(), certPEM, 0o644); err != nil {
		return err
	}
	c.swapLocked(next, what)
	return nil
}

// swapLocked puts next in force and records it.
func (c *Controller) swapLocked(next *tlsconf.Cert, what string) {
	prev := c.mu.cur
	c.mu.cur, c.mu.loadedAt = next, c.cfg.Now()
	if c.cfg.Apply != nil {
		c.cfg.Apply(next)
	}
	f := certFields(next.Leaf())
	f["trigger"] = what
	if prev != nil {
		f["previous_sha256"] = tlsconf.Fingerprint(prev.Leaf())
	}
	c.cfg.Log.Info("Server certificate in force.", "trigger", what, "sha256", f["sha256"], "not_after", f["not_after"])
	c.cfg.Audit(audit.Event{Type: "certificate.rotate", Outcome: audit.OutcomeSuccess, Fields: f})
}

func certFields(leaf *x509.Certificate) map[string]any {
	return map[string]any{"subject": leaf.Subject.String(), "issuer": leaf.Issuer.String(),
		"sha256": tlsconf.Fingerprint(leaf), "not_after": leaf.NotAfter.UTC().Format(time.RFC3339)}
}

// useFilesLocked puts the user's certificate in force and saves its paths.
func (c *Controller) useFilesLocked(req apitype.CertificateRotateRequest) error {
	if req.CertFile == "" || req.KeyFile == "" {
		return invalid("--cert and --key go together")
	}
	for _, p := range []string{req.CertFile, req.KeyFile, req.CAFile} {
		if p != "" && (!filepath.IsAbs(p) || filepath.Clean(p) != p) {
			return invalid("%q: give an absolute, clean path", p)
		}
	}
	next, err := c.checkFiles(req.CertFile, req.KeyFile)
	if err != nil {
		return err
	}
	if req.CAFile != "" {
		if err := verifiesWith(next, req.CAFile, c.cfg.Now()); err != nil {
			return err
		}
	}
	err = c.cfg.Conf.Edit(func(cur *config.Config, commit func(*config.Config) error) error {
		n := *cur
		n.TLSCertFile, n.TLSKeyFile, n.CAFile = req.CertFile, req.KeyFile, req.CAFile
		return commit(&n)
	})
	if err != nil {
		return fmt.Errorf("saving the configuration: %w", err)
	}
	c.swapLocked(next, "user_files")
	return nil
}

// checkFiles reads and checks a certificate and key from disk.
func (c *Controller) checkFiles(certPath, keyPath string) (*tlsconf.Cert, error) {
	next, err := readPair(certPath, keyPath) // the key file's checks included
	if err != nil {
		if errors.Is(err, tlsconf.ErrMismatch) {
			return nil, invalid("%s and %s do not match: %v", certPath, keyPath, err)
		}
		return nil, invalid("%v", err)
	}
	if err := tlsconf.CheckServing(next.Leaf(), c.cfg.Now()); err != nil {
		return nil, invalid("%s: %v", certPath, err)
	}
	return next, nil
}

// verifiesWith checks that a client holding caFile verifies cert, so the
// connection string stays good.
func verifiesWith(cert *tlsconf.Cert, caFile string, now time.Time) error {
	b, err := readBounded(caFile)
	if err != nil {
		return invalid("CA file: %v", err)
	}
	cas, err := tlsconf.ParseCerts(b)
	if err != nil {
		return invalid("CA file %s: %v", caFile, err)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, ca := range cas {
		roots.AddCert(ca)
	}
	for _, der := range cert.TLS.Certificate[1:] {
		if ic, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(ic)
		}
	}
	if _, err := cert.Leaf().Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return invalid("the certificate does not verify with %s: %v", caFile, err)
	}
	return nil
}

// Reload reads the configured files again (SIGHUP: certbot renewed them
// in place). A pair that fails a check, or that the configured CA file
// does not verify, is refused and the one in force kept; the same
// certificate again changes nothing.
func (c *Controller) Reload(trigger string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	cfg := c.cfg.Conf.Get()
	next, err := c.checkFiles(cfg.TLSCertFile, cfg.TLSKeyFile)
	if err == nil && cfg.CAFile != "" {
		// Clients verify with the CA file connection-string names: a
		// renewal from another CA would lock them all out.
		err = verifiesWith(next, cfg.CAFile, c.cfg.Now())
	}
	if err != nil {
		c.refused("certificate.reload", trigger, err)
		return err
	}
	// The same leaf means the same key: ParsePair matched it to the leaf.
	if c.mu.cur != nil && tlsconf.Fingerprint(next.Leaf()) == tlsconf.Fingerprint(c.mu.cur.Leaf()) {
		c.cfg.Audit(audit.Event{Type: "certificate.reload", Outcome: audit.OutcomeSuccess,
			Fields: map[string]any{"trigger": trigger, "changed": false, "sha256": tlsconf.Fingerprint(next.Leaf())}})
		return nil
	}
	c.swapLocked(next, trigger)
	c.checkLocked()
	return nil
}

// startRolloverLocked makes a new CA and publishes ca.crt as the old and
// the new CA. A client that still holds only the old ca.crt must keep
// verifying until FinishRollover, while clients fetch the bundle:
//   - an old CA of path length 1 (NewCA's) cross-signs the new one; the
//     new CA issues the certificate at once and the gateway sends the
//     cross-signed CA after it, so old-only clients chain up to the old
//     CA and the others stop at the new one;
//   - an old CA of path length 0 (made before) cannot: the gateway keeps
//     presenting a certificate of the old CA (a new key) until the end.
func (c *Controller) startRolloverLocked() error {
	cfg := c.cfg.Conf.Get()
	if !c.ownCA(cfg) {
		return invalid("a CA rollover is for pgshield's own CA; the server certificate is user-supplied")
	}
	if c.inRollover() {
		return invalid("a CA rollover is already in its transition: end it with 'pgshield certificate rollover finish'")
	}
	ca, caKey, err := c.signer()
	if err != nil {
		return err
	}
	now := c.cfg.Now()
	newCA, newKey, err := tlsconf.NewCA("pgshield CA "+now.UTC().Format("2006-01-02 15:04:05"), now)
	if err != nil {
		return err
	}
	keyPEM, err := tlsconf.EncodeKey(newKey)
	if err != nil {
		return err
	}
	l := c.cfg.Layout
	if err := config.WriteFileAtomic(nextCAKey(l), keyPEM, 0o600); err != nil {
		return err
	}
	if err := config.WriteFileAtomic(nextCA(l), tlsconf.EncodeCert(newCA.Raw), 0o644); err != nil {
		return err
	}
	bundle := append(tlsconf.EncodeCert(ca.Raw), tlsconf.EncodeCert(newCA.Raw)...)
	if err := config.WriteFileAtomic(l.CACert(), bundle, 0o644); err != nil {
		return err
	}
	fields := map[string]any{"phase": "start", "old_ca_sha256": tlsconf.Fingerprint(ca), "new_ca_sha256": tlsconf.Fingerprint(newCA),
		"cross_signed": false}
	if !tlsconf.CanCrossSign(ca) {
		c.cfg.Audit(audit.Event{Type: "certificate.ca_rollover", Outcome: audit.OutcomeSuccess, Fields: fields})
		return c.issueLocked(ca, caKey, "ca_rollover_start")
	}
	cross, err := tlsconf.CrossSign(newCA, ca, caKey, now)
	if err != nil {
		return err
	}
	// The cross-signed CA first, then the new key as the issuing one: a
	// renewal in between, or after a crash, still sends the cross chain.
	if err := config.WriteFileAtomic(crossCA(l), tlsconf.EncodeCert(cross.Raw), 0o644); err != nil {
		return err
	}
	if err := config.WriteFileAtomic(l.CAKey(), keyPEM, 0o600); err != nil {
		return err
	}
	fields["cross_signed"] = true
	c.cfg.Audit(audit.Event{Type: "certificate.ca_rollover", Outcome: audit.OutcomeSuccess, Fields: fields})
	return c.issueLocked(newCA, newKey, "ca_rollover_start")
}

// chainFor is what the gateway sends after a leaf ca issued: ca, or during
// a cross-signed rollover the new CA as the old one signed it.
func (c *Controller) chainFor(ca *x509.Certificate) []*x509.Certificate {
	if b, err := readBounded(crossCA(c.cfg.Layout)); err == nil {
		if cs, err := tlsconf.ParseCerts(b); err == nil {
			if k, ok := ca.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); ok && k.Equal(cs[0].PublicKey) {
				return cs[:1]
			}
		}
	}
	return []*x509.Certificate{ca}
}

// FinishRollover ends the transition: the server certificate is issued by
// the new CA, and ca.crt holds the new CA only. Clients that took the
// bundle during the transition keep verifying; those still holding only
// the old CA do not.
func (c *Controller) FinishRollover() (apitype.CertificateInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.finishLocked(); err != nil {
		c.refused("certificate.ca_rollover", "ca_rollover_finish", err)
		return apitype.CertificateInfo{}, err
	}
	return c.infoLocked(), nil
}

func (c *Controller) finishLocked() error {
	if !c.inRollover() {
		return invalid("no CA rollover is in its transition: start one with 'pgshield certificate rotate --ca'")
	}
	l := c.cfg.Layout
	kb, err := readBounded(nextCAKey(l))
	if err != nil {
		return err
	}
	key, err := tlsconf.ParseKey(kb)
	if err != nil {
		return fmt.Errorf("%s: %w", nextCAKey(l), err)
	}
	cb, err := readBounded(nextCA(l))
	if err != nil {
		return err
	}
	cas, err := tlsconf.ParseCerts(cb)
	if err != nil {
		return fmt.Errorf("%s: %w", nextCA(l), err)
	}
	newCA := cas[0]
	if !tlsconf.SameKey(newCA.PublicKey, key) {
		return fmt.Errorf("%s and %s do not match", nextCA(l), nextCAKey(l))
	}
	// ca.crt still holds both CAs here, so ca.key may change first: the
	// signer is found by key either way.
	if err := config.WriteFileAtomic(l.CAKey(), kb, 0o600); err != nil {
		return err
	}
	// Without the cross-signed CA the new one is sent as itself. Until the
	// new certificate is in force the one on disk still chains up to both.
	if err := os.Remove(crossCA(l)); err != nil && !os.IsNotExist(err) {
		return err
	}
	if err := c.issueLocked(newCA, key, "ca_rollover_finish"); err != nil {
		return err
	}
	if err := config.WriteFileAtomic(l.CACert(), tlsconf.EncodeCert(newCA.Raw), 0o644); err != nil {
		return err
	}
	os.Remove(nextCAKey(l))
	os.Remove(nextCA(l))
	c.cfg.Audit(audit.Event{Type: "certificate.ca_rollover", Outcome: audit.OutcomeSuccess,
		Fields: map[string]any{"phase": "finish", "ca_sha256": tlsconf.Fingerprint(newCA)}})
	return nil
}

// Decision is what an expiry check does.
type Decision struct {
	Renew bool
	// Alert is the severity to raise, "" for none.
	Alert string
}

// Decide is the expiry policy: an own-CA certificate within renewBefore
// of its end is renewed, unless its CA ends first (a renewal would not
// outlive it), which alerts instead, as does a user-supplied certificate;
// the alert is High in the last highWithin.
func Decide(ownCA bool, notAfter, caNotAfter, now time.Time, renewBefore time.Duration) Decision {
	left := notAfter.Sub(now)
	if left > renewBefore {
		return Decision{}
	}
	if ownCA && caNotAfter.After(notAfter) {
		return Decision{Renew: true}
	}
	return Decision{Alert: severity(left)}
}

func severity(left time.Duration) string {
	if left <= highWithin {
		return alerting.High
	}
	return alerting.Medium
}

// Check runs the expiry policy once: renew, or alert.
func (c *Controller) Check() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.checkLocked()
}

func (c *Controller) checkLocked() {
	if c.mu.cur == nil {
		return
	}
	now := c.cfg.Now()
	cfg := c.cfg.Conf.Get()
	rb := c.cfg.Conf.Params().CertificateRenewBefore()
	leaf := c.mu.cur.Leaf()
	own := c.ownCA(cfg)
	var ca *x509.Certificate
	var caKey crypto.Signer
	if own {
		var err error
		if ca, caKey, err = c.signer(); err != nil {
			c.cfg.Log.Error("The own CA cannot be read; the server certificate will not be renewed.", "error", err)
			own = false
		}
	}
	caEnd := time.Time{}
	if ca != nil {
		caEnd = ca.NotAfter
		// The CA itself nearing its end: a rollover is the cure.
		if left := ca.NotAfter.Sub(now); left <= rb {
			action := "start a CA rollover: pgshield certificate rotate --ca"
			if c.inRollover() {
				action = "finish the CA rollover: pgshield certificate rollover finish"
			}
			c.alertLocked(ca, severity(left), "ca", action)
		}
	}
	d := Decide(own, leaf.NotAfter, caEnd, now, rb)
	if d.Renew {
		if err := c.issueLocked(ca, caKey, "renewal"); err != nil {
			c.refused("certificate.rotate", "renewal", err)
			c.alertLocked(leaf, severity(leaf.NotAfter.Sub(now)), "server", "automatic renewal failed: "+err.Error())
		}
		return
	}
	if d.Alert != "" {
		c.alertLocked(leaf, d.Alert, "server", "rotate it: pgshield certificate rotate --cert F --key F, or renew its files and send SIGHUP")
	}
}

func (c *Controller) alertLocked(cert *x509.Certificate, sev, which, action string) {
	fp := tlsconf.Fingerprint(cert)
	days := int(cert.NotAfter.Sub(c.cfg.Now()).Hours() / 24)
	c.cfg.Alert(alerting.Finding{Type: alerting.TypeCertificateExpiring, Key: which + " " + fp + " " + sev, Severity: sev,
		Details: map[string]string{"certificate": which, "subject": alerting.Bound(cert.Subject.String(), 256),
			"sha256": fp, "not_after": cert.NotAfter.UTC().Format(time.RFC3339), "days_left": strconv.Itoa(days), "action": alerting.Bound(action, 512)}})
}

// Run checks expiry every CheckInterval and reloads the files on SIGHUP,
// until ctx ends.
func (c *Controller) Run(ctx context.Context) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	c.Check()
	t := time.NewTicker(c.cfg.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			c.Check()
		case <-hup:
			_ = c.Reload("SIGHUP")
		}
	}
}

// Info describes the certificate in force and the CA bundle.
func (c *Controller) Info() apitype.CertificateInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.infoLocked()
}

func (c *Controller) infoLocked() apitype.CertificateInfo {
	cfg := c.cfg.Conf.Get()
	info := apitype.CertificateInfo{Source: apitype.CertUserSupplied, CertFile: cfg.TLSCertFile, KeyFile: cfg.TLSKeyFile,
		CAFile: cfg.CAFile, LoadedAt: c.mu.loadedAt}
	if c.ownCA(cfg) {
		info.Source = apitype.CertOwnCA
		info.Rollover = c.inRollover()
	}
	if c.mu.cur == nil {
		return info
	}
	leaf := c.mu.cur.Leaf()
	info.Server = Details(leaf)
	for _, der := range c.mu.cur.TLS.Certificate[1:] {
		if ic, err := x509.ParseCertificate(der); err == nil {
			info.Chain = append(info.Chain, Details(ic))
		}
	}
	if info.Source == apitype.CertOwnCA {
		at := leaf.NotAfter.Add(-c.cfg.Conf.Params().CertificateRenewBefore())
		info.RenewAt = &at
	}
	if cfg.CAFile != "" {
		if b, err := readBounded(cfg.CAFile); err == nil {
			if cas, err := tlsconf.ParseCerts(b); err == nil {
				for _, ca := range cas {
					info.CABundle = append(info.CABundle, Details(ca))
				}
			}
		}
	}
	return info
}

// Details describes one certificate for the API.
func Details(c *x509.Certificate) apitype.CertificateDetails {
	d := apitype.CertificateDetails{Subject: c.Subject.String(), Issuer: c.Issuer.String(), DNSNames: c.DNSNames,
		Serial: c.SerialNumber.Text(16), NotBefore: c.NotBefore.UTC(), NotAfter: c.NotAfter.UTC(),
		SHA256: tlsconf.Fingerprint(c), IsCA: c.IsCA}
	for _, ip := range c.IPAddresses {
		d.IPAddresses = append(d.IPAddresses, ip.String())
	}
	return d
}
