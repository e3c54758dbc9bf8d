package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/auth/oidc"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/pgbackend"
	"github.com/pgshield/pgshield/internal/proxyproto"
	"github.com/pgshield/pgshield/internal/wire"
)

// handle runs one connection as a straight line of steps, as sqlproxyccl's
// proxy_handler does: check the source, watch the policy, admit, name the
// session, check availability, leadership and transport, log in, connect
// the backend, make the client ready, relay. Before admission a refused
// source is closed without a word; after it, every step that fails ends
// the connection through refuse, which sends the client only what it may
// see.
func (s *Server) handle(ctx context.Context, raw net.Conn) {
	defer raw.Close() // every early return below ends the connection
	c := s.newClientConn(raw)
	if !c.readProxyHeader() || !c.underRateLimit() || !c.allowedByPolicy() || !c.admitThreat() {
		return
	}
	defer c.threatDone()
	stopWatch := c.watchPolicy()
	defer stopWatch()
	_ = raw.SetDeadline(c.preauthDeadline())

	err := c.admit()
	defer c.conn.Close() // TLS or plain: admit always returns one
	if err != nil {
		c.refuse(err)
		return
	}
	if c.startup.Kind == wire.KindCancel {
		s.handleCancel(ctx, c.startup, c.log)
		return
	}
	c.named()
	if err := c.afterAdmission(); err != nil {
		c.refuse(err)
		return
	}
	if err := c.negotiateProtocol(); err != nil {
		c.refuse(err)
		return
	}
	if err := c.checkAvailable(); err != nil {
		c.refuse(err)
		return
	}
	if err := c.checkLeadership(); err != nil {
		c.refuse(err)
		return
	}
	if err := c.checkTransport(); err != nil {
		c.refuse(err)
		return
	}
	if err := c.checkParams(); err != nil {
		c.refuse(err)
		return
	}
	if err := c.throttle(ctx); err != nil {
		c.refuse(err)
		return
	}
	login, err := c.login(ctx)
	c.loginOutcome(err)
	if err != nil {
		c.refuse(err)
		return
	}
	endSlot, err := c.sessionSlot()
	if err != nil {
		c.refuse(err, login.done...)
		return
	}
	defer endSlot()
	h, err := c.acquireBackend(ctx, login)
	if err != nil {
		c.refuse(err, login.done...) // the login succeeded: the client hears so first
		return
	}
	b := h.b
	// Runs last: the cancel key no longer points at b, the relay is over.
	reusable := false
	defer func() { c.releaseBackend(h, reusable) }()
	ck, target, err := s.cancels.register(b)
	if err != nil {
		c.refuse(err)
		return
	}
	defer s.cancels.remove(ck)
	if err := c.sendReady(login, b, ck); err != nil {
		c.refuse(err)
		return
	}
	c.opened(login, h)
	sess := &session{client: c.conn, backend: b.Conn}
	var tx *txRelay
	if c.poolMode() == "transaction" && h.lease != nil {
		// The backend goes back to the pool until the client's first
		// message; nothing of it is held here any more.
		tx = c.newTxRelay(sess, h, login, target)
		h = &held{key: h.key}
	}
	if !c.watch.relaying(sess) {
		return // policy ended the connection while it was being set up
	}
	stopExpiry := c.endAtExpiry(sess, login)
	defer stopExpiry()
	defer s.addSession(sess)()
	if tx != nil {
		if last, r := tx.run(); last != nil {
			h, reusable = last, r
		}
		return
	}
	reusable = c.relay(sess, b)
}

// clientConn is one connection on its way through handle: what each step
// learns, for the steps after it. The steps run on handle's goroutine; the
// policy and expiry callbacks read only fields set before they are
// registered.
type clientConn struct {
	srv   *Server
	raw   net.Conn
	start time.Time
	// rt is the runtime current when the connection arrived; it is kept
	// for the whole connection.
	rt  *runtime
	log *slog.Logger
	// src is the client's address: the peer's, or the one a trusted
	// proxy's PROXY header gives; srcPort its port.
	src     netip.Addr
	srcPort uint16
	// rule is the network rule that allowed src ("" for the default).
	rule  string
	watch *policyWatch
	// threat is what the threat protection steps keep (threat.go).
	threat threatState
	// admitted is set by admit; conn is then the connection to talk on.
	admitted
	// user and db are what the startup packet asks for.
	user, db string
}

func (s *Server) newClientConn(raw net.Conn) *clientConn {
	c := &clientConn{srv: s, raw: raw, start: s.cfg.Now(), rt: s.rt.Load(),
		log: s.cfg.Log.With("client", raw.RemoteAddr().String()), src: remoteAddr(raw)}
	if ap, err := netip.ParseAddrPort(raw.RemoteAddr().String()); err == nil {
		c.srcPort = ap.Port()
	}
	return c
}

// srcAddrPort is the client's address and port, as PostgreSQL shows them.
func (c *clientConn) srcAddrPort() netip.AddrPort { return netip.AddrPortFrom(c.src, c.srcPort) }

// readProxyHeader reads the PROXY header a trusted load balancer sends
// before the client speaks: it carries the client's address, to which
// every rule after applies.
func (c *clientConn) readProxyHeader() bool {
	if !c.rt.params.TrustedProxies.Contains(c.src) {
		return true
	}
	_ = c.raw.SetReadDeadline(c.start.Add(10 * time.Second))
	h, err := proxyproto.ReadHeader(c.raw)
	if err != nil {
		c.srv.logClient(c.srv.cfg.Log, "Refused a connection from a trusted proxy without a valid PROXY header.",
			"proxy", c.raw.RemoteAddr().String(), "error", err)
		return false
	}
	if h.Command == proxyproto.Proxy && h.HasAddresses() {
		c.src, c.srcPort = h.Source.Addr().Unmap(), h.Source.Port()
		c.log = c.srv.cfg.Log.With("client", h.Source.String(), "proxy", c.raw.RemoteAddr().String())
	}
	return true
}

// underRateLimit applies the per-source connection rate limit, before the
// TLS handshake so that a flood cannot burn the CPU on it.
func (c *clientConn) underRateLimit() bool {
	if c.rt.limiter == nil || c.rt.limiter.Allow(c.src) {
		return true
	}
	c.srv.rateLimitedLog(c.src)
	c.srv.cfg.Audit(audit.Event{Type: "connection.throttled", Outcome: audit.OutcomeFailure, Client: c.src.String(),
		Reason: "per-source connection rate limit"})
	return false
}

// allowedByPolicy lets the network policy decide before a single byte of
// the client's is read; a refused source gets no plaintext error.
func (c *clientConn) allowedByPolicy() bool {
	allowed, rule := c.srv.cfg.Policy.Allow(c.src)
	c.rule = rule
	if allowed {
		return true
	}
	c.srv.logClient(c.log, "Connection denied by network policy.", "rule", rule)
	c.srv.cfg.Audit(audit.Event{Type: "connection.denied", Outcome: audit.OutcomeFailure, Client: c.src.String(), Rule: rule,
		Reason: "no network rule allows this source"})
	return false
}

// watchPolicy registers the connection with the policy, which ends it if a
// rule change stops allowing its source; stop ends the watch.
func (c *clientConn) watchPolicy() (stop func()) {
	c.watch = &policyWatch{raw: c.raw, audit: func() {
		c.srv.cfg.Audit(audit.Event{Type: "session.terminated", Outcome: audit.OutcomeFailure, Client: c.src.String(),
			Reason: "the network rules no longer allow this source"})
	}}
	return c.srv.cfg.Policy.Watch(c.src, c.watch.denied)
}

// admit negotiates encryption and reads the startup packet. A hangup is not
// logged; the other failures are, and refuse answers them: protocol and
// startup errors with an ErrorResponse, TLS failures and bytes stuffed
// behind an SSLRequest (CVE-2021-23214, errBufferedAfterSSLRequest) with
// just a close, as neither is a client error.
func (c *clientConn) admit() error {
	var err error
	c.admitted, err = admit(c.raw, c.rt.tls)
	if err != nil && !isHangup(err) {
		c.srv.logClient(c.log, "Connection refused at admission.", "error", err)
	}
	return err
}

func isHangup(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed)
}

// named records the role and database the startup packet asks for, for the
// log and audit of every step after.
func (c *clientConn) named() {
	c.user, c.db = c.startup.User(), c.startup.Database()
	c.log = c.log.With("user", c.user, "database", c.db)
}

// negotiateProtocol answers a 3.x minor version or _pq_. options, which
// pgshield does not support, with NegotiateProtocolVersion, and goes on
// with 3.0 as PostgreSQL does.
func (c *clientConn) negotiateProtocol() error {
	st := c.startup
	if st.Minor == 0 && len(st.Unrecognized) == 0 {
		return nil
	}
	return wire.Send(c.conn, &pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: st.Unrecognized})
}

// checkAvailable refuses new sessions while Config.Available says the
// server cannot take them (e.g. it is locked), with its reason.
func (c *clientConn) checkAvailable() error {
	if c.srv.cfg.Available == nil {
		return nil
	}
	err := c.srv.cfg.Available()
	if err == nil {
		return nil
	}
	// Recorded even while the volume is locked: the audit stream keeps it
	// in memory until the log can be written.
	c.srv.cfg.Audit(audit.Event{Type: "connection.refused", Outcome: audit.OutcomeFailure, Client: c.src.String(),
		User: c.user, Database: c.db, Rule: c.rule, Reason: err.Error()})
	return &clienterr.Error{Code: wire.CodeCannotConnectNow, Message: err.Error()}
}

// checkTransport refuses a plaintext connection under
// require_secure_transport, in PostgreSQL's pg_hba wording.
func (c *clientConn) checkTransport() error {
	if c.tls != nil || !c.rt.params.RequireSecureTransport {
		return nil
	}
	c.srv.logClient(c.log, "Refused plaintext connection.", "reason", "require_secure_transport")
	c.srv.cfg.Audit(audit.Event{Type: "connection.refused", Outcome: audit.OutcomeFailure, Client: c.src.String(),
		User: c.user, Database: c.db, Reason: "require_secure_transport: plaintext connection",
		// Attack tools speak plaintext: their startup packet is their
		// fingerprint (internal/alerting).
		Fields: c.clientFacts(map[string]any{})})
	return clienterr.New(wire.CodeInvalidAuthSpec,
		"no pgshield entry for host %q, user %q, database %q, no encryption: SSL connection is required (require_secure_transport = on)",
		c.src.String(), c.user, c.db)
}

// connectBackend opens the backend session as the logged-in role, within
// Config.DialTimeout, telling pgshield_guard who the client is
// (pgbackend.SetClient). The backend's own refusal (a
// *pgbackend.BackendError) comes back as it is, for refuse to relay
// verbatim; any other failure is logged and reaches the client as "not
// available".
func (c *clientConn) connectBackend(ctx context.Context, login loginResult) (*pgbackend.Backend, error) {
	dctx, cancel := context.WithTimeout(ctx, c.srv.cfg.DialTimeout)
	defer cancel()
	params := backendParams(c.startup)
	if err := pgbackend.SetClient(params, c.clientIdentity(login)); err != nil {
		c.log.Error("Backend connection failed.", "error", err)
		return nil, errUnavailable()
	}
	b, err := c.srv.cfg.Backend.Connect(dctx, params)
	if err != nil {
		var be *pgbackend.BackendError
		if errors.As(err, &be) {
			return nil, err
		}
		c.log.Error("Backend connection failed.", "error", err)
		return nil, errUnavailable()
	}
	return b, nil
}

// backendParams passes the client's startup parameters through; the
// protocol-level ones were consumed by admission, and pgshield's own
// (refused by checkParams) never pass.
func backendParams(st *wire.Startup) map[string]string {
	m := make(map[string]string, len(st.Params)+2)
	for _, p := range st.Params {
		if p.Key == "replication" || reservedParam(p.Key) {
			continue
		}
		m[p.Key] = p.Value
	}
	m["database"] = st.Database()
	return m
}

// sendReady ends the login as PostgreSQL does, in one write: the login's
// last messages, the backend's ParameterStatus messages, the cancel key
// the client holds (pgshield's, not the backend's), ReadyForQuery.
func (c *clientConn) sendReady(login loginResult, b *pgbackend.Backend, ck cancelKey) error {
	msgs := login.done
	for _, p := range b.Params {
		msgs = append(msgs, p)
	}
	msgs = append(msgs, &pgproto3.BackendKeyData{ProcessID: ck.pid, SecretKey: ck.key[:]},
		&pgproto3.ReadyForQuery{TxStatus: b.TxStatus})
	return wire.Send(c.conn, msgs...)
}

// opened lifts the authentication deadline, and logs and audits the start
// of the session.
func (c *clientConn) opened(login loginResult, h *held) {
	b := h.b
	_ = c.raw.SetDeadline(time.Time{})
	tlsVer := "none"
	if c.tls != nil {
		tlsVer = tls.VersionName(c.tls.Version)
	}
	c.log = c.log.With("pg_backend_pid", b.PID)
	reused := h.lease != nil && h.lease.Reused
	c.log.Info("Session opened.", "tls", tlsVer, "direct_tls", c.direct, "pooled_backend", reused)
	fields := map[string]any{"method": login.method, "tls": tlsVer, "pg_backend_pid": b.PID, "pooled_backend": reused}
	if login.principal != "" {
		fields["principal_object_id"] = login.principal
	}
	if c.tls != nil {
		fields["cipher"] = tls.CipherSuiteName(c.tls.CipherSuite)
	}
	c.srv.cfg.Audit(audit.Event{Type: "session.start", Outcome: audit.OutcomeSuccess, Client: c.src.String(),
		User: c.user, Database: c.db, Rule: c.rule, Fields: c.clientFacts(fields)})
}

// endAtExpiry ends sess when the access token it logged in with expires,
// under pgshield.oidc_enforce_expiry; stop cancels. exp is a wall-clock
// time and timers run on the monotonic clock, so the timer wakes at least
// every oidc.RecheckEvery to compare again (a jump of the system clock
// neither keeps the session past exp nor ends it early; the login's
// tolerance, oidc.Skew, is not added).
func (c *clientConn) endAtExpiry(sess *session, login loginResult) (stop func()) {
	if login.expiry.IsZero() || !c.rt.params.OIDC.EnforceExpiry {
		return func() {}
	}
	var (
		mu      sync.Mutex
		stopped bool
		t       *time.Timer
	)
	check := func() {
		wait, expired := oidc.UntilExpiry(login.expiry, c.srv.cfg.Now())
		mu.Lock()
		if stopped || !expired {
			if !stopped {
				t.Reset(wait)
			}
			mu.Unlock()
			return
		}
		stopped = true
		mu.Unlock()
		c.srv.cfg.Audit(audit.Event{Type: "session.terminated", Outcome: audit.OutcomeFailure, Client: c.src.String(),
			User: c.user, Database: c.db, Reason: "access token expired (pgshield.oidc_enforce_expiry = on)"})
		sess.terminate(wire.ErrorMessage(wire.CodeAdminShutdown,
			"terminating connection because its access token expired"))
	}
	wait, _ := oidc.UntilExpiry(login.expiry, c.srv.cfg.Now())
	mu.Lock()
	t = time.AfterFunc(wait, check)
	mu.Unlock()
	return func() {
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		t.Stop()
	}
}

// relay relays sess until either side ends it, then logs and audits the
// end of the session; it reports whether the backend may be pooled.
func (c *clientConn) relay(sess *session, b *pgbackend.Backend) (reusable bool) {
	up, down, reusable := sess.relay()
	dur := c.srv.cfg.Now().Sub(c.start).Seconds()
	c.log.Info("Session closed.", "duration", fmt.Sprintf("%.2fs", dur), "bytes_in", up, "bytes_out", down)
	c.srv.cfg.Audit(audit.Event{Type: "session.end", Client: c.src.String(), User: c.user, Database: c.db,
		Fields: map[string]any{"duration_seconds": dur, "bytes_in": up, "bytes_out": down, "pg_backend_pid": b.PID}})
	return reusable
}

// refuse ends the connection after a failed step, sending the client only
// what it may see (as sqlproxyccl's toPgError): PostgreSQL's own
// ErrorResponse from the backend, verbatim; a *clienterr.Error, or a
// protocol or startup error that wire.ClientError explains, as a FATAL
// ErrorResponse. prefix goes first. Anything else (a hangup, an I/O or
// internal failure, a TLS failure) closes without a word: the step logged
// its cause where it matters.
func (c *clientConn) refuse(err error, prefix ...pgproto3.BackendMessage) {
	var msg *pgproto3.ErrorResponse
	var be *pgbackend.BackendError
	if errors.As(err, &be) {
		msg = be.Msg
	} else if ce, ok := wire.ClientError(err); ok {
		msg = wire.ErrorResponse(ce)
	} else {
		return
	}
	_ = wire.Send(c.conn, append(prefix, msg)...)
}

// errUnavailable is what a client is told when pgshield itself fails to
// set up its session: nothing about why.
func errUnavailable() *clienterr.Error {
	return &clienterr.Error{Code: wire.CodeCannotConnectNow, Message: "the database system is not available"}
}
