package node

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/ctl/conf"
	"github.com/pgshield/pgshield/internal/ctl/params"
	"github.com/pgshield/pgshield/internal/ctl/principals"
	"github.com/pgshield/pgshield/internal/testutil/pgtest"
)

// sharedCtl is one node's parameters and administrator list, shared
// through pool, with pgshield_guard's side recorded.
type sharedCtl struct {
	store          *conf.Store
	params         *params.Controller
	admins         *principals.Controller
	sp, sa         *Shared
	guardLists     [][]string
	kernelFirewall int
}

func newSharedCtl(t *testing.T, key string, pool func() *pgxpool.Pool) *sharedCtl {
	t.Helper()
	n := sharedNode(t, key)
	s := &sharedCtl{store: conf.New(config.Layout{Root: t.TempDir()}, &config.Config{ServerID: "0123456789abcdef", AdminUser: "pgadmin",
		Parameters: map[string]string{"pgshield.log_level": "warn"}})}
	s.params = params.New(params.Config{Conf: s.store, Apply: func(string, config.Params) {},
		KernelFirewall: func(config.Params) error { s.kernelFirewall++; return nil }})
	s.admins = principals.New(principals.Config{Conf: s.store, ApplyGuard: func(_ context.Context, cfg *config.Config) error {
		s.guardLists = append(s.guardLists, slices.Clone(cfg.AdminPrincipals))
		return nil
	}})
	s.sp = n.Share("parameter set", pool, s.params.ApplyShared, s.params.Encoded)
	s.sa = n.Share("administrator list", pool, s.admins.ApplyShared, s.admins.Encoded)
	s.params.Share(func(b []byte) error { return s.sp.Publish(context.Background(), b) }, s.sp.Serialize, 0)
	s.admins.Share(func(b []byte) error { return s.sa.Publish(context.Background(), b) }, s.sa.Serialize)
	return s
}

func (s *sharedCtl) param(name string) string { return s.store.Params().Values[name] }

// TestRealSharedParams (PGSHIELD_E2E=1): the parameters and the
// administrator list as the daemon shares them (internal/ctl/params and
// principals over Shared), against PostgreSQL: a change on the primary is
// in force on the other node, its node-local parameters kept; rows forged
// by whoever can write pgshield.cluster_config (a superuser, PostgreSQL's
// OS user) without the config key, a row made under another cluster's
// key, and an old authentic row put back are never applied; an authentic
// body that is not a valid set (a bug, another version) is refused with
// an error, the last good one in force.
func TestRealSharedParams(t *testing.T) {
	srv := pgtest.Shared(t)
	ctx := context.Background()
	cat := srv.Catalog(t)
	pool := func() *pgxpool.Pool { return cat.Pool }
	conn := srv.Conn(t)
	if _, err := conn.Exec(ctx, `DELETE FROM pgshield.cluster_config WHERE name IN ('parameter set', 'administrator list')`); err != nil {
		t.Fatal(err)
	}
	const key = "0123456789abcdef-config"
	a, b := newSharedCtl(t, key, pool), newSharedCtl(t, key, pool)
	once := func(s *Shared) error { _, err := s.once(ctx); return err }
	// No rows: the primary (the first to look) publishes its own.
	for _, s := range []*Shared{a.sp, a.sa, b.sp, b.sa} {
		if err := once(s); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.params.SetParameter(ctx, "pgshield.bruteforce_max_failures", "7"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.params.SetParameter(ctx, "pgshield.log_level", "debug"); err != nil {
		t.Fatal(err)
	}
	if err := once(b.sp); err != nil || b.param("pgshield.bruteforce_max_failures") != "7" || b.param("pgshield.log_level") != "warn" {
		t.Fatalf("b: %v, max failures %s, log level %s; want 7 and its own warn", err, b.param("pgshield.bruteforce_max_failures"), b.param("pgshield.log_level"))
	}
	// The administrator list: published by a, handed to b's pgshield_guard.
	if err := a.sa.Serialize(func() error { return a.sa.Publish(ctx, []byte(`{"admin_principals":["ops@contoso.com"]}`)) }); err != nil {
		t.Fatal(err)
	}
	if err := once(b.sa); err != nil || !slices.Equal(b.store.Get().AdminPrincipals, []string{"ops@contoso.com"}) {
		t.Fatalf("b's administrator list: %v %q", err, b.store.Get().AdminPrincipals)
	}
	var oldV int64
	var oldBody, oldMAC []byte
	if err := conn.QueryRow(ctx, `SELECT version, body, mac FROM pgshield.cluster_config WHERE name = 'parameter set'`).Scan(&oldV, &oldBody, &oldMAC); err != nil {
		t.Fatal(err)
	}

	// Forged: a higher version with the body the attacker wants (TLS off,
	// brute-force bans off) and the MAC of before; an empty administrator
	// list (the principal open to takeover).
	for _, q := range []string{
		`UPDATE pgshield.cluster_config SET version = version + 10, body = convert_to('{"parameters":{"require_secure_transport":"off","pgshield.bruteforce_max_failures":"0"}}', 'UTF8') WHERE name = 'parameter set'`,
		`UPDATE pgshield.cluster_config SET version = version + 10, body = convert_to('{"admin_principals":[]}', 'UTF8') WHERE name = 'administrator list'`,
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if err := once(b.sp); err != errForged || b.param("require_secure_transport") != "on" || b.param("pgshield.bruteforce_max_failures") != "7" {
		t.Errorf("forged parameter row: %v, require_secure_transport %s", err, b.param("require_secure_transport"))
	}
	if err := once(b.sa); err != errForged || !slices.Equal(b.store.Get().AdminPrincipals, []string{"ops@contoso.com"}) {
		t.Errorf("forged administrator list: %v, in force %q", err, b.store.Get().AdminPrincipals)
	}
	// Made under another cluster's key, at a version above b's.
	other := newSharedCtl(t, "another-cluster-config-key", pool)
	if err := other.sa.Serialize(func() error { return other.sa.Publish(ctx, []byte(`{"admin_principals":[]}`)) }); err != nil {
		t.Fatal(err)
	}
	if err := once(b.sa); err != errForged || len(b.store.Get().AdminPrincipals) != 1 {
		t.Errorf("another cluster's administrator list: %v, in force %q", err, b.store.Get().AdminPrincipals)
	}

	// The primary's next change is above the forged versions; then the
	// row of 7 is put back (a replay): b keeps 8.
	if _, err := a.params.SetParameter(ctx, "pgshield.bruteforce_max_failures", "8"); err != nil {
		t.Fatal(err)
	}
	if err := once(b.sp); err != nil || b.param("pgshield.bruteforce_max_failures") != "8" {
		t.Fatalf("b after the primary's next change: %v, %s", err, b.param("pgshield.bruteforce_max_failures"))
	}
	if _, err := conn.Exec(ctx, `UPDATE pgshield.cluster_config SET version = $1, body = $2, mac = $3 WHERE name = 'parameter set'`, oldV, oldBody, oldMAC); err != nil {
		t.Fatal(err)
	}
	if err := once(b.sp); err != nil || b.param("pgshield.bruteforce_max_failures") != "8" {
		t.Errorf("replayed row (version %d): %v, b has %s; want 8 kept", oldV, err, b.param("pgshield.bruteforce_max_failures"))
	}

	// Authentic but not a valid set: refused with why, nothing applied.
	for _, body := range []string{
		`{"parameters":{"pgshield.pool_mode":"sometimes"}}`,
		`{"parameters":{"pgshield.metrics_listen":"0.0.0.0:9187"}}`,
		`{"parameters":`,
	} {
		if err := a.sp.Serialize(func() error { return a.sp.Publish(ctx, []byte(body)) }); err != nil {
			t.Fatal(err)
		}
		err := once(b.sp)
		if err == nil || err == errForged || !strings.Contains(err.Error(), "the cluster's parameters") {
			t.Errorf("authentic %s: %v; want it refused as an invalid set", body, err)
		}
		if b.param("pgshield.bruteforce_max_failures") != "8" || b.param("pgshield.pool_mode") != "session" {
			t.Errorf("b after an invalid set: %v", b.store.Get().Parameters)
		}
	}
	for _, body := range []string{`{"admin_principals":["pg_read_all_data@x"]}`, `{"admin_principals":["plainrole"]}`, `{"admin_principals":"x"}`} {
		if err := a.sa.Serialize(func() error { return a.sa.Publish(ctx, []byte(body)) }); err != nil {
			t.Fatal(err)
		}
		if err := once(b.sa); err == nil || err == errForged {
			t.Errorf("authentic %s: %v; want it refused", body, err)
		}
		if !slices.Equal(b.store.Get().AdminPrincipals, []string{"ops@contoso.com"}) {
			t.Errorf("b's list after an invalid one: %q", b.store.Get().AdminPrincipals)
		}
	}
}
