package pgbackend

import (
	"context"
	"errors"
	"testing"
)

func TestNewCatalogNeedsRoleAndEnsure(t *testing.T) {
	ensure := func(context.Context) error { return nil }
	for _, cfg := range []CatalogConfig{{Ensure: ensure}, {Role: "pgshield_auth"}} {
		if c, err := NewCatalog(context.Background(), cfg); err == nil {
			c.Close()
			t.Errorf("NewCatalog(role %q, ensure %v) error = nil; want one", cfg.Role, cfg.Ensure != nil)
		}
	}
}

// A lookup never runs before pgshield's catalog has been ensured once; a
// failed Ensure is tried again at the next lookup.
func TestLookupRoleEnsuresFirst(t *testing.T) {
	errNotYet := errors.New("not yet")
	calls := 0
	c, err := NewCatalog(context.Background(), CatalogConfig{SocketDir: t.TempDir(), Port: 5432, Role: "pgshield_auth",
		Ensure: func(context.Context) error { calls++; return errNotYet }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 1; i <= 2; i++ {
		if _, err := c.LookupRole(context.Background(), "alice"); !errors.Is(err, errNotYet) {
			t.Errorf("LookupRole() error = %v; want %v", err, errNotYet)
		}
		if calls != i {
			t.Errorf("after %d lookups Ensure ran %d times; want %d", i, calls, i)
		}
	}
}

// A name that is not UTF-8 names no role in a UTF8 cluster: an unknown
// role (the mock exchange, then 28P01), never a query PostgreSQL refuses
// and the client reads as "not available".
func TestLookupRoleNotUTF8(t *testing.T) {
	c, err := NewCatalog(context.Background(), CatalogConfig{SocketDir: t.TempDir(), Port: 5432, Role: "pgshield_auth",
		Ensure: func(context.Context) error { t.Error("Ensure called for a name that is not UTF-8"); return nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, name := range []string{"\xff\xff", "é\xc3", string([]byte{0xc0, 0x80})} {
		r, err := c.LookupRole(context.Background(), name)
		if err != nil || r.Exists {
			t.Errorf("LookupRole(%q) = %+v, %v; want an unknown role, no error", name, r, err)
		}
	}
}
