package params

import (
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/ctl/conf"
)

// sharedFixture is a cluster node's controller with every side effect
// recorded; no PostgreSQL.
type sharedFixture struct {
	c          *Controller
	store      *conf.Store
	published  [][]byte
	refuse     error // Publish's answer: a standby
	applied    []string
	firewall   []config.Params
	firewallOK error
	metrics    []string
	serialized int
	events     []audit.Event
}

func newSharedFixture(t *testing.T, params map[string]string) *sharedFixture {
	t.Helper()
	f := &sharedFixture{}
	l := config.Layout{Root: t.TempDir()}
	f.store = conf.New(l, &config.Config{ServerID: "0123456789abcdef", Parameters: params})
	f.c = New(Config{Conf: f.store,
		Audit:          func(e audit.Event) { f.events = append(f.events, e) },
		Apply:          func(name string, _ config.Params) { f.applied = append(f.applied, name) },
		KernelFirewall: func(p config.Params) error { f.firewall = append(f.firewall, p); return f.firewallOK },
		MetricsListen:  func(a string) error { f.metrics = append(f.metrics, a); return nil }})
	f.c.Share(func(b []byte) error {
		if f.refuse != nil {
			return f.refuse
		}
		f.published = append(f.published, b)
		return nil
	}, func(fn func() error) error { f.serialized++; return fn() }, 0)
	return f
}

func (f *sharedFixture) lastPublished(t *testing.T) map[string]string {
	t.Helper()
	var b sharedBody
	if len(f.published) == 0 {
		t.Fatal("nothing published")
	}
	if err := json.Unmarshal(f.published[len(f.published)-1], &b); err != nil {
		t.Fatal(err)
	}
	return b.Parameters
}

// TestSharedParams: on a cluster node a shared parameter set here is
// published before it is in force, a refused publication (a standby)
// leaves it in force nowhere, and a node-local one is neither published
// nor refused; a set received from the cluster is put in force through
// the same path (kernel firewall, the running parts, the audit log),
// keeps this node's node-local parameters and is never published again.
func TestSharedParams(t *testing.T) {
	f := newSharedFixture(t, map[string]string{"pgshield.metrics_listen": "127.0.0.1:9187"})
	if _, err := f.c.setGatewayParam(mustParam(t, "pgshield.bruteforce_max_failures"), "7"); err != nil {
		t.Fatal(err)
	}
	if got := f.lastPublished(t); !maps.Equal(got, map[string]string{"pgshield.bruteforce_max_failures": "7"}) {
		t.Errorf("published %v; want the shared parameter only (not metrics_listen)", got)
	}
	if f.serialized != 1 || !slices.Equal(f.applied, []string{"pgshield.bruteforce_max_failures"}) ||
		f.store.Get().Parameters["pgshield.bruteforce_max_failures"] != "7" {
		t.Fatalf("serialized %d, applied %v, in force %v", f.serialized, f.applied, f.store.Get().Parameters)
	}

	// Node-local: in force here, not published, not serialized.
	if _, err := f.c.setGatewayParam(mustParam(t, "pgshield.log_level"), "debug"); err != nil {
		t.Fatal(err)
	}
	if len(f.published) != 1 || f.serialized != 1 || f.store.Get().Parameters["pgshield.log_level"] != "debug" {
		t.Errorf("a node-local set: published %d, serialized %d, in force %v", len(f.published), f.serialized, f.store.Get().Parameters)
	}

	// A standby: the shared set is refused before anything (not even the
	// kernel firewall) changes; node-local ones still work.
	f.refuse = errors.New("this node is a standby: change the parameter set on the primary")
	before := f.store.Get()
	for _, set := range [][2]string{{"pgshield.bruteforce_max_failures", "9"}, {"pgshield.kernel_firewall", "on"}} {
		if _, err := f.c.setGatewayParam(mustParam(t, set[0]), set[1]); err == nil || !strings.Contains(err.Error(), "standby") {
			t.Errorf("set %s on a standby = %v; want the standby refusal", set[0], err)
		}
	}
	if f.store.Get() != before || len(f.firewall) != 0 || len(f.applied) != 2 {
		t.Fatalf("a refused set changed something: in force %v, firewall %d, applied %v", f.store.Get().Parameters, len(f.firewall), f.applied)
	}
	if _, err := f.c.setGatewayParam(mustParam(t, "pgshield.metrics_listen"), "127.0.0.1:9188"); err != nil || !slices.Equal(f.metrics, []string{"127.0.0.1:9188"}) {
		t.Errorf("node-local set on a standby = %v, metrics %v; want it done here", err, f.metrics)
	}
	f.refuse = nil

	// Received: the cluster's set replaces every shared parameter (one
	// it does not name goes back to its default), node-local ones stay.
	np := len(f.published)
	body := []byte(`{"parameters":{"pgshield.pool_mode":"transaction","pgshield.kernel_firewall":"on"}}`)
	if err := f.c.ApplyShared(body); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"pgshield.pool_mode": "transaction", "pgshield.kernel_firewall": "on",
		"pgshield.log_level": "debug", "pgshield.metrics_listen": "127.0.0.1:9188"}
	if got := f.store.Get().Parameters; !maps.Equal(got, want) {
		t.Errorf("in force after ApplyShared: %v; want %v", got, want)
	}
	if len(f.published) != np {
		t.Errorf("a received set was published again")
	}
	if len(f.firewall) != 1 || !f.firewall[0].KernelFirewall {
		t.Errorf("the kernel firewall got %d sets; want the received one (on)", len(f.firewall))
	}
	got := f.applied[3:]
	slices.Sort(got)
	if !slices.Equal(got, []string{"pgshield.bruteforce_max_failures", "pgshield.kernel_firewall", "pgshield.pool_mode"}) {
		t.Errorf("handed to the running parts: %v; want the three that changed", got)
	}
	if e := f.events[len(f.events)-1]; e.Type != "parameter.shared" {
		t.Errorf("last event %q; want parameter.shared", e.Type)
	}
	// The same set again changes nothing.
	na := len(f.applied)
	if err := f.c.ApplyShared(body); err != nil || len(f.applied) != na {
		t.Errorf("the same set again: %v, applied %v", err, f.applied[na:])
	}
	// A set whose kernel firewall fails here is refused whole.
	f.firewallOK = errors.New("nft: no such table")
	before = f.store.Get()
	if err := f.c.ApplyShared([]byte(`{"parameters":{"pgshield.pool_mode":"off"}}`)); err == nil {
		t.Error("a set whose kernel firewall failed was applied")
	}
	if f.store.Get() != before {
		t.Errorf("a refused set is in force: %v", f.store.Get().Parameters)
	}
}

// TestSharedParamsMalformed: an authentic body that is not a valid set is
// refused whole with an error naming why (never a panic), and nothing of
// it is in force: each value goes through the checks of `parameter set`.
func TestSharedParamsMalformed(t *testing.T) {
	f := newSharedFixture(t, map[string]string{"pgshield.pool_mode": "transaction"})
	before := f.store.Get()
	for _, c := range []struct{ body, want string }{
		{``, "not a parameter set"},
		{`not json`, "not a parameter set"},
		{`{"parameters":{"pgshield.pool_mode":"off"},"extra":1}`, "unknown field"},
		{`{"parameters":{"pgshield.pool_mode":"off"}} {}`, "data after it"},
		{`{"parameters":null}`, "no parameters"},
		{`{}`, "no parameters"},
		{`{"parameters":{"pgshield.pool_mode":1}}`, "not a parameter set"},
		{`{"parameters":{"pgshield.no_such":"1"}}`, "unrecognized parameter"},
		{`{"parameters":{"PGSHIELD.POOL_MODE":"off"}}`, "unrecognized parameter"},
		{`{"parameters":{"shared_buffers":"1GB"}}`, "unrecognized parameter"},
		{`{"parameters":{"pgshield.metrics_listen":"0.0.0.0:9187"}}`, "each node's own"},
		{`{"parameters":{"pgshield.log_level":"debug"}}`, "each node's own"},
		{`{"parameters":{"pgshield.pool_mode":"sometimes"}}`, "invalid value"},
		{`{"parameters":{"pgshield.bruteforce_max_failures":"-1"}}`, "invalid value"},
		{`{"parameters":{"pgshield.trusted_proxies":"0.0.0.0/0; DROP"}}`, "invalid value"},
		{`{"parameters":{"pgshield.allowed_extensions":"plpgsql, ../../evil"}}`, "invalid value"},
		{`{"parameters":{"ssl_min_protocol_version":"TLSv1.3","ssl_max_protocol_version":"TLSv1.2"}}`, "lower than"},
	} {
		err := f.c.ApplyShared([]byte(c.body))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ApplyShared(%s) = %v; want an error with %q", c.body, err, c.want)
		}
	}
	if f.store.Get() != before || len(f.applied) != 0 || len(f.firewall) != 0 || len(f.published) != 0 {
		t.Errorf("a refused body changed something: %v, applied %v", f.store.Get().Parameters, f.applied)
	}
}

// TestSharedParamsEncoded: what a primary publishes when the table has
// no row yet is its shared parameters, which another node takes as they
// are.
func TestSharedParamsEncoded(t *testing.T) {
	a := newSharedFixture(t, map[string]string{"pgshield.pool_size": "5", "pgshield.log_level": "warn", "require_secure_transport": "on"})
	b, err := a.c.Encoded()
	if err != nil {
		t.Fatal(err)
	}
	other := newSharedFixture(t, map[string]string{"pgshield.log_level": "debug"})
	if err := other.c.ApplyShared(b); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"pgshield.pool_size": "5", "require_secure_transport": "on", "pgshield.log_level": "debug"}
	if got := other.store.Get().Parameters; !maps.Equal(got, want) {
		t.Errorf("after the other node's set: %v; want %v", got, want)
	}
}

// TestNodeLocalParams: every name in nodeLocal is a parameter; those two
// are the only ones not shared.
func TestNodeLocalParams(t *testing.T) {
	var local []string
	for _, p := range config.GatewayParams() {
		if !Shared(p.Name) {
			local = append(local, p.Name)
		}
	}
	if !slices.Equal(local, []string{"pgshield.log_level", "pgshield.metrics_listen"}) {
		t.Errorf("node-local parameters %v", local)
	}
	if Shared("pgshield.no_such") {
		t.Error("an unknown name is shared")
	}
}

// A hand edit of a shared parameter on a cluster node is refused: it
// would make this node differ from the cluster without anyone knowing.
func TestCheckReloadCluster(t *testing.T) {
	if err := CheckReloadCluster(nil, []string{"pgshield.log_level"}); err != nil {
		t.Errorf("a node-local change: %v", err)
	}
	if err := CheckReloadCluster(nil, []string{"pgshield.log_level", "pgshield.pool_size"}); err == nil || !strings.Contains(err.Error(), "pgshield.pool_size") {
		t.Errorf("a shared change: %v; want it refused", err)
	}
}

func FuzzDecodeShared(f *testing.F) {
	f.Add([]byte(`{"parameters":{"pgshield.pool_mode":"transaction"}}`))
	f.Add([]byte(`{"parameters":{"ssl_min_protocol_version":"TLSv1.3"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ps, err := decodeShared(b)
		if err != nil {
			return
		}
		if _, err := config.ResolveParams(ps); err != nil {
			t.Fatalf("decoded %v does not resolve: %v", ps, err)
		}
		for n := range ps {
			if !Shared(n) {
				t.Fatalf("decoded a node-local or unknown %q", n)
			}
		}
	})
}

func mustParam(t *testing.T, name string) config.Param {
	t.Helper()
	p, ok := config.LookupParam(name)
	if !ok {
		t.Fatalf("no parameter %s", name)
	}
	return p
}
