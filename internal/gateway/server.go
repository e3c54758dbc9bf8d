package gateway

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/auth/scram"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/netpolicy"
	"github.com/pgshield/pgshield/internal/pgbackend"
	"github.com/pgshield/pgshield/internal/proxyproto"
	"github.com/pgshield/pgshield/internal/tlsconf"
	"github.com/pgshield/pgshield/internal/wire"
)

// RoleLookup finds a role's authentication facts.
type RoleLookup interface {
	LookupRole(ctx context.Context, name string) (pgbackend.Role, error)
}

// BackendDialer opens backend sessions and delivers cancel requests.
type BackendDialer interface {
	Connect(ctx context.Context, params map[string]string) (*pgbackend.Backend, error)
	Cancel(ctx context.Context, pid uint32, key []byte) error
}

// Config configures a gateway Server.
type Config struct {
	Cert    *tlsconf.Cert
	Roles   RoleLookup
	Backend BackendDialer
	// IsReserved names roles that never log in through the gateway.
	IsReserved func(role string) bool
	// MockSecret makes the fake SCRAM salts of unknown roles stable.
	MockSecret []byte
	Params     config.Params
	Log        *slog.Logger
	// AuthTimeout bounds everything before the session is established,
	// like PostgreSQL's authentication_timeout.
	AuthTimeout time.Duration
	// DialTimeout bounds opening the backend session.
	DialTimeout time.Duration
	// Available, when it returns an error, refuses new sessions with that
	// error's text (e.g. the server is locked); nil means always available.
	Available func() error
	// Audit receives the gateway's security events; nil drops them.
	Audit func(audit.Event)
	// Policy admits sources and ends sessions it stops allowing; nil allows all.
	Policy AccessPolicy
	// MaxConnections caps concurrent client connections.
	MaxConnections int
	Now            func() time.Time
}

// CheckAndSetDefaults validates the config and fills in defaults.
func (c *Config) CheckAndSetDefaults() error {
	if c.Cert == nil || c.Roles == nil || c.Backend == nil {
		return errors.New("gateway: Cert, Roles and Backend are required")
	}
	if len(c.MockSecret) < 16 {
		return errors.New("gateway: MockSecret must be at least 16 bytes")
	}
	if c.IsReserved == nil {
		c.IsReserved = func(string) bool { return false }
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.AuthTimeout == 0 {
		c.AuthTimeout = time.Minute
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = 30 * time.Second
	}
	if c.MaxConnections == 0 {
		c.MaxConnections = 1000
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Policy == nil {
		c.Policy = allowAll{}
	}
	if c.Audit == nil {
		c.Audit = func(audit.Event) {}
	}
	if c.Params.MinTLS == 0 {
		p, err := config.ResolveParams(nil)
		if err != nil {
			return err
		}
		c.Params = p
	}
	return nil
}

type runtime struct {
	params  config.Params
	tls     *tls.Config
	limiter *netpolicy.RateLimiter // nil: no limit
	tokens  *tokenVerifier
}

// Server is the gateway. Its parameters can change while it runs; each new
// connection uses the values current when it arrives.
type Server struct {
	cfg     Config
	rt      atomic.Pointer[runtime]
	cancels cancelRegistry
	active  atomic.Int64
	total   atomic.Int64
	// lastThrottleLog rate-limits the throttling log line (unix nanos).
	lastThrottleLog atomic.Int64
	clientLogs      logBudget

	mu struct {
		sync.Mutex
		conns    map[net.Conn]struct{}
		sessions map[*session]struct{}
	}
}

// New makes a gateway Server.
func New(cfg Config) (*Server, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg}
	s.mu.conns = map[net.Conn]struct{}{}
	s.mu.sessions = map[*session]struct{}{}
	s.SetParams(cfg.Params)
	return s, nil
}

// SetParams swaps in new parameters for connections that arrive from now on;
// open sessions are left alone.
func (s *Server) SetParams(p config.Params) {
	old := s.rt.Load()
	rt := &runtime{params: p, tls: tlsconf.ServerConfig(s.cfg.Cert, p.MinTLS, p.MaxTLS), tokens: newTokenVerifier(p.OIDC, old)}
	if old != nil && old.params.RatePerIP == p.RatePerIP {
		rt.limiter = old.limiter // keep the buckets: the limit did not change
	} else if p.RatePerIP > 0 {
		rt.limiter = netpolicy.NewRateLimiter(float64(p.RatePerIP), p.RatePerIP, s.cfg.Now)
	}
	s.rt.Store(rt)
}

// Stats are counters for status.
type Stats struct {
	Active int64 `json:"active_connections"`
	Total  int64 `json:"total_connections"`
}

// Stats returns the connection counters.
func (s *Server) Stats() Stats { return Stats{Active: s.active.Load(), Total: s.total.Load()} }

// Serve accepts connections until ctx ends, then closes the listener and
// every open connection and waits for their handlers.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	var wg sync.WaitGroup
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		s.closeAll()
	})
	defer stop()
	var tempDelay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				wg.Wait()
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscallEMFILE) {
				tempDelay = min(max(2*tempDelay, 5*time.Millisecond), time.Second)
				s.cfg.Log.Warn("Accept failed; retrying.", "error", err, "delay", tempDelay)
				time.Sleep(tempDelay)
				continue
			}
			wg.Wait()
			return err
		}
		tempDelay = 0
		if !s.track(conn) {
			conn.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer s.untrack(conn)
			s.handle(ctx, conn)
		}()
	}
}

func (s *Server) track(conn net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.conns == nil {
		return false // shutting down
	}
	if len(s.mu.conns) >= s.cfg.MaxConnections {
		_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
		// Before TLS we cannot say more than a plaintext error; it reveals
		// nothing and matches PostgreSQL's own behaviour.
		_ = wire.SendError(conn, wire.CodeTooManyConnections, "sorry, too many clients already")
		return false
	}
	s.mu.conns[conn] = struct{}{}
	s.active.Add(1)
	s.total.Add(1)
	return true
}

func (s *Server) untrack(conn net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.conns != nil {
		delete(s.mu.conns, conn)
	}
	s.active.Add(-1)
}

// TerminateAll ends every relaying session with msg at a message boundary.
func (s *Server) TerminateAll(msg *pgproto3.ErrorResponse) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for sess := range s.mu.sessions {
		sess.terminate(msg)
	}
}

// rateLimitedLog logs a throttled source at most once a second: an attacker
// controls how often this happens.
func (s *Server) rateLimitedLog(src netip.Addr) {
	now := s.cfg.Now().UnixNano()
	last := s.lastThrottleLog.Load()
	if now-last < int64(time.Second) || !s.lastThrottleLog.CompareAndSwap(last, now) {
		return
	}
	s.cfg.Log.Warn("Connections refused by the per-source rate limit.", "client", src.String())
}

// logBudget caps log lines that clients can trigger at will (refusals,
// failed logins) to maxAttackerLogsPerSec; the rest are counted and the
// count is reported with the next line that gets through.
type logBudget struct {
	second     atomic.Int64
	n          atomic.Int64
	suppressed atomic.Int64
}

const maxAttackerLogsPerSec = 20

// allow reports whether a line may be logged now, and how many were
// suppressed since the last one that was.
func (b *logBudget) allow(now time.Time) (bool, int64) {
	if sec := now.Unix(); b.second.Swap(sec) != sec {
		b.n.Store(0)
	}
	if b.n.Add(1) > maxAttackerLogsPerSec {
		b.suppressed.Add(1)
		return false, 0
	}
	return true, b.suppressed.Swap(0)
}

// logClient logs a line a client can trigger at will, within the budget.
func (s *Server) logClient(log *slog.Logger, msg string, args ...any) {
	ok, suppressed := s.clientLogs.allow(s.cfg.Now())
	if !ok {
		return
	}
	if suppressed > 0 {
		args = append(args, "suppressed_before", suppressed)
	}
	log.Info(msg, args...)
}

func (s *Server) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.mu.conns {
		c.Close()
	}
	s.mu.conns = nil
}

// handle runs one connection as a straight line: admit, authenticate,
// connect the backend, relay.
func (s *Server) handle(ctx context.Context, raw net.Conn) {
	defer raw.Close() // every early return below ends the connection
	start := s.cfg.Now()
	rt := s.rt.Load()
	log := s.cfg.Log.With("client", raw.RemoteAddr().String())
	src := remoteAddr(raw)
	if rt.params.TrustedProxies.Contains(src) {
		// A trusted load balancer speaks first: its PROXY header carries
		// the client's address, to which every rule below applies.
		_ = raw.SetReadDeadline(start.Add(10 * time.Second))
		h, err := proxyproto.ReadHeader(raw)
		if err != nil {
			s.logClient(s.cfg.Log, "Refused a connection from a trusted proxy without a valid PROXY header.", "proxy", raw.RemoteAddr().String(), "error", err)
			return
		}
		if h.Command == proxyproto.Proxy && h.HasAddresses() {
			src = h.Source.Addr().Unmap()
			log = s.cfg.Log.With("client", h.Source.String(), "proxy", raw.RemoteAddr().String())
		}
	}
	// Before the TLS handshake, so a flood cannot burn the CPU on it.
	if rt.limiter != nil && !rt.limiter.Allow(src) {
		s.rateLimitedLog(src)
		s.cfg.Audit(audit.Event{Type: "connection.throttled", Outcome: audit.OutcomeFailure, Client: src.String(),
			Reason: "per-source connection rate limit"})
		return
	}
	// Network policy decides before a single byte of the client's is read;
	// a refused source is closed with no plaintext error.
	allowed, rule := s.cfg.Policy.Allow(src)
	if !allowed {
		s.logClient(log, "Connection denied by network policy.", "rule", rule)
		s.cfg.Audit(audit.Event{Type: "connection.denied", Outcome: audit.OutcomeFailure, Client: src.String(), Rule: rule,
			Reason: "no network rule allows this source"})
		return
	}
	watch := &policyWatch{raw: raw, audit: func() {
		s.cfg.Audit(audit.Event{Type: "session.terminated", Outcome: audit.OutcomeFailure, Client: src.String(),
			Reason: "the network rules no longer allow this source"})
	}}
	stop := s.cfg.Policy.Watch(src, watch.denied)
	defer stop()
	_ = raw.SetDeadline(start.Add(s.cfg.AuthTimeout))

	a, err := admit(raw, rt.tls)
	defer a.conn.Close()
	if err != nil {
		s.refuseAdmission(a, err, log)
		return
	}
	st := a.startup
	if st.Kind == wire.KindCancel {
		s.handleCancel(ctx, st, log)
		return
	}
	if st.Minor > 0 || len(st.Unrecognized) > 0 {
		if err := wire.Send(a.conn, &pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: st.Unrecognized}); err != nil {
			return
		}
	}
	if s.cfg.Available != nil {
		if err := s.cfg.Available(); err != nil {
			// Recorded even while the volume is locked: the audit stream
			// keeps it in memory until the log can be written.
			s.cfg.Audit(audit.Event{Type: "connection.refused", Outcome: audit.OutcomeFailure, Client: src.String(),
				User: st.User(), Database: st.Database(), Rule: rule, Reason: err.Error()})
			_ = wire.SendError(a.conn, wire.CodeCannotConnectNow, "%s", err.Error())
			return
		}
	}
	user, db := st.User(), st.Database()
	log = log.With("user", user, "database", db)
	if a.tls == nil && rt.params.RequireSecureTransport {
		s.logClient(log, "Refused plaintext connection.", "reason", "require_secure_transport")
		s.cfg.Audit(audit.Event{Type: "connection.refused", Outcome: audit.OutcomeFailure, Client: src.String(),
			User: user, Database: db, Reason: "require_secure_transport: plaintext connection"})
		_ = wire.SendError(a.conn, wire.CodeInvalidAuthSpec,
			"no pgshield entry for host %q, user %q, database %q, no encryption: SSL connection is required (require_secure_transport = on)",
			src.String(), user, db)
		return
	}

	role, err := s.cfg.Roles.LookupRole(ctx, user)
	if err != nil {
		log.Error("Role lookup failed.", "error", err)
		_ = wire.SendError(a.conn, wire.CodeCannotConnectNow, "the database system is not available")
		return
	}
	var login loginResult
	if firstRequest(a.tls != nil, rt.params, user) == askPassword {
		login, err = s.cleartextLogin(ctx, a, rt, role)
	} else {
		login, err = s.scramLogin(a, rt, role)
	}
	if err != nil {
		var le *loginError
		if errors.As(err, &le) {
			s.logClient(log, "Authentication failed.", "reason", le.Reason, "code", le.Code)
			s.cfg.Audit(audit.Event{Type: "auth.failure", Outcome: audit.OutcomeFailure, Client: src.String(),
				User: user, Database: db, Rule: rule, Reason: le.Reason, Fields: map[string]any{"method": le.Method, "sqlstate": le.Code}})
			_ = wire.SendError(a.conn, le.Code, "%s", le.Message)
		} else if code, msg := wire.ClientMessage(err); code != wire.CodeInternalError {
			_ = wire.SendError(a.conn, code, "%s", msg)
		}
		return
	}

	dctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
	b, err := s.cfg.Backend.Connect(dctx, backendParams(st))
	cancel()
	authDone := login.done
	if err != nil {
		var be *pgbackend.BackendError
		if errors.As(err, &be) {
			_ = wire.Send(a.conn, append(authDone, be.Msg)...)
		} else {
			log.Error("Backend connection failed.", "error", err)
			_ = wire.Send(a.conn, append(authDone, wire.ErrorMessage(wire.CodeCannotConnectNow, "the database system is not available"))...)
		}
		return
	}
	defer b.Conn.Close()
	ck, err := s.cancels.register(b)
	if err != nil {
		return
	}
	defer s.cancels.remove(ck)
	msgs := authDone
	for _, p := range b.Params {
		msgs = append(msgs, p)
	}
	msgs = append(msgs, &pgproto3.BackendKeyData{ProcessID: ck.pid, SecretKey: ck.key[:]},
		&pgproto3.ReadyForQuery{TxStatus: b.TxStatus})
	if err := wire.Send(a.conn, msgs...); err != nil {
		return
	}
	_ = raw.SetDeadline(time.Time{})
	tlsVer := "none"
	if a.tls != nil {
		tlsVer = tls.VersionName(a.tls.Version)
	}
	log = log.With("pg_backend_pid", b.PID)
	log.Info("Session opened.", "tls", tlsVer, "direct_tls", a.direct)
	fields := map[string]any{"method": login.method, "tls": tlsVer, "pg_backend_pid": b.PID}
	if login.principal != "" {
		fields["principal_object_id"] = login.principal
	}
	if a.tls != nil {
		fields["cipher"] = tls.CipherSuiteName(a.tls.CipherSuite)
	}
	s.cfg.Audit(audit.Event{Type: "session.start", Outcome: audit.OutcomeSuccess, Client: src.String(),
		User: user, Database: db, Rule: rule, Fields: fields})
	sess := &session{client: a.conn, backend: b.Conn}
	if !watch.relaying(sess) {
		return // policy ended the connection while it was being set up
	}
	if !login.expiry.IsZero() && rt.params.OIDC.EnforceExpiry {
		stopExpiry := s.endAtExpiry(sess, login.expiry, func() {
			s.cfg.Audit(audit.Event{Type: "session.terminated", Outcome: audit.OutcomeFailure, Client: src.String(),
				User: user, Database: db, Reason: "access token expired (pgshield.oidc_enforce_expiry = on)"})
		})
		defer stopExpiry()
	}
	s.mu.Lock()
	s.mu.sessions[sess] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.mu.sessions, sess)
		s.mu.Unlock()
	}()
	up, down := sess.relay()
	dur := s.cfg.Now().Sub(start).Seconds()
	log.Info("Session closed.", "duration", fmt.Sprintf("%.2fs", dur), "bytes_in", up, "bytes_out", down)
	s.cfg.Audit(audit.Event{Type: "session.end", Client: src.String(), User: user, Database: db,
		Fields: map[string]any{"duration_seconds": dur, "bytes_in": up, "bytes_out": down, "pg_backend_pid": b.PID}})
}

// refuseAdmission answers a failed admission: protocol and startup errors get
// an ErrorResponse; TLS failures and CVE-2021-23214 stuffing just a close.
func (s *Server) refuseAdmission(a admitted, err error, log *slog.Logger) {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
		return
	}
	s.logClient(log, "Connection refused at admission.", "error", err)
	if errors.Is(err, errBufferedAfterSSLRequest) {
		return
	}
	if code, msg := wire.ClientMessage(err); code != wire.CodeInternalError {
		_ = wire.SendError(a.conn, code, "%s", msg)
	}
}

// scramExchange prepares the SCRAM exchange for role; cleartextLogin uses
// its credentials too. Every reason to refuse (unknown, reserved, superuser,
// NOLOGIN, expired, token principal, no SCRAM secret, password logins off)
// still runs the full exchange with mock credentials and ends in the same
// 28P01.
func (s *Server) scramExchange(role pgbackend.Role, cs *tls.ConnectionState, p config.Params) *scram.Exchange {
	x := &scram.Exchange{User: role.Name}
	if cs != nil {
		x.Binding = &s.cfg.Cert.EndPoint
	}
	x.Why = s.refusal(role)
	switch {
	case x.Why != "":
	case role.Principal != nil && cs == nil:
		x.Why = "token principals log in over TLS only; no token was asked for"
	case role.Principal != nil && p.OIDC.Issuer == "":
		x.Why = "token principal, but token authentication is off (pgshield.oidc_issuer is not set)"
	case role.Principal != nil:
		// Only a principal made before names had to need quoting.
		x.Why = "token principal with a plain lower-case name: such names get SCRAM, never a token request; recreate it under a name SQL must quote"
	case !p.PasswordAuth:
		x.Why = "password authentication is off (pgshield.password_auth = off)"
	}
	if x.Why == "" {
		creds, err := scram.ParseVerifier(role.Password)
		if err != nil {
			x.Why = "role has no SCRAM-SHA-256 password"
		} else {
			x.Creds, x.Valid = creds, true
		}
	}
	if !x.Valid {
		x.Creds = scram.MockCredentials(s.cfg.MockSecret, role.Name)
	}
	return x
}

// refusal says why role may not log in at all, whatever its credentials;
// "" if it may.
func (s *Server) refusal(role pgbackend.Role) string {
	switch {
	case !role.Exists:
		return "role does not exist"
	case s.cfg.IsReserved(role.Name):
		return "reserved role"
	case role.Superuser:
		return "superuser roles may not log in through the gateway"
	case !role.CanLogin:
		return "role is not permitted to log in"
	case role.ValidUntil != nil && !role.ValidUntil.After(s.cfg.Now()):
		return "password has expired"
	}
	return ""
}

// scramLogin authenticates a password role with SCRAM-SHA-256[-PLUS].
func (s *Server) scramLogin(a admitted, rt *runtime, role pgbackend.Role) (loginResult, error) {
	x := s.scramExchange(role, a.tls, rt.params)
	final, err := x.Run(a.conn)
	if err != nil {
		var ae *scram.AuthError
		if errors.As(err, &ae) {
			return loginResult{}, &loginError{Code: ae.Code, Message: ae.Message, Reason: ae.Reason, Method: x.Mechanism}
		}
		return loginResult{}, err
	}
	return loginResult{method: x.Mechanism,
		done: []pgproto3.BackendMessage{&pgproto3.AuthenticationSASLFinal{Data: final}, &pgproto3.AuthenticationOk{}}}, nil
}

// backendParams passes the client's startup parameters through; the
// protocol-level ones were consumed by admission.
func backendParams(st *wire.Startup) map[string]string {
	m := make(map[string]string, len(st.Params)+1)
	for _, p := range st.Params {
		if p.Key == "replication" {
			continue
		}
		m[p.Key] = p.Value
	}
	m["database"] = st.Database()
	return m
}

func (s *Server) handleCancel(ctx context.Context, st *wire.Startup, log *slog.Logger) {
	var key [4]byte
	putUint32(key[:], st.CancelKey)
	b, ok := s.cancels.lookup(cancelKey{pid: st.CancelPID, key: key})
	if !ok {
		s.logClient(log, "Cancel request with an unknown key ignored.")
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := s.cfg.Backend.Cancel(cctx, b.PID, b.Key); err != nil {
		log.Warn("Cancel request failed.", "error", err)
	}
}

func putUint32(b []byte, v uint32) {
	b[0], b[1], b[2], b[3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
}

// cancelKey is what a client holds: the backend PID with pgshield's own
// random secret in place of the backend's.
type cancelKey struct {
	pid uint32
	key [4]byte
}

type cancelRegistry struct {
	mu sync.Mutex
	m  map[cancelKey]*pgbackend.Backend
}

func (r *cancelRegistry) register(b *pgbackend.Backend) (cancelKey, error) {
	ck := cancelKey{pid: b.PID}
	if _, err := rand.Read(ck.key[:]); err != nil {
		return ck, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[cancelKey]*pgbackend.Backend{}
	}
	r.m[ck] = b
	return ck, nil
}

func (r *cancelRegistry) lookup(ck cancelKey) (*pgbackend.Backend, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, ok := r.m[ck]
	return b, ok
}

func (r *cancelRegistry) remove(ck cancelKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.m, ck)
}
