package principals

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/ctl/conf"
)

// TestAdminList: the administrator list is saved before PostgreSQL is
// asked to take it; a list PostgreSQL did not take is undone when asked
// to, on disk and in force, and PostgreSQL gets the previous one again.
func TestAdminList(t *testing.T) {
	l := config.Layout{Root: t.TempDir()}
	store := conf.New(l, &config.Config{ServerID: "test", AdminPrincipals: []string{"alice"}})
	var applied [][]string
	var applyErr error
	c := New(Config{Conf: store, ApplyGuard: func(_ context.Context, cfg *config.Config) error {
		applied = append(applied, slices.Clone(cfg.AdminPrincipals))
		err := applyErr
		applyErr = nil // the undo succeeds
		return err
	}})
	ctx := context.Background()
	if changed, err := c.setAdminPrincipal(ctx, "bob", true, true); !changed || err != nil {
		t.Fatalf("add bob = %v, %v", changed, err)
	}
	if got := store.Get().AdminPrincipals; !slices.Equal(got, []string{"alice", "bob"}) {
		t.Errorf("list in force = %q; want alice, bob", got)
	}
	// Adding again changes nothing but checks PostgreSQL has it.
	if changed, err := c.setAdminPrincipal(ctx, "bob", true, true); changed || err != nil || len(applied) != 2 {
		t.Errorf("add bob again = %v, %v (%d applications); want unchanged, applied again", changed, err, len(applied))
	}
	applyErr = errors.New("PostgreSQL did not take it")
	changed, err := c.setAdminPrincipal(ctx, "carol", true, true)
	if changed || err == nil {
		t.Errorf("add carol with a failing apply = %v, %v; want unchanged and the error", changed, err)
	}
	if got := store.Get().AdminPrincipals; !slices.Equal(got, []string{"alice", "bob"}) {
		t.Errorf("list in force after the undo = %q; want alice, bob", got)
	}
	if last := applied[len(applied)-1]; !slices.Equal(last, []string{"alice", "bob"}) {
		t.Errorf("last list applied = %q; want the previous one again", last)
	}
	// Without undo (a deleted role) the new list stays.
	applyErr = errors.New("reload failed")
	if changed, err := c.setAdminPrincipal(ctx, "alice", false, false); !changed || err == nil || !slices.Equal(store.Get().AdminPrincipals, []string{"bob"}) {
		t.Errorf("remove alice without undo = %v, %v, list %q; want changed, the error, bob only", changed, err, store.Get().AdminPrincipals)
	}
}
