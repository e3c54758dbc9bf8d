package keys

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/ctl/conf"
	"github.com/pgshield/pgshield/internal/ctl/volume"
	"github.com/pgshield/pgshield/internal/keys"
)

// fakeVolume answers from its fields and records its calls.
type fakeVolume struct {
	mu        sync.Mutex
	calls     []string
	openErr   error
	checkErr  error
	rewrapErr error
	lockErr   error
	cfg       *config.Config
}

func (v *fakeVolume) record(c string) { v.mu.Lock(); v.calls = append(v.calls, c); v.mu.Unlock() }
func (v *fakeVolume) Calls() []string { v.mu.Lock(); defer v.mu.Unlock(); return slices.Clone(v.calls) }
func (v *fakeVolume) Open(context.Context) error {
	v.record("Open")
	return v.openErr
}
func (v *fakeVolume) Lock() error { v.record("Lock"); return v.lockErr }
func (v *fakeVolume) Check(context.Context) error {
	v.record("Check")
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.checkErr
}
func (v *fakeVolume) Rewrap(_ context.Context, u string) error {
	v.record("Rewrap " + u)
	return v.rewrapErr
}
func (v *fakeVolume) SetConfig(c *config.Config)             { v.cfg = c }
func (v *fakeVolume) Description() string                    { return "fake" }
func (v *fakeVolume) Usage() (total, free uint64, err error) { return 100, 40, nil }

// fakeServer records what the keys ask of the rest of the server.
type fakeServer struct {
	calls []string
	last  []audit.Event
}

func (s *fakeServer) Quiesce(msg string, last *audit.Event) {
	s.calls = append(s.calls, "Quiesce: "+msg)
	if last != nil {
		s.last = append(s.last, *last)
	}
}
func (s *fakeServer) Resume(context.Context) error { s.calls = append(s.calls, "Resume"); return nil }

type fakeMetrics struct{ transitions []string }

func (m *fakeMetrics) KeyState(from, to string, _ time.Time) {
	m.transitions = append(m.transitions, from+"->"+to)
}
func (m *fakeMetrics) Revalidation(string) {}

type harness struct {
	*Controller
	vol     *fakeVolume
	server  *fakeServer
	metrics *fakeMetrics
	store   *conf.Store
	now     time.Time
	events  []audit.Event
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	l := config.Layout{Root: t.TempDir()}
	h := &harness{vol: &fakeVolume{}, server: &fakeServer{}, metrics: &fakeMetrics{},
		store: conf.New(l, &config.Config{ServerID: "test", KeyURI: "awskms://old", Parameters: map[string]string{}}),
		now:   time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}
	h.Controller = New(Config{Conf: h.store, Volume: h.vol, Metrics: h.metrics, Now: func() time.Time { return h.now },
		Audit: func(e audit.Event) { h.events = append(h.events, e) }})
	h.Bind(h.server)
	return h
}

func (h *harness) open(t *testing.T) {
	t.Helper()
	if open, err := h.Open(context.Background()); !open || err != nil {
		t.Fatalf("Open() = %v, %v; want open", open, err)
	}
}

func TestOpen(t *testing.T) {
	h := newHarness(t)
	h.vol.openErr = &volume.KeyError{Kind: keys.KindDenied, Err: errors.New("key disabled")}
	open, err := h.Open(context.Background())
	if open || err != nil || h.State() != apitype.KeyInaccessible {
		t.Errorf("Open() with a key error = %v, %v, state %s; want not open, no error, Inaccessible", open, err, h.State())
	}
	if err := h.SessionsAllowed(); err == nil || !strings.Contains(err.Error(), "inaccessible") {
		t.Errorf("SessionsAllowed() = %v; want inaccessible", err)
	}
	h = newHarness(t)
	h.vol.openErr = errors.New("no loop device")
	if _, err := h.Open(context.Background()); err == nil {
		t.Errorf("Open() with a volume error = nil; want it: the daemon does not start")
	}
}

// TestLockUnlock: Available -> Locked -> Available, each step through the
// server in order, recorded.
func TestLockUnlock(t *testing.T) {
	h := newHarness(t)
	h.open(t)
	ki, err := h.Lock()
	if err != nil || ki.State != apitype.KeyLocked || ki.TotalBytes != 0 {
		t.Fatalf("Lock() = %+v, %v; want Locked without usage", ki, err)
	}
	if err := h.SessionsAllowed(); err == nil || !strings.Contains(err.Error(), "key unlock") {
		t.Errorf("SessionsAllowed() while Locked = %v; want a refusal naming key unlock", err)
	}
	if want := []string{"Quiesce: terminating connection because the server is being locked"}; !slices.Equal(h.server.calls, want) {
		t.Errorf("server calls = %q; want %q", h.server.calls, want)
	}
	if len(h.server.last) != 1 || h.server.last[0].Type != "key.state" || h.server.last[0].Fields["state"] != apitype.KeyLocked {
		t.Errorf("event before the audit log closed = %+v; want key.state Locked", h.server.last)
	}
	if !slices.Contains(h.vol.Calls(), "Lock") {
		t.Errorf("volume calls = %v; want Lock", h.vol.Calls())
	}
	// Locking again changes nothing.
	if _, err := h.Lock(); err != nil || len(h.server.calls) != 1 {
		t.Errorf("second Lock() = %v, server calls %q; want no new quiesce", err, h.server.calls)
	}
	// Revalidation leaves the operator's lock alone.
	h.Revalidate(context.Background())
	if slices.Contains(h.vol.Calls(), "Check") || h.State() != apitype.KeyLocked {
		t.Errorf("revalidation while Locked checked the key or changed the state (%s)", h.State())
	}
	// An unlock whose key fails stays Locked and says unavailable.
	h.vol.openErr = &volume.KeyError{Kind: keys.KindDenied, Err: errors.New("access denied")}
	var ae *apitype.Error
	if _, err := h.Unlock(); !errors.As(err, &ae) || ae.Code != apitype.CodeUnavailable || h.State() != apitype.KeyLocked {
		t.Errorf("Unlock() with a key error = %v, state %s; want %s and Locked", err, h.State(), apitype.CodeUnavailable)
	}
	h.vol.openErr = nil
	ki, err = h.Unlock()
	if err != nil || ki.State != apitype.KeyAvailable || ki.TotalBytes != 100 || h.SessionsAllowed() != nil {
		t.Fatalf("Unlock() = %+v, %v; want Available with usage", ki, err)
	}
	if h.server.calls[len(h.server.calls)-1] != "Resume" {
		t.Errorf("server calls = %q; want Resume last", h.server.calls)
	}
	if want := []string{"->available", "available->locked", "locked->available"}; !slices.Equal(lower(h.metrics.transitions), want) {
		t.Errorf("transitions = %q; want %q", h.metrics.transitions, want)
	}
}

func lower(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = strings.ToLower(s)
	}
	return out
}

// TestRevalidateRevoked: a denial makes the server Inaccessible at once; a
// key that works again brings it back.
func TestRevalidateRevoked(t *testing.T) {
	h := newHarness(t)
	h.open(t)
	h.vol.checkErr = fmt.Errorf("unwrap: %w", keys.ErrCorrupt)
	ki := h.Revalidate(context.Background())
	if ki.State != apitype.KeyInaccessible || !strings.Contains(ki.Reason, "corrupt") || ki.GraceSince != nil {
		t.Fatalf("Revalidate() after a denial = %+v; want Inaccessible at once, no grace", ki)
	}
	if want := "Quiesce: terminating connection because the server's customer-managed key is unavailable"; len(h.server.calls) != 1 || h.server.calls[0] != want {
		t.Errorf("server calls = %q; want %q", h.server.calls, want)
	}
	h.vol.checkErr = nil
	ki = h.Revalidate(context.Background())
	if ki.State != apitype.KeyAvailable || ki.LastValidated == nil || ki.LastError != "" {
		t.Errorf("Revalidate() with the key back = %+v; want Available, validated", ki)
	}
}

// TestRevalidateChanged: Changed hears of each move revalidation makes
// (a cluster node tells the others), and of nothing else.
func TestRevalidateChanged(t *testing.T) {
	h := newHarness(t)
	var changed []string
	h.c.Changed = func(s string) { changed = append(changed, s) }
	h.open(t)
	h.Revalidate(context.Background()) // Available, still
	h.vol.checkErr = errors.New("dial tcp: connection refused")
	h.Revalidate(context.Background()) // grace: Available, still
	h.vol.checkErr = fmt.Errorf("unwrap: %w", keys.ErrCorrupt)
	h.Revalidate(context.Background())
	h.Revalidate(context.Background()) // Inaccessible, still
	h.vol.checkErr = nil
	h.Revalidate(context.Background())
	if _, err := h.Lock(); err != nil {
		t.Fatal(err)
	}
	h.Revalidate(context.Background()) // the operator's lock stays
	if want := []string{apitype.KeyInaccessible, apitype.KeyAvailable}; !slices.Equal(changed, want) {
		t.Errorf("Changed calls = %q; want %q", changed, want)
	}
}

// TestRevalidateGrace: a transient failure starts a grace period; the
// server stays Available until it runs out.
func TestRevalidateGrace(t *testing.T) {
	h := newHarness(t)
	h.open(t)
	grace := h.store.Params().KeyGrace
	if grace <= time.Second {
		t.Fatalf("default grace %v is too short for this test", grace)
	}
	h.vol.checkErr = errors.New("dial tcp: connection refused")
	ki := h.Revalidate(context.Background())
	if ki.State != apitype.KeyAvailable || ki.GraceSince == nil || !ki.GraceSince.Equal(h.now) {
		t.Fatalf("Revalidate() after a transient failure = %+v; want Available, grace since now", ki)
	}
	if got := h.GraceRemaining(); got != grace.Seconds() {
		t.Errorf("GraceRemaining() = %v; want %v", got, grace.Seconds())
	}
	h.now = h.now.Add(grace - time.Second)
	if ki = h.Revalidate(context.Background()); ki.State != apitype.KeyAvailable {
		t.Errorf("state within the grace period = %s; want Available", ki.State)
	}
	h.now = h.now.Add(time.Second)
	if ki = h.Revalidate(context.Background()); ki.State != apitype.KeyInaccessible || !strings.Contains(ki.Reason, "unreachable for longer than") {
		t.Errorf("state after the grace period = %+v; want Inaccessible", ki)
	}
	h.vol.checkErr = nil
	if ki = h.Revalidate(context.Background()); ki.State != apitype.KeyAvailable || ki.GraceSince != nil || h.GraceRemaining() != 0 {
		t.Errorf("state with the KMS back = %+v; want Available, grace over", ki)
	}
}

// TestChange: the data key and the backup passphrase are re-wrapped, and
// only then is the new URI saved and put in force.
func TestChange(t *testing.T) {
	h := newHarness(t)
	h.open(t)
	var backupArgs []string
	saved := false
	h.c.RewrapBackupKey = func(_ context.Context, oldURI, newURI string) (func() error, error) {
		backupArgs = []string{oldURI, newURI}
		return func() error { saved = true; return nil }, nil
	}
	var ae *apitype.Error
	if _, err := h.Change(context.Background(), "", false); !errors.As(err, &ae) || ae.Code != apitype.CodeInvalid {
		t.Errorf("Change(\"\", set) error = %v; want invalid", err)
	}
	h.vol.rewrapErr = errors.New("access denied to the new key")
	if _, err := h.Change(context.Background(), "awskms://new", false); err == nil || h.store.Get().KeyURI != "awskms://old" || saved {
		t.Errorf("Change() with a failing rewrap = %v, URI %s, backup saved %v; want an error and nothing changed", err, h.store.Get().KeyURI, saved)
	}
	h.vol.rewrapErr = nil
	if _, err := h.Change(context.Background(), "awskms://new", false); err != nil {
		t.Fatal(err)
	}
	if h.store.Get().KeyURI != "awskms://new" || h.vol.cfg == nil || h.vol.cfg.KeyURI != "awskms://new" || !saved ||
		!slices.Equal(backupArgs, []string{"awskms://old", "awskms://new"}) {
		t.Errorf("after Change(): URI %s, volume's %+v, backup saved %v with %q", h.store.Get().KeyURI, h.vol.cfg, saved, backupArgs)
	}
	if b, err := os.ReadFile(h.store.Layout().ConfigFile()); err != nil || !strings.Contains(string(b), "awskms://new") {
		t.Errorf("saved configuration = %s, %v; want the new URI", b, err)
	}
	// Rotate keeps the URI.
	if _, err := h.Change(context.Background(), "", true); err != nil || !slices.Contains(h.vol.Calls(), "Rewrap awskms://new") {
		t.Errorf("rotate = %v, calls %v; want a rewrap under the same URI", err, h.vol.Calls())
	}
	if _, err := h.Lock(); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Change(context.Background(), "awskms://other", false); !errors.As(err, &ae) || ae.Code != apitype.CodeUnavailable {
		t.Errorf("Change() while Locked = %v; want unavailable", err)
	}
}
