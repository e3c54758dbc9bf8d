// Package daemon is the composition root of a running pgshield server:
// it builds the controllers of internal/ctl for one data directory, wires
// them together, starts them in one listed order (Run) and stops them in
// the reverse order, and serves the management API through a thin adapter
// (api.go).
//
// Lock order, from outermost to innermost (each controller documents its
// own; this is the whole):
//
//  1. keys.Controller.mu: every transition of the volume (lock, unlock,
//     rewrap, revalidation, and the volume controller's grow and remount
//     through keys.Locked).
//  2. conf.Store's lock: every change of the configuration (parameters,
//     administrator principals, the key URI, the volume's size).
//  3. Leaves, held only briefly and never around a call into another
//     controller: keys' revalMu, volume's stats, backup's job, instance's
//     supervisor pointer, the audit stream's and the netpolicy engine's own.
//
// Nothing takes a lock of a higher rank while holding a lower one:
// conf.Store.Edit's functions never reach the keys controller.
package daemon

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/cluster/node"
	"github.com/pgshield/pgshield/internal/config"
	alertsctl "github.com/pgshield/pgshield/internal/ctl/alerts"
	"github.com/pgshield/pgshield/internal/ctl/auditlog"
	backupctl "github.com/pgshield/pgshield/internal/ctl/backup"
	"github.com/pgshield/pgshield/internal/ctl/certs"
	"github.com/pgshield/pgshield/internal/ctl/conf"
	"github.com/pgshield/pgshield/internal/ctl/instance"
	"github.com/pgshield/pgshield/internal/ctl/keys"
	"github.com/pgshield/pgshield/internal/ctl/network"
	"github.com/pgshield/pgshield/internal/ctl/params"
	"github.com/pgshield/pgshield/internal/ctl/principals"
	threatctl "github.com/pgshield/pgshield/internal/ctl/threat"
	"github.com/pgshield/pgshield/internal/ctl/volume"
	"github.com/pgshield/pgshield/internal/gateway"
	"github.com/pgshield/pgshield/internal/metrics"
	"github.com/pgshield/pgshield/internal/mgmt"
	"github.com/pgshield/pgshield/internal/pgbackend"
	"github.com/pgshield/pgshield/internal/pidfile"
	"github.com/pgshield/pgshield/internal/pool"
	"github.com/pgshield/pgshield/internal/postgres"
	"github.com/pgshield/pgshield/internal/threat"
	"github.com/pgshield/pgshield/internal/tlsconf"
	"github.com/pgshield/pgshield/internal/wire"
)

// Daemon is one running server.
type Daemon struct {
	Layout config.Layout
	Log    *slog.Logger
	// LogLevel, when set, is Log's level: pgshield.log_level sets it.
	LogLevel *slog.LevelVar

	stop context.CancelFunc

	// The controllers, built by Run before anything starts.
	conf       *conf.Store
	audit      *auditlog.Log
	metrics    *metrics.Metrics
	metricsLn  *metrics.Listener
	volume     *volume.Controller
	keys       *keys.Controller
	pg         *instance.Instance
	backups    *backupctl.Controller
	network    *network.Controller
	params     *params.Controller
	principals *principals.Controller
	threat     *threatctl.Controller
	alerts     *alertsctl.Controller
	certs      *certs.Controller
	// node is set on a cluster node (cfg.Cluster): Patroni, the link, the
	// promotion socket and the fence (internal/cluster/node).
	node *node.Node
	// sharedParams and sharedAdmins are pgshield's parameters (but the
	// node-local ones) and pgshield_guard's administrator list, shared
	// as the network policy is (node only).
	sharedParams, sharedAdmins *node.Shared
	// sharedNet is the network policy shared with the cluster (node only).
	sharedNet *node.Shared
	// keyChecks tells the other nodes when this node's key state moves,
	// and checks this node's key when another's moved (node only).
	keyChecks *node.KeyChecks
	// gw is set by the "gateway" component; read by the API and metrics
	// only after that (the API starts later) or through gateway().
	gwMu    sync.Mutex
	gw      *gateway.Server
	started time.Time
	version string
	// life is the state of a shutdown or restart (lifecycle.go).
	life lifecycle
}

// Run builds the controllers, starts them in the order of components, and
// blocks until ctx ends or shutdown is asked for through the API; then it
// stops them in the reverse order: the API and the gateway first, the
// volume and the pid file last.
func (d *Daemon) Run(ctx context.Context) error {
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	cfg, err := config.Load(d.Layout)
	if err != nil {
		return err
	}
	ctx, d.stop = context.WithCancel(ctx)
	defer d.stop()
	u, err := postgres.LookupOSUser(cfg.PGOSUser)
	if err != nil {
		return err
	}
	if err := d.build(cfg, u); err != nil {
		return err
	}
	d.initLifecycle(ctx)
	defer d.life.endServe()
	stopAll, err := startAll(ctx, d.components(cfg))
	if err != nil {
		return err
	}
	d.Log.Info("pgshield is up.", "listen", d.network.Listen(), "postgres", d.version)
	d.notify("READY=1")
	<-ctx.Done()
	d.shutdown() // sessions drain before anything stops
	stopAll()
	d.Log.Info("pgshield stopped.")
	return nil
}

// build makes the controllers and wires them together; nothing starts.
func (d *Daemon) build(cfg *config.Config, u postgres.OSUser) error {
	l, log := d.Layout, d.Log
	d.conf = conf.New(l, cfg)
	d.metrics = d.newMetrics()
	d.metricsLn = &metrics.Listener{Handler: d.metrics.NetworkHandler(), Healthz: api{d}.healthz()}
	d.audit = auditlog.New(auditlog.Config{Layout: l, Log: log, Count: d.metrics.Event,
		FailClosed: func() bool { return d.conf.Params().AuditFailClosed }})
	// Alerts are fed what the gateway records (observe) and PostgreSQL's
	// log; they record their own alert.* events straight to the log.
	d.alerts = alertsctl.New(alertsctl.Config{Layout: l, Log: log.With("component", "alerts"), Audit: d.audit.Record,
		Params: d.conf.Params(), IsReserved: cfg.IsReserved,
		Pool: func() *pgxpool.Pool {
			if c := d.pg.Catalog(); c != nil {
				return c.Pool
			}
			return nil
		}})
	d.metrics.Registry.MustRegister(d.alerts.Collectors()...)
	d.certs = d.newCerts()
	d.volume = volume.New(volume.Config{Layout: l, Log: log, Conf: d.conf, Audit: d.audit.Record,
		Volume: &volume.AtRest{Layout: l, Cfg: cfg, Log: log.With("component", "storage")}})
	cluster := &postgres.Cluster{Layout: l, Cfg: cfg, User: u, Guard: d.volume.AtRest().Guard,
		// Managed files are rewritten when PostgreSQL starts again (unlock):
		// with the configuration of then. No caller holds the store's lock.
		Live: d.conf.Get}
	d.backups = backupctl.New(backupctl.Config{Layout: l, Log: log, Conf: d.conf, Cluster: cluster, Audit: d.audit.Record,
		KeyState: func() string { return d.keys.State() }, PGStatus: func() postgres.Status { return d.pg.Status() },
		Pool: func() *pgxpool.Pool { return d.pg.Pool() }})
	d.keys = keys.New(keys.Config{Log: log, Conf: d.conf, Volume: d.volume.AtRest(), Audit: d.audit.Record,
		Metrics: d.metrics, RewrapBackupKey: d.backups.RewrapKey,
		Changed: func(state string) {
			if d.keyChecks != nil {
				d.keyChecks.Changed(state)
			}
		}})
	var pgCommand func() (*exec.Cmd, error) // a single node: the postmaster
	if cfg.Cluster != nil {
		pgCommand = func() (*exec.Cmd, error) { return d.node.Command() }
	}
	d.pg = instance.New(instance.Config{Cluster: cluster, Log: log.With("component", "postgres"), ServerLog: func(es []audit.Event) {
		d.audit.ServerLog(es)
		d.alerts.ObserveBatch(es)
	},
		BeforeStart: d.backups.Prepare, AfterStart: d.backups.AfterStart,
		Command: pgCommand,
		OnReady: func(pid int) {
			// Pooled backends of the postmaster before are gone.
			if gw := d.gateway(); gw != nil {
				gw.DrainPool()
			}
			if cfg.Cluster != nil {
				// pid is Patroni's, in the node's namespace; the postmaster
				// has an empty one of its own (no outbound path yet).
				return
			}
			if err := d.network.ApplyOutbound(pid); err != nil {
				log.Error("Opening the outbound path failed; PostgreSQL has no network access.", "error", err)
			}
		},
		ExplainStartFailure: func(err error) error {
			if _, serr := os.Stat(l.BackupRestoreConfig()); serr == nil {
				return fmt.Errorf("%w; recovery of the restored cluster: %s", err, backupctl.LastFatal(l.PGLogDir()))
			}
			return err
		}})
	d.params = params.New(params.Config{Log: log, Conf: d.conf, Cluster: cluster, Audit: d.audit.Record, Pool: d.pg.Pool,
		Apply: func(name string, p config.Params) {
			d.applyLogLevel(p.LogLevel())
			d.threat.Apply(p)
			d.alerts.Apply(p)
			d.gateway().SetParams(p)
			d.audit.ApplyParam(name, p)
		},
		KernelFirewall: func(p config.Params) error { return d.network.ApplyKernelFirewall(p) },
		MetricsListen:  d.metricsLn.Set,
		ClusterSet:     d.clusterSet(cfg)})
	// Bans and known-good sources, kept outside the volume: they hold
	// while it is locked.
	d.threat = threatctl.New(threatctl.Config{Layout: l, Log: log.With("component", "threat"), Audit: d.audit.Record,
		Params: d.conf.Params(),
		Policy: func(p config.Params) threat.Config { return gateway.ThreatConfig(p, cfg.AdminUser) },
		// PostgreSQL's max_connections, for pgshield.max_connections = auto.
		Pool: func() *pgxpool.Pool {
			if c := d.pg.Catalog(); c != nil {
				return c.Pool
			}
			return nil
		}})
	d.principals = principals.New(principals.Config{Log: log, Conf: d.conf, Catalog: d.pg.Catalog,
		ApplyGuard: d.params.ApplyGuardSettings, Audit: d.audit.Record})
	d.volume.Bind(d.keys, server{d})
	d.keys.Bind(server{d})
	if cfg.Cluster != nil {
		bin, err := os.Executable()
		if err != nil {
			return err
		}
		d.node, err = node.New(node.Config{Layout: l, Cfg: cfg, User: u, Bin: bin, Volume: d.volume.AtRest(), Keys: d.keys,
			OnLeader:   func() { d.backups.EnsureStanza(context.Background()) },
			PatroniPID: d.pg.PID,
			Log:        log.With("component", "cluster")})
		if err != nil {
			return err
		}
		cluster.WriteSettings = d.node.WriteSettings
		catalogPool := func() *pgxpool.Pool {
			if c := d.pg.Catalog(); c != nil {
				return c.Pool
			}
			return nil
		}
		d.keyChecks = d.node.KeyChecks(func(ctx context.Context) { d.keys.Revalidate(ctx) })
		d.sharedNet = d.node.Share("network policy", catalogPool,
			func(b []byte) error { return d.network.ApplyShared(b) },
			func() ([]byte, error) { return d.network.Encoded() })
		d.sharedParams = d.node.Share("parameter set", catalogPool, d.params.ApplyShared, d.params.Encoded)
		d.params.Share(func(b []byte) error { return d.sharedParams.Publish(context.Background(), b) }, d.sharedParams.Serialize, guardWait(cfg))
		d.sharedAdmins = d.node.Share("administrator list", catalogPool, d.principals.ApplyShared, d.principals.Encoded)
		d.principals.Share(func(b []byte) error { return d.sharedAdmins.Publish(context.Background(), b) }, d.sharedAdmins.Serialize)
	}
	return nil
}

// guardWait is how long a change of pgshield_guard's settings may take to
// show in PostgreSQL: on a cluster node Patroni writes them at its next
// cycle, up to loop_wait after it was asked.
func guardWait(cfg *config.Config) time.Duration {
	return time.Duration(node.Timings(cfg.Cluster).LoopWait)*time.Second + 5*time.Second
}

// components lists the steps of a start, in order; Run stops them in the
// reverse order. The order is the server's invariants: the volume is
// open before anything writes to it and closed after everything that
// writes to it has stopped; the audit log (on the volume) is closed after
// PostgreSQL has stopped; the public port is bound before PostgreSQL
// starts so that a clash fails fast; backups stop before PostgreSQL does.
func (d *Daemon) components(cfg *config.Config) []component {
	var (
		volumeOpen bool
		cert       *tlsconf.Cert
		mock       []byte
		gwLn       net.Listener
		apiLn      net.Listener
		apiSrv     *http.Server
		serving    sync.WaitGroup
		nodeStop   context.CancelFunc
	)
	p, err := config.ResolveParams(cfg.Parameters)
	resolveErr := err
	if err == nil {
		d.applyLogLevel(p.LogLevel())
	}
	return []component{
		{name: "pid file",
			start: func(context.Context) error { return pidfile.Write(d.Layout.PIDFile()) },
			stop:  func() { os.Remove(d.Layout.PIDFile()) }},
		{name: "metrics", stop: d.metricsLn.Close},
		{name: "volume",
			// A key that cannot unwrap the data key starts the server
			// Inaccessible (keys.Open); the volume stays closed until then.
			start: func(ctx context.Context) (err error) {
				volumeOpen, err = d.keys.Open(ctx)
				return err
			},
			stop: func() {
				if err := d.volume.AtRest().Close(context.Background()); err != nil {
					d.Log.Error("Closing the encrypted volume failed.", "error", err)
				}
			}},
		{name: "settings", start: func(context.Context) (err error) {
			// While Inaccessible the volume is locked: the instance writes
			// the managed files once the key works again.
			if volumeOpen {
				if err := d.pg.Cluster().WriteManagedFiles(); err != nil {
					return err
				}
			}
			if cert, err = d.certs.Load(); err != nil {
				return err
			}
			if resolveErr != nil {
				return resolveErr
			}
			mock, err = loadOrCreateSecret(d.Layout, d.Layout.MockAuthKey())
			return err
		}},
		{name: "audit log",
			start: func(context.Context) error { return d.audit.Open(p, volumeOpen) },
			stop:  d.audit.Close},
		{name: "server events",
			start: func(context.Context) error {
				d.audit.Record(audit.Event{Type: "server.start", Outcome: audit.OutcomeSuccess, Fields: map[string]any{"pid": os.Getpid()}})
				return nil
			},
			stop: func() { d.audit.Record(audit.Event{Type: "server.stop"}) }},
		{name: "network policy",
			start: func(context.Context) (err error) {
				var publish func([]byte) error
				var serialize func(func() error) error
				if d.sharedNet != nil {
					publish = func(b []byte) error { return d.sharedNet.Publish(context.Background(), b) }
					serialize = d.sharedNet.Serialize
				}
				d.network, err = network.New(network.Config{Layout: d.Layout, Log: d.Log, Conf: d.conf, Audit: d.audit.Record, PostmasterPID: d.pg.PID,
					Publish: publish, Serialize: serialize})
				return err
			},
			stop: func() { d.network.StopOutbound() }},
		{name: "gateway listener",
			start: func(context.Context) (err error) {
				if gwLn, err = net.Listen("tcp", cfg.Listen); err != nil {
					return fmt.Errorf("gateway cannot listen on %s: %w", cfg.Listen, err)
				}
				return nil
			},
			stop: func() { gwLn.Close() }},
		{name: "kernel firewall",
			start: func(ctx context.Context) error { return d.network.Start(ctx, gwLn.Addr().String()) },
			stop:  func() { d.network.StopKernelFirewall() }},
		{name: "API listener",
			start: func(context.Context) (err error) { apiLn, err = mgmt.Listen(d.Layout.APISocket()); return err },
			stop:  func() { apiLn.Close() }},
		// Before PostgreSQL: Patroni clones and replicates through the
		// link, and asks the promotion socket before it promotes.
		{name: "cluster node",
			start: func(ctx context.Context) error {
				if d.node == nil {
					return nil
				}
				nctx, cancel := context.WithCancel(ctx)
				nodeStop = cancel
				return d.node.Start(nctx)
			},
			stop: func() {
				if nodeStop != nil {
					nodeStop()
				}
			}},
		{name: "postgres",
			start: func(ctx context.Context) error {
				if volumeOpen {
					return d.pg.Start(ctx)
				}
				return nil
			},
			// The supervisor is replaced on unlock: whichever runs stops.
			stop: func() { d.pg.Stop(30 * time.Second) }},
		{name: "backups", stop: d.backups.Stop},
		{name: "catalog",
			start: func(ctx context.Context) error { return d.pg.OpenCatalog(ctx, d.Log.With("component", "catalog")) },
			stop:  d.pg.CloseCatalog},
		// After the catalog (privilege and decoy checks use its pool);
		// stopped after the gateway, so the last alerts are saved.
		{name: "alerts",
			start: func(ctx context.Context) error { go d.alerts.Run(ctx); return nil },
			stop: func() {
				if err := d.alerts.Save(); err != nil {
					d.Log.Error("Saving the alerts failed.", "error", err)
				}
			}},
		// Started before the gateway and so stopped after it: the last
		// bans of a run are written once nothing makes more.
		{name: "threat state",
			start: func(ctx context.Context) error { go d.threat.Run(ctx); return nil },
			stop: func() {
				if err := d.threat.Save(); err != nil {
					d.Log.Error("Saving the threat state failed.", "error", err)
				}
			}},
		{name: "gateway", start: func(context.Context) error {
			d.version = d.pg.Version()
			gw, err := gateway.New(gateway.Config{
				Cert: cert, Roles: d.pg.Catalog().Logins(), Backend: &pgbackend.Dialer{Socket: d.pg.Cluster().SocketPath()},
				IsReserved: cfg.IsReserved,
				MockSecret: mock, Params: p, Log: d.Log.With("component", "gateway"),
				Policy:    d.network.ForPort(network.ListenPort(d.network.Listen())),
				Audit:     d.observe,
				Available: d.available,
				Threat:    d.threat.Guard(),
				PoolWait:  d.metrics.PoolWait,
				// A cluster node serves sessions only while it is the
				// confirmed primary.
				Leadership: d.leadership(),
			})
			if err != nil {
				return err
			}
			d.gwMu.Lock()
			d.gw = gw
			d.gwMu.Unlock()
			d.started = time.Now()
			return nil
		}},
		{name: "background loops", start: func(ctx context.Context) error {
			if err := d.metricsLn.Set(p.Values["pgshield.metrics_listen"]); err != nil {
				d.Log.Error("Metrics endpoint not started.", "error", err)
			}
			go d.keys.Run(ctx)   // revalidation
			go d.volume.Run(ctx) // autogrow; remounts gocryptfs if it dies
			go d.certs.Run(ctx)  // renewal and expiry alerts; SIGHUP reloads
			if d.sharedNet != nil {
				go d.sharedParams.Watch(ctx)            // the cluster's parameters
				go d.sharedAdmins.Watch(ctx)            // the cluster's administrator list
				go d.sharedNet.Watch(ctx)               // the cluster's network policy
				go d.node.RunAnchors(ctx, d.audit.Head) // the audit chain's head, in etcd
				go d.keyChecks.Run(ctx)                 // a key revoked or back on another node
			}

			// SIGHUP also reads pgshield.json again (reload.go).
			go d.reloadOnHUP(ctx)
			return nil
		}},
		{name: "serving",
			start: func(ctx context.Context) error {
				apiSrv = &http.Server{Handler: mgmt.NewHandler(mgmt.Routes(api{d}), mgmt.Options{Log: d.Log, OnWrite: d.audit.APICall}),
					ReadHeaderTimeout: 10 * time.Second, ConnContext: mgmt.ConnContext}
				serving.Add(2)
				go func() {
					defer serving.Done()
					// Its own context: sessions outlive ctx by the drain (shutdown).
					if err := d.gateway().Serve(d.life.serveCtx, gwLn); err != nil {
						d.Log.Error("Gateway stopped.", "error", err)
						d.stop()
					}
				}()
				go func() {
					defer serving.Done()
					if err := apiSrv.Serve(mgmt.RootOnly{Listener: apiLn, Log: d.Log}); err != nil && !errors.Is(err, http.ErrServerClosed) {
						d.Log.Error("API server stopped.", "error", err)
					}
				}()
				return nil
			},
			// The gateway stops with its serving context, ended by shutdown.
			stop: func() {
				sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_ = apiSrv.Shutdown(sctx)
				cancel()
				serving.Wait()
			}},
	}
}

// clusterSet is params.Config.ClusterSet: on a cluster node a PostgreSQL
// parameter goes to every node through Patroni (node.SetParameter); nil
// on a single node, which keeps ALTER SYSTEM.
func (d *Daemon) clusterSet(cfg *config.Config) func(ctx context.Context, name, value string) error {
	if cfg.Cluster == nil {
		return nil
	}
	return func(ctx context.Context, name, value string) error {
		if d.node == nil { // built after the controllers, started later still
			return clienterr.New(apitype.CodeUnavailable, "the cluster node is not running")
		}
		return d.node.SetParameter(ctx, name, value)
	}
}

// leadership is the gateway's fence on a cluster node, nil on a single one.
func (d *Daemon) leadership() gateway.Leadership {
	if d.node == nil {
		return nil
	}
	return d.node.Fence()
}

// gateway is the gateway, nil before its component started.
func (d *Daemon) gateway() *gateway.Server {
	d.gwMu.Lock()
	defer d.gwMu.Unlock()
	return d.gw
}

// observe records a gateway event and runs the alert detectors on it.
func (d *Daemon) observe(e audit.Event) {
	d.audit.Record(e)
	d.alerts.Observe(e)
}

// available refuses new sessions while the key is not usable, or while the
// audit log cannot be written and pgshield.audit_fail_closed is on.
func (d *Daemon) available() error {
	if err := d.refusal(); err != nil {
		return err
	}
	if err := d.keys.SessionsAllowed(); err != nil {
		return err
	}
	return d.audit.Refusal()
}

// server is the rest of the server as the keys and volume controllers see
// it (keys.Server, volume.Server).
type server struct{ d *Daemon }

// Quiesce ends every session, stops what writes to the volume, records
// last and closes the audit log on the volume.
func (s server) Quiesce(clientMsg string, last *audit.Event) {
	d := s.d
	if gw := d.gateway(); gw != nil {
		gw.TerminateAll(wire.ErrorMessage(wire.CodeAdminShutdown, "%s", clientMsg))
		gw.DrainPool() // no backend outlives the lock; those in use close as their sessions end
	}
	d.backups.Stop() // its configuration is on the volume
	// Stopping PostgreSQL also drains its last log lines into the stream.
	d.pg.Stop(30 * time.Second)
	d.pg.ResetPool()
	if last != nil {
		d.audit.Record(*last)
	}
	if err := d.audit.Detach(); err != nil {
		d.Log.Error("Closing the audit log before the volume goes failed; its events wait in memory.", "error", err)
	}
}

// Resume reopens the audit log (what happened meanwhile is written now,
// in order) and starts PostgreSQL.
func (s server) Resume(ctx context.Context) error {
	if err := s.d.audit.Attach(); err != nil {
		s.d.Log.Error("The audit log cannot be opened again; retrying.", "error", err)
	}
	return s.d.pg.Start(ctx)
}

// newMetrics makes the daemon's metrics; the gauges read live state at
// scrape time and tolerate parts not started yet.
func (d *Daemon) newMetrics() *metrics.Metrics {
	return metrics.New(map[string]func() float64{
		"pgshield_gateway_connections_active": func() float64 {
			if gw := d.gateway(); gw != nil {
				return float64(gw.Stats().Active)
			}
			return 0
		},
		"pgshield_gateway_connections_total": func() float64 {
			if gw := d.gateway(); gw != nil {
				return float64(gw.Stats().Total)
			}
			return 0
		},
		"pgshield_postgres_restarts_total": func() float64 {
			if d.pg != nil {
				return float64(d.pg.Status().Restarts)
			}
			return 0
		},
		"pgshield_postgres_up": func() float64 {
			if d.pg != nil && d.pg.Status().State == postgres.StateRunning {
				return 1
			}
			return 0
		},
		"pgshield_pool_backends_active": d.poolGauge(func(s pool.KeyStats) int { return s.Active }),
		"pgshield_pool_backends_idle":   d.poolGauge(func(s pool.KeyStats) int { return s.Idle }),
		"pgshield_pool_clients":         d.poolGauge(func(s pool.KeyStats) int { return s.Clients }),
		"pgshield_pool_clients_waiting": d.poolGauge(func(s pool.KeyStats) int { return s.Waiting }),
		"pgshield_pool_handovers_light_total": func() float64 {
			if gw := d.gateway(); gw != nil {
				l, _ := gw.Handovers()
				return float64(l)
			}
			return 0
		},
		"pgshield_pool_handovers_full_total": func() float64 {
			if gw := d.gateway(); gw != nil {
				_, f := gw.Handovers()
				return float64(f)
			}
			return 0
		},
		"pgshield_pool_handovers_refused_total": func() float64 {
			if gw := d.gateway(); gw != nil {
				return float64(gw.HandoversRefused())
			}
			return 0
		},
		"pgshield_key_grace_remaining_seconds": func() float64 {
			if d.keys != nil {
				return d.keys.GraceRemaining()
			}
			return 0
		},
	})
}

// poolGauge sums one counter of the gateway's pools at scrape time.
func (d *Daemon) poolGauge(f func(pool.KeyStats) int) func() float64 {
	return func() float64 {
		n := 0
		if gw := d.gateway(); gw != nil {
			for _, s := range gw.PoolStats() {
				n += f(s)
			}
		}
		return float64(n)
	}
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
