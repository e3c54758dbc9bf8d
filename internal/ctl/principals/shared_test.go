package principals

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/ctl/conf"
)

type adminFixture struct {
	c         *Controller
	store     *conf.Store
	published [][]string
	refuse    error
	applied   [][]string
	applyErr  error
	events    []audit.Event
}

func newAdminFixture(t *testing.T, list []string) *adminFixture {
	t.Helper()
	f := &adminFixture{}
	l := config.Layout{Root: t.TempDir()}
	f.store = conf.New(l, &config.Config{ServerID: "test", AdminUser: "pgadmin", AdminPrincipals: list})
	f.c = New(Config{Conf: f.store, Audit: func(e audit.Event) { f.events = append(f.events, e) },
		ApplyGuard: func(_ context.Context, cfg *config.Config) error {
			f.applied = append(f.applied, slices.Clone(cfg.AdminPrincipals))
			return f.applyErr
		}})
	f.c.Share(func(b []byte) error {
		if f.refuse != nil {
			return f.refuse
		}
		var body sharedBody
		if err := json.Unmarshal(b, &body); err != nil {
			t.Fatal(err)
		}
		f.published = append(f.published, body.AdminPrincipals)
		return nil
	}, func(fn func() error) error { return fn() })
	return f
}

// TestSharedAdminList: on a cluster node a change of the administrator
// list is published before it is saved or handed to pgshield_guard; a
// refused publication (a standby) changes it nowhere; a list PostgreSQL
// did not take is undone here and on the cluster; a list received from
// the cluster is saved and handed to pgshield_guard, never published
// again, and handed again (not marked done) while PostgreSQL does not
// take it.
func TestSharedAdminList(t *testing.T) {
	f := newAdminFixture(t, []string{"alice@contoso.com"})
	ctx := context.Background()
	if changed, err := f.c.setAdminPrincipal(ctx, "bob@contoso.com", true, true); !changed || err != nil {
		t.Fatalf("add bob = %v, %v", changed, err)
	}
	want := []string{"alice@contoso.com", "bob@contoso.com"}
	if len(f.published) != 1 || !slices.Equal(f.published[0], want) || !slices.Equal(f.store.Get().AdminPrincipals, want) {
		t.Fatalf("published %q, in force %q", f.published, f.store.Get().AdminPrincipals)
	}

	f.refuse = errors.New("this node is a standby: change the administrator list on the primary")
	if changed, err := f.c.setAdminPrincipal(ctx, "carol@contoso.com", true, true); changed || err == nil || !strings.Contains(err.Error(), "standby") {
		t.Errorf("add carol on a standby = %v, %v; want the standby refusal", changed, err)
	}
	if !slices.Equal(f.store.Get().AdminPrincipals, want) || len(f.applied) != 1 {
		t.Errorf("a refused change: in force %q, %d applications", f.store.Get().AdminPrincipals, len(f.applied))
	}
	f.refuse = nil

	// PostgreSQL does not take it: undone here, and the cluster gets the
	// previous list again.
	f.applyErr = errors.New("PostgreSQL did not take it")
	if changed, err := f.c.setAdminPrincipal(ctx, "carol@contoso.com", true, true); changed || err == nil {
		t.Errorf("add carol with a failing apply = %v, %v", changed, err)
	}
	f.applyErr = nil
	if n := len(f.published); n != 3 || !slices.Contains(f.published[1], "carol@contoso.com") || !slices.Equal(f.published[2], want) {
		t.Errorf("published %q; want carol's list, then the previous one again", f.published)
	}

	// Received: saved, handed to pgshield_guard, audited, not published.
	np := len(f.published)
	recv := []string{"bob@contoso.com", "Contoso DBAs", "dave@contoso.com"}
	body, _ := json.Marshal(sharedBody{AdminPrincipals: recv})
	if err := f.c.ApplyShared(body); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(f.store.Get().AdminPrincipals, recv) || !slices.Equal(f.applied[len(f.applied)-1], recv) || len(f.published) != np {
		t.Errorf("after ApplyShared: in force %q, last applied %q, published %d (want %d)", f.store.Get().AdminPrincipals, f.applied[len(f.applied)-1], len(f.published), np)
	}
	if e := f.events[len(f.events)-1]; e.Type != "principal.admin_shared" {
		t.Errorf("last event %q", e.Type)
	}
	// PostgreSQL does not take the next one: it stays saved (it is the
	// cluster's), the error makes the watch come back, and the same list
	// is handed to pgshield_guard again.
	f.applyErr = errors.New("reload failed")
	body2, _ := json.Marshal(sharedBody{AdminPrincipals: []string{"erin@contoso.com"}})
	if err := f.c.ApplyShared(body2); err == nil {
		t.Error("a list PostgreSQL did not take was reported applied")
	}
	f.applyErr = nil
	na := len(f.applied)
	if err := f.c.ApplyShared(body2); err != nil || len(f.applied) != na+1 || !slices.Equal(f.applied[na], []string{"erin@contoso.com"}) {
		t.Errorf("the same list again = %v, applied %q; want it handed to pgshield_guard again", err, f.applied[na:])
	}
	// An empty list is a list.
	if err := f.c.ApplyShared([]byte(`{"admin_principals":[]}`)); err != nil || len(f.store.Get().AdminPrincipals) != 0 {
		t.Errorf("an empty list: %v, in force %q", err, f.store.Get().AdminPrincipals)
	}
}

// TestSharedAdminListMalformed: an authentic body that is not a list of
// names creation would accept is refused whole with an error naming why
// (never a panic); nothing of it is saved or handed to pgshield_guard.
func TestSharedAdminListMalformed(t *testing.T) {
	f := newAdminFixture(t, []string{"alice@contoso.com"})
	for _, c := range []struct{ body, want string }{
		{``, "not an administrator list"},
		{`[]`, "not an administrator list"},
		{`{}`, "no admin_principals"},
		{`{"admin_principals":null}`, "no admin_principals"},
		{`{"admin_principals":["a@b.c"],"more":true}`, "unknown field"},
		{`{"admin_principals":["a@b.c"]}x`, "data after it"},
		{`{"admin_principals":[1]}`, "not an administrator list"},
		{`{"admin_principals":[""]}`, "invalid principal name"},
		{`{"admin_principals":["pg_monitor@x"]}`, "pg_ prefix"},
		{`{"admin_principals":["pgadmin"]}`, "invalid principal name"},            // the administrator: reserved
		{`{"admin_principals":["PUBLIC"]}`, "invalid principal name"},             // reserved
		{`{"admin_principals":["plainrole"]}`, "one SQL has to quote"},            // a password role's shape
		{`{"admin_principals":["a\u0000b@c"]}`, "invalid principal name"},         // a control character
		{`{"admin_principals":["` + strings.Repeat("x", 64) + `@c"]}`, "1 to 63"}, // too long
		{`{"admin_principals":["a@b.c","a@b.c"]}`, "listed twice"},
	} {
		err := f.c.ApplyShared([]byte(c.body))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ApplyShared(%s) = %v; want an error with %q", c.body, err, c.want)
		}
	}
	if !slices.Equal(f.store.Get().AdminPrincipals, []string{"alice@contoso.com"}) || len(f.applied) != 0 {
		t.Errorf("a refused body changed something: %q, %d applications", f.store.Get().AdminPrincipals, len(f.applied))
	}
}

// TestSharedAdminListEncoded: what a primary publishes when the table has
// no row yet is its list ([] for none), which another node takes.
func TestSharedAdminListEncoded(t *testing.T) {
	a := newAdminFixture(t, nil)
	b, err := a.c.Encoded()
	if err != nil || string(b) != `{"admin_principals":[]}` {
		t.Fatalf("Encoded() = %s, %v", b, err)
	}
	other := newAdminFixture(t, []string{"x@y.z"})
	if err := other.c.ApplyShared(b); err != nil || len(other.store.Get().AdminPrincipals) != 0 {
		t.Errorf("after an empty list: %v, %q", err, other.store.Get().AdminPrincipals)
	}
}
