package threat

import (
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
	guard "github.com/pgshield/pgshield/internal/threat"
)

func newController(t *testing.T, root string) (*Controller, *[]audit.Event) {
	t.Helper()
	p, err := config.ResolveParams(nil)
	if err != nil {
		t.Fatal(err)
	}
	var evs []audit.Event
	c := New(Config{Layout: config.Layout{Root: root}, Log: slog.New(slog.DiscardHandler),
		Audit: func(e audit.Event) { evs = append(evs, e) }, Params: p,
		Policy: func(config.Params) guard.Config { return guard.DefaultConfig() }})
	return c, &evs
}

func TestBanListDeleteAndRestart(t *testing.T) {
	root := t.TempDir()
	c, evs := newController(t, root)
	src := netip.MustParseAddr("2001:db8:1:2::5")
	for i := 0; i < 5; i++ {
		c.Guard().LoginFailed(src, "x")
	}
	if bs := c.Bans(); len(bs) != 1 || bs[0].Source != "2001:db8:1:2::/64" {
		t.Fatalf("Bans() = %+v; want 2001:db8:1:2::/64", bs)
	}
	if err := c.Save(); err != nil {
		t.Fatal(err)
	}
	// A restart keeps it.
	c2, _ := newController(t, root)
	if bs := c2.Bans(); len(bs) != 1 {
		t.Fatalf("Bans() after a restart = %+v; want the ban", bs)
	}
	for _, bad := range []string{"not-an-address", "2001:db8::/48", "10.0.0.0/8", "fe80::1%eth0"} {
		if _, err := c2.Unban(bad); !isCode(err, apitype.CodeInvalid) {
			t.Errorf("Unban(%q) = %v; want invalid", bad, err)
		}
	}
	if _, err := c2.Unban("192.0.2.1"); !isCode(err, apitype.CodeNotFound) {
		t.Errorf("Unban(not banned) = %v; want not_found", err)
	}
	if b, err := c2.Unban("2001:db8:1:2:ffff::1"); err != nil || b.Source != "2001:db8:1:2::/64" {
		t.Fatalf("Unban(an address of the /64) = %+v, %v; want the ban", b, err)
	}
	c3, _ := newController(t, root)
	if bs := c3.Bans(); len(bs) != 0 {
		t.Errorf("Bans() after delete and restart = %+v; want none", bs)
	}
	_ = evs
}

func TestCorruptStateReported(t *testing.T) {
	root := t.TempDir()
	path := StateFile(config.Layout{Root: root})
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(`{"version":1,"bans":[{"source":"0.0.0.0/0"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	c, evs := newController(t, root)
	if len(*evs) != 1 || (*evs)[0].Type != "threat.state" {
		t.Errorf("audit after a corrupt state file = %+v; want one threat.state failure", *evs)
	}
	if bs := c.Bans(); len(bs) != 0 {
		t.Errorf("Bans() = %+v; want none", bs)
	}
}

func isCode(err error, code string) bool {
	ce, ok := clienterr.As(err)
	return ok && ce.Code == code
}
