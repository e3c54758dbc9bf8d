package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/netpolicy"
	"github.com/pgshield/pgshield/internal/pgbackend"
	"github.com/pgshield/pgshield/internal/pool"
	"github.com/pgshield/pgshield/internal/threat"
	"github.com/pgshield/pgshield/internal/tlsconf"
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
	// MaxConnections caps concurrent client connections; 0 takes
	// pgshield.max_client_connections from the parameters in force. Up to
	// capacityOverflow more are taken only to be told so inside TLS.
	MaxConnections int
	// Threat bans, budgets and limits logins (internal/threat); nil: none.
	Threat Threat
	// Leadership says whether this node is the confirmed primary of a
	// high-availability cluster (leadership.go); when it stops being so,
	// every session ends and logins are refused. nil: a single node.
	Leadership Leadership
	// PoolWait observes how long each client waited for a pooled backend
	// (metrics); nil: not observed.
	PoolWait func(time.Duration)
	Now      func() time.Time
}

// capacityOverflow is how many connections beyond MaxConnections are taken
// to refuse them after TLS, where libpq shows the 53300; beyond it they are
// closed without a word. Never a plaintext error before TLS: a client that
// sends SSLRequest discards it (libpq ≥ 17.1; CVE-2024-10977).
const capacityOverflow = 64

// defaultMaxClientConnections is pgshield.max_client_connections' default,
// for parameters resolved without it.
const defaultMaxClientConnections = 1000

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

// runtime is the parameters and what is built from them; SetParams
// replaces it whole, so a connection that loaded one sees it consistent.
type runtime struct {
	params config.Params
	// cert is the certificate tls presents: a session's SCRAM-SHA-256-PLUS
	// binds to the one its handshake used, even if a rotation came since.
	cert    *tlsconf.Cert
	tls     *tls.Config
	limiter *netpolicy.RateLimiter // nil: no limit
	tokens  *tokenVerifier
}

// Server is the gateway. Its parameters can change while it runs; each new
// connection uses the values current when it arrives.
type Server struct {
	cfg Config
	// handovers counts transaction-mode hand-overs of a backend to
	// another client: light (no DISCARD ALL) and full, and those
	// pgshield_guard refused (txhandover.go).
	handovers struct{ light, full, refused atomic.Uint64 }
	// poolMax is the pool's cap on backends in force (applyPoolConfigLocked).
	poolMax atomic.Int64
	rt      atomic.Pointer[runtime]
	// rtMu serializes SetParams and SetCert, each of which builds the
	// next runtime from the last.
	rtMu    sync.Mutex
	cancels cancelRegistry
	pool    *backendPool
	active  atomic.Int64
	total   atomic.Int64
	// lastThrottleLog rate-limits the throttling log line (unix nanos).
	lastThrottleLog atomic.Int64
	clientLogs      logBudget
	// floodAudits caps the audit records a flood of refused connections
	// (pre-authentication budgets) writes.
	floodAudits logBudget
	// drain is the state of a shutdown or restart (drain.go).
	drain drainState
	// leadership is what Config.Leadership last said (leadership.go).
	leadership leadershipState

	mu struct {
		sync.Mutex
		// conns maps each connection to whether it came over capacity.
		conns    map[net.Conn]bool
		sessions map[*session]struct{}
	}
}

// New makes a gateway Server.
func New(cfg Config) (*Server, error) {
	if err := cfg.CheckAndSetDefaults(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg}
	s.pool = pool.New[*pooled](poolConfig(cfg.Params.Pool, threat.FallbackMaxSessions, cfg.Now, cfg.PoolWait))
	s.mu.conns = map[net.Conn]bool{}
	s.mu.sessions = map[*session]struct{}{}
	s.SetParams(cfg.Params)
	return s, nil
}

// SetParams swaps in new parameters for connections that arrive from now on;
// open sessions are left alone.
func (s *Server) SetParams(p config.Params) {
	s.rtMu.Lock()
	defer s.rtMu.Unlock()
	old := s.rt.Load()
	cert := s.cfg.Cert
	if old != nil {
		cert = old.cert
	}
	rt := &runtime{params: p, cert: cert, tls: tlsconf.ServerConfig(cert, p.MinTLS, p.MaxTLS), tokens: newTokenVerifier(p.OIDC, old)}
	if old != nil && old.params.RatePerIP == p.RatePerIP {
		rt.limiter = old.limiter // keep the buckets: the limit did not change
	} else if p.RatePerIP > 0 {
		rt.limiter = netpolicy.NewRateLimiter(float64(p.RatePerIP), p.RatePerIP, s.cfg.Now)
	}
	s.rt.Store(rt)
	s.applyPoolConfigLocked(p.Pool)
}

// SetCert makes new handshakes present c (a rotation or a reload); open
// sessions keep theirs. The new tls.Config has new session-ticket keys, so
// no session resumes across the change.
func (s *Server) SetCert(c *tlsconf.Cert) {
	s.rtMu.Lock()
	defer s.rtMu.Unlock()
	old := s.rt.Load()
	rt := *old
	rt.cert = c
	rt.tls = tlsconf.ServerConfig(c, old.params.MinTLS, old.params.MaxTLS)
	s.rt.Store(&rt)
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
	stopLeadership := s.watchLeadership()
	defer stopLeadership()
	s.drain.setListener(ln)
	// The pool's eviction ends with Serve; its end closes the idle backends.
	ectx, stopEvict := context.WithCancel(ctx)
	defer stopEvict()
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.evictLoop(ectx)
	}()
	var tempDelay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				wg.Wait()
				return nil
			}
			if s.drain.stopped.Load() {
				// StopAccepting: the sessions go on until ctx ends.
				<-ctx.Done()
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
			stopEvict()
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
	limit := s.cfg.MaxConnections
	if limit == 0 {
		limit = s.rt.Load().params.MaxClientConnections
	}
	if limit <= 0 {
		limit = defaultMaxClientConnections
	}
	over := len(s.mu.conns) >= limit
	if len(s.mu.conns) >= limit+capacityOverflow {
		return false // closed without a word; see capacityOverflow
	}
	s.mu.conns[conn] = over
	s.active.Add(1)
	s.total.Add(1)
	return true
}

// overCapacity reports whether conn was taken over MaxConnections, to be
// refused once it has TLS.
func (s *Server) overCapacity(conn net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.conns[conn]
}

func (s *Server) untrack(conn net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.conns != nil {
		delete(s.mu.conns, conn)
	}
	s.active.Add(-1)
}

// addSession lists sess for TerminateAll until remove is called.
func (s *Server) addSession(sess *session) (remove func()) {
	s.mu.Lock()
	s.mu.sessions[sess] = struct{}{}
	s.mu.Unlock()
	s.endIfDraining(sess)
	s.endIfFenced(sess)
	return func() {
		s.mu.Lock()
		delete(s.mu.sessions, sess)
		s.mu.Unlock()
	}
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
