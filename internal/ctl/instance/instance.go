// Package instance is the controller of the supervised PostgreSQL: the
// cluster's managed files, the supervisor (replaced each time PostgreSQL
// starts again, after an unlock or a remount), and pgshield's catalog in
// it. What must happen around a start (backups' configuration before, a
// pending restore's recovery after, the outbound path once it is ready)
// comes in through its Config.
//
// mu guards sup and is a leaf: it is held only to read or swap the
// pointer, never while PostgreSQL starts or stops.
package instance

import (
	"context"
	"log/slog"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/postgres"
)

// Config is what the instance needs.
type Config struct {
	Cluster *postgres.Cluster
	Log     *slog.Logger
	// ServerLog receives PostgreSQL's log.
	ServerLog func([]audit.Event)
	// BeforeStart runs with the volume unlocked, before PostgreSQL
	// starts; a failure is logged and PostgreSQL starts all the same.
	BeforeStart func(ctx context.Context) error
	// AfterStart runs once PostgreSQL is up; a failure stops it again.
	AfterStart func(ctx context.Context, sup *postgres.Supervisor) error
	// OnReady runs each time the postmaster is ready, with its pid.
	OnReady func(pid int)
	// ExplainStartFailure may add to the error of a failed start.
	ExplainStartFailure func(error) error
	// Command, on a cluster node, runs Patroni in place of the postmaster
	// (postgres.Supervisor.Command).
	Command func() (*exec.Cmd, error)
}

// Instance is the PostgreSQL of one server.
type Instance struct {
	c       Config
	mu      sync.Mutex
	sup     *postgres.Supervisor // guarded by mu; never nil
	catalog *postgres.Catalog    // set once by OpenCatalog
}

// New makes the instance, not started.
func New(c Config) *Instance {
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return &Instance{c: c, sup: &postgres.Supervisor{Cluster: c.Cluster}}
}

// Cluster is the managed cluster.
func (i *Instance) Cluster() *postgres.Cluster { return i.c.Cluster }

func (i *Instance) supervisor() *postgres.Supervisor {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.sup
}

// Start writes the managed files (a server that started Inaccessible has
// not written them yet) and starts PostgreSQL under a new supervisor.
func (i *Instance) Start(ctx context.Context) error {
	if err := i.c.Cluster.WriteManagedFiles(); err != nil {
		return err
	}
	if i.c.BeforeStart != nil {
		if err := i.c.BeforeStart(ctx); err != nil {
			// PostgreSQL starts all the same and keeps the WAL it cannot
			// archive until this is fixed.
			i.c.Log.Error("Preparing backups failed; WAL archiving will fail.", "error", err)
		}
	}
	sup := &postgres.Supervisor{Cluster: i.c.Cluster, Log: i.c.Log, ServerLog: i.c.ServerLog, OnReady: i.c.OnReady, Command: i.c.Command}
	if err := sup.Start(ctx); err != nil {
		if i.c.ExplainStartFailure != nil {
			return i.c.ExplainStartFailure(err)
		}
		return err
	}
	if i.c.AfterStart != nil {
		if err := i.c.AfterStart(ctx, sup); err != nil {
			sup.Stop(30 * time.Second)
			return err
		}
	}
	i.mu.Lock()
	i.sup = sup
	i.mu.Unlock()
	return nil
}

// Stop stops whichever supervisor runs.
func (i *Instance) Stop(timeout time.Duration) { i.supervisor().Stop(timeout) }

// Status is PostgreSQL's state.
func (i *Instance) Status() postgres.Status { return i.supervisor().Status() }

// PID is the running postmaster's pid, 0 if none.
func (i *Instance) PID() int { return i.Status().PID }

// OpenCatalog opens pgshield's catalog (two small pools); once.
func (i *Instance) OpenCatalog(ctx context.Context, log *slog.Logger) error {
	cat, err := postgres.NewCatalog(ctx, i.c.Cluster, log)
	if err != nil {
		return err
	}
	i.catalog = cat
	return nil
}

// Catalog is pgshield's catalog; nil before OpenCatalog.
func (i *Instance) Catalog() *postgres.Catalog { return i.catalog }

// Pool is the service role's pool.
func (i *Instance) Pool() *pgxpool.Pool { return i.catalog.Pool }

// CloseCatalog closes the catalog's pools.
func (i *Instance) CloseCatalog() {
	if i.catalog != nil {
		i.catalog.Close()
	}
}

// ResetPool drops the pools' connections after PostgreSQL stopped.
func (i *Instance) ResetPool() {
	if i.catalog != nil {
		i.catalog.Pool.Reset()
	}
}

// Version reads the version of the installed server binary, which works
// whether or not PostgreSQL is running.
func (i *Instance) Version() string {
	out, err := exec.Command(i.c.Cluster.Bin("postgres"), "--version").Output()
	if err != nil {
		return ""
	}
	// "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
	v := strings.TrimSpace(string(out))
	if j := strings.Index(v, ") "); j >= 0 {
		v = v[j+2:]
	}
	return v
}
