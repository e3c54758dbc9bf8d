// Package daemon composes a running pgshield server: the supervised
// PostgreSQL, the gateway and the management API, for one data directory.
package daemon

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/gateway"
	"github.com/pgshield/pgshield/internal/metrics"
	"github.com/pgshield/pgshield/internal/mgmt"
	"github.com/pgshield/pgshield/internal/netpolicy"
	"github.com/pgshield/pgshield/internal/nft"
	"github.com/pgshield/pgshield/internal/outbound"
	"github.com/pgshield/pgshield/internal/pgbackend"
	"github.com/pgshield/pgshield/internal/pidfile"
	"github.com/pgshield/pgshield/internal/postgres"
	"github.com/pgshield/pgshield/internal/tlsconf"
)

// Daemon is one running server.
type Daemon struct {
	Layout config.Layout
	Log    *slog.Logger

	cfgMu   sync.Mutex // serializes config changes; guards cfg
	cfg     *config.Config
	cluster *postgres.Cluster
	sup     *postgres.Supervisor
	catalog *postgres.Catalog
	gw      *gateway.Server
	policy  *netpolicy.Engine
	// auditStream is the audit sink (see audit.go); auditFwd forwards it
	// to syslog when pgshield.audit_syslog is set.
	auditStream   *audit.Stream
	auditFwd      atomic.Pointer[audit.Forwarder]
	lastAuditWarn atomic.Int64
	// outbound opens PostgreSQL's namespace to allowed destinations.
	outbound *outbound.Path
	// serverID names per-server resources (the nftables table); fixed at start.
	serverID string
	atRest   *AtRest
	// keyMu serializes lock and unlock; keyState is read without it.
	keyMu    sync.Mutex
	keyState atomic.Pointer[apitype.KeyState] // set through storeKeyState
	metrics  *metrics.Metrics
	// metricsLn serves the metrics on pgshield.metrics_listen.
	metricsLn *metrics.Listener
	revalMu   sync.Mutex // guards reval; taken inside keyMu, never around it
	reval     revalidation
	supMu     sync.Mutex // guards sup, replaced on unlock
	backups   backupJobs // at most one backup running
	started   time.Time
	version   string
	listen    string
	stop      context.CancelFunc
}

// Run starts everything and blocks until ctx ends or shutdown is asked for
// through the API; then it drains and stops PostgreSQL.
func (d *Daemon) Run(ctx context.Context) error {
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	cfg, err := config.Load(d.Layout)
	if err != nil {
		return err
	}
	d.cfg = cfg
	d.serverID = cfg.ServerID
	if err := pidfile.Write(d.Layout.PIDFile()); err != nil {
		return err
	}
	defer os.Remove(d.Layout.PIDFile())
	ctx, d.stop = context.WithCancel(ctx)
	defer d.stop()

	u, err := postgres.LookupOSUser(cfg.PGOSUser)
	if err != nil {
		return err
	}
	d.metrics = d.newMetrics()
	d.metricsLn = &metrics.Listener{Handler: d.metrics.Handler()}
	defer d.metricsLn.Close()
	d.atRest = &AtRest{Layout: d.Layout, Cfg: cfg, Log: d.Log.With("component", "storage")}
	// A key that cannot unwrap the data key (revoked, or a KMS that cannot be
	// reached) does not stop the daemon: it starts Inaccessible, refusing
	// sessions with a clear message, and revalidation brings it back.
	var keyErr *KeyError
	startErr := d.atRest.Open(ctx)
	switch {
	case errors.As(startErr, &keyErr):
		d.Log.Error("The data key cannot be unwrapped; starting Inaccessible.", "error", startErr)
		d.storeKeyState(&apitype.KeyState{State: apitype.KeyInaccessible, Since: time.Now(), Reason: startErr.Error()})
	case startErr != nil:
		return startErr
	default:
		d.storeKeyState(&apitype.KeyState{State: apitype.KeyAvailable, Since: time.Now()})
	}
	defer func() {
		if err := d.atRest.Close(context.Background()); err != nil {
			d.Log.Error("Closing the encrypted volume failed.", "error", err)
		}
	}()
	d.cluster = &postgres.Cluster{Layout: d.Layout, Cfg: cfg, User: u, Guard: d.atRest.Guard,
		// Managed files are rewritten when PostgreSQL starts again (unlock):
		// with the configuration of then. No caller holds cfgMu.
		Live: d.config}
	// While Inaccessible the volume is locked: startPostgres writes them
	// once the key works again.
	if startErr == nil {
		if err := d.cluster.WriteManagedFiles(); err != nil {
			return err
		}
	}
	cert, err := tlsconf.LoadCert(cfg.TLSCertFile, cfg.TLSKeyFile)
	if err != nil {
		return err
	}
	params, err := config.ResolveParams(cfg.Parameters)
	if err != nil {
		return err
	}
	mock, err := loadOrCreateSecret(d.Layout, d.Layout.MockAuthKey())
	if err != nil {
		return err
	}
	// The audit log lives on the volume: it is closed (deferred calls run
	// last in, first out) after PostgreSQL has stopped and before the
	// volume is locked and detached.
	if err := d.openAudit(params, startErr == nil); err != nil {
		return err
	}
	defer d.closeAudit()
	d.audit(audit.Event{Type: "server.start", Outcome: audit.OutcomeSuccess, Fields: map[string]any{"pid": os.Getpid()}})
	defer d.audit(audit.Event{Type: "server.stop"})
	d.outbound = &outbound.Path{ID: cfg.ServerID, Log: d.Log.With("component", "outbound"),
		Allow: func(dst netip.Addr, port uint16) bool { return d.policy.CheckOutbound(dst, port).Allowed }}
	defer func() {
		if err := d.outbound.Close(); err != nil {
			d.Log.Error("Removing the outbound path failed.", "error", err)
		}
	}()
	pol, err := LoadPolicy(d.Layout)
	if err != nil {
		return fmt.Errorf("network policy: %w", err)
	}
	if err := netpolicy.CheckListen(pol.Mode, cfg.Listen); err != nil {
		return err
	}
	d.policy, err = netpolicy.NewEngine(pol, netpolicy.WithLogger(d.Log.With("component", "netpolicy")),
		netpolicy.WithPersist(func(p *netpolicy.Policy) error {
			if err := d.applyKernelFirewall(p, d.currentParams()); err != nil {
				return err
			}
			if err := d.outbound.Apply(d.postmasterPID(), p.NetworkRules); err != nil {
				return err
			}
			return SavePolicy(d.Layout, p)
		}))
	if err != nil {
		return err
	}
	go d.policy.Run(ctx)
	// Bind the public port before starting PostgreSQL so a clash fails fast.
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("gateway cannot listen on %s: %w", cfg.Listen, err)
	}
	defer ln.Close()
	d.listen = ln.Addr().String()
	if err := d.applyKernelFirewall(d.policy.Snapshot(), params); err != nil {
		return fmt.Errorf("kernel firewall: %w", err)
	}
	defer func() {
		if params := d.currentParams(); params.KernelFirewall {
			if err := nft.Remove(d.kernelTable()); err != nil {
				d.Log.Error("Removing the kernel firewall failed.", "error", err)
			}
		}
	}()
	apiLn, err := mgmt.Listen(d.Layout.APISocket())
	if err != nil {
		return err
	}
	defer apiLn.Close()

	if startErr == nil {
		if err := d.startPostgres(ctx); err != nil {
			return err
		}
	} else {
		d.sup = &postgres.Supervisor{Cluster: d.cluster} // not started
	}
	// The supervisor is replaced on unlock: stop whichever runs at the end.
	defer func() { d.supervisor().Stop(30 * time.Second) }()
	defer d.backups.stop() // before PostgreSQL stops (deferred calls run last in, first out)
	d.catalog, err = postgres.NewCatalog(ctx, d.cluster, d.Log.With("component", "catalog"))
	if err != nil {
		return err
	}
	defer d.catalog.Close()
	d.version = postgresVersion(d.cluster)
	d.gw, err = gateway.New(gateway.Config{
		Cert: cert, Roles: d.catalog.Logins(), Backend: &pgbackend.Dialer{Socket: d.cluster.SocketPath()},
		IsReserved: cfg.IsReserved,
		MockSecret: mock, Params: params, Log: d.Log.With("component", "gateway"),
		Policy:    d.policy.ForPort(listenPort(d.listen)),
		Audit:     d.audit,
		Available: d.available,
	})
	if err != nil {
		return err
	}
	d.started = time.Now()
	if err := d.metricsLn.Set(params.Values["pgshield.metrics_listen"]); err != nil {
		d.Log.Error("Metrics endpoint not started.", "error", err)
	}
	go d.revalidateLoop(ctx)
	go d.storageLoop(ctx) // autogrow; remounts gocryptfs if it dies

	srv := &http.Server{Handler: mgmt.NewHandler(mgmt.Routes(d), mgmt.Options{Log: d.Log, OnWrite: d.auditAPICall}),
		ReadHeaderTimeout: 10 * time.Second, ConnContext: mgmt.ConnContext}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := d.gw.Serve(ctx, ln); err != nil {
			d.Log.Error("Gateway stopped.", "error", err)
			d.stop()
		}
	}()
	go func() {
		defer wg.Done()
		if err := srv.Serve(mgmt.RootOnly{Listener: apiLn, Log: d.Log}); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.Log.Error("API server stopped.", "error", err)
		}
	}()
	d.Log.Info("pgshield is up.", "listen", d.listen, "postgres", d.version)
	<-ctx.Done()
	d.Log.Info("Shutting down.")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_ = srv.Shutdown(sctx)
	cancel()
	wg.Wait()
	return nil
}

// loadOrCreateSecret reads a 32-byte secret, creating it (0600 in a 0700
// directory) on first use.
func loadOrCreateSecret(l config.Layout, path string) ([]byte, error) {
	if err := os.MkdirAll(l.SecretsDir(), 0o700); err != nil {
		return nil, err
	}
	if err := os.Chmod(l.SecretsDir(), 0o700); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(path)
	if err == nil && len(b) >= 32 {
		return b, nil
	}
	b = make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	return b, config.WriteFileAtomic(path, b, 0o600)
}

// audit records a security event. While the log cannot be written the
// stream keeps events in memory; an error means one was dropped (logged,
// rate-limited) and a gap record will say so.
func (d *Daemon) audit(e audit.Event) {
	d.metrics.Event(e.Type, e.Outcome)
	if d.auditStream == nil {
		return
	}
	if err := d.auditStream.Write(e); err != nil && d.auditDropWarn() {
		d.Log.Error("Writing the audit log failed.", "error", err, "event", e.Type)
	}
}
