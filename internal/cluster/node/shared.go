package node

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/postgres"
)

// What the nodes of a cluster share, and where it lives.
//
// The network policy (firewall and network rules, the mode) must be the
// same on every gateway, and a change must reach every node within
// seconds. It lives in PostgreSQL (pgshield.cluster_config), not in etcd:
//   - it is written on the primary only, as the data is, and replicated
//     synchronously with it: a change acknowledged on the primary is on the
//     synchronous standby, and survives the failover that would make that
//     standby the one applying it; no second replicated store to keep in
//     step, and backups carry it;
//   - etcd has no access control here (any client certificate reads and
//     writes every key), and Patroni, running as PostgreSQL's OS user,
//     holds a client certificate: a compromised PostgreSQL could rewrite a
//     policy kept there.
// Neither store is trusted with the policy's integrity: each row carries
// a version and an HMAC-SHA256 over the name, the version and the body,
// keyed by the cluster's config key (secrets.json, root's only; never in
// Patroni's files or PostgreSQL). A node applies a row only if the MAC
// matches and the version is above the last one it applied (kept in its
// cluster directory), so neither a forged row nor an old one put back is
// ever applied.

// sharedPoll is how often every node reads what is shared: a change is in
// force everywhere within about this much plus the replication delay.
const sharedPoll = time.Second

// maxVersion bounds a shared row's version: a row forged at the top of
// int64 can make no version wrap around.
const maxVersion = 1 << 62

func (n *Node) sharedMAC(name string, version int64, body []byte) []byte {
	m := hmac.New(sha256.New, []byte(n.secrets.Config))
	m.Write([]byte("pgshield-cluster-config\x00" + name + "\x00"))
	var v [8]byte
	binary.BigEndian.PutUint64(v[:], uint64(version))
	m.Write(v[:])
	m.Write(body)
	return m.Sum(nil)
}

// appliedPath keeps the last version applied of name (root's, 0600).
func (n *Node) appliedPath(name string) string {
	return filepath.Join(n.c.Layout.ClusterDir(), "applied-"+strings.ReplaceAll(name, " ", "-")+".version")
}

func (n *Node) applied(name string) int64 {
	b, err := os.ReadFile(n.appliedPath(name))
	if err != nil {
		return 0
	}
	v, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return v
}

func (n *Node) setApplied(name string, v int64) error {
	return config.WriteFileAtomic(n.appliedPath(name), []byte(strconv.FormatInt(v, 10)+"\n"), 0o600)
}

// Shared is one thing the nodes share: Publish on the primary, Watch on
// every node.
type Shared struct {
	n    *Node
	name string
	pool func() *pgxpool.Pool
	// apply puts a received body in force on this node; it must not
	// publish it again.
	apply func([]byte) error
	// current is this node's body, published by the primary when the
	// table has none yet (a cluster made from a single node).
	current func() ([]byte, error)

	mu sync.Mutex // serializes Publish and the watch's apply
}

// Share makes the shared item name, read and written through pool.
func (n *Node) Share(name string, pool func() *pgxpool.Pool, apply func([]byte) error, current func() ([]byte, error)) *Shared {
	return &Shared{n: n, name: name, pool: pool, apply: apply, current: current}
}

// Serialize runs fn under the item's lock: a local change (fn) and its
// Publish, which must be called inside fn. Lock order: this lock first,
// then whatever apply and fn take.
func (s *Shared) Serialize(fn func() error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fn()
}

// Publish writes body as the next version for every node; it must run
// inside Serialize. On a standby it is refused with a clear error:
// changes are made on the primary.
func (s *Shared) Publish(ctx context.Context, body []byte) error {
	return s.publishLocked(ctx, body)
}

func (s *Shared) publishLocked(ctx context.Context, body []byte) error {
	pool := s.pool()
	if pool == nil {
		return clienterr.New(apitype.CodeUnavailable, "PostgreSQL is not running: the %s cannot be shared with the cluster now", s.name)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	v, err := postgres.WriteShared(ctx, pool, s.name, body, s.n.applied(s.name), func(v int64) []byte { return s.n.sharedMAC(s.name, v, body) })
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "25006" {
		return clienterr.New(apitype.CodeInvalid, "this node is a standby: change the %s on the primary (pgshield cluster show names it)", s.name)
	}
	if err != nil {
		return fmt.Errorf("sharing the %s with the cluster: %w", s.name, err)
	}
	if err := s.n.setApplied(s.name, v); err != nil {
		return err
	}
	s.n.c.Log.Info("Shared with the cluster.", "item", s.name, "version", v)
	return nil
}

// Watch reads the shared row every sharedPoll until ctx ends and applies
// each new, authentic version. A primary that finds no row publishes its
// own.
func (s *Shared) Watch(ctx context.Context) {
	t := time.NewTicker(sharedPoll)
	defer t.Stop()
	refused := int64(-1)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if v, err := s.once(ctx); err != nil && v != refused {
			refused = v // said once per bad version
			s.n.c.Log.Error("A shared "+s.name+" was not applied.", "version", v, "error", err)
		}
	}
}

// errForged is a row whose MAC does not match.
var errForged = errors.New("its MAC does not match: not written by a pgshield node of this cluster; the last good one stays in force")

func (s *Shared) once(ctx context.Context) (int64, error) {
	pool := s.pool()
	if pool == nil {
		return 0, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	row, ok, err := postgres.ReadShared(ctx, pool, s.name)
	if err != nil {
		return 0, nil // PostgreSQL restarting, promoting: the next round
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !ok {
		body, err := s.current()
		if err != nil {
			return 0, err
		}
		if err := s.publishLocked(ctx, body); err != nil && !isStandbyRefusal(err) {
			return 0, err
		}
		return 0, nil
	}
	applied := s.n.applied(s.name)
	if row.Version < applied || row.Version >= maxVersion {
		// An older row put back (or a forged huge version): a primary
		// publishes its own again, above both; a standby waits for it.
		body, err := s.current()
		if err != nil {
			return row.Version, err
		}
		if err := s.publishLocked(ctx, body); err != nil && !isStandbyRefusal(err) {
			return row.Version, err
		}
		return row.Version, nil
	}
	if row.Version == applied {
		return row.Version, nil
	}
	if !hmac.Equal(row.MAC, s.n.sharedMAC(s.name, row.Version, row.Body)) {
		return row.Version, errForged
	}
	if err := s.apply(row.Body); err != nil {
		return row.Version, err
	}
	if err := s.n.setApplied(s.name, row.Version); err != nil {
		return row.Version, err
	}
	s.n.c.Log.Info("Applied the cluster's shared "+s.name+".", "version", row.Version)
	return row.Version, nil
}

func isStandbyRefusal(err error) bool {
	e, ok := clienterr.As(err)
	return ok && e.Code == apitype.CodeInvalid
}
