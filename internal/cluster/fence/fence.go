// Package fence tells a high-availability node's gateway whether it may
// still relay read-write sessions to its local PostgreSQL: it confirms,
// with linearizable etcd reads, that Patroni's leader key names this node,
// and fires a callback when read-write sessions must end, strictly before
// any replica can be promoted (issue #18, "fencing in layers").
//
// Why this bound is safe. A replica's Patroni promotes only after the
// leader key is gone, and the key goes when its lease expires: ttl after
// the leader's Patroni last renewed it (it renews every loop_wait). A
// confirming round is a linearizable read of the key (it names this node,
// with lease L), then the time L has left, r, from the etcd leader's
// lessor. Both answers were true at some instant after the round started,
// so L cannot expire before start + r. The fence gives read-write
// sessions until
//
//	start + min(ttl - loop_wait, r) - margin
//
// ttl - loop_wait is what the issue prescribes (the key was renewed at
// most loop_wait before it was read, if Patroni is alive); r covers a
// Patroni that is not (frozen, SIGSTOP), whose key is read as ours until
// the instant it expires. margin covers the clock rates of this machine
// and etcd's leader, an etcd leader change in between (which only
// lengthens leases), and the time it takes to end the sessions.
//
// Why the round's start and not its end: the answers hold at an instant
// somewhere between sending the request and receiving the reply, and we
// cannot tell where. Counting from the end would credit a slow reply's
// whole delay as time the key was seen, which it was not; a reply delayed
// by more than the margin would push the deadline past the lease's
// expiry. Counting from the start can only fence early.
//
// Why linearizable: a member cut off from the majority still answers
// serializable reads from its stale copy (it would go on saying "leader"
// after the majority has moved on); a linearizable read needs the
// member to confirm its state with a quorum first, which a partitioned
// member cannot do, so its answer never arrives and never confirms.
package fence

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// State is what the last round said.
type State int

const (
	// Unconfirmed: no round has confirmed leadership yet, or the last one
	// could not read from any member with quorum. Read-write sessions go
	// on until the deadline a previous confirmation set.
	Unconfirmed State = iota
	// Confirmed: the last round read the leader key, linearizably, naming
	// this node with time left on its lease.
	Confirmed
	// NotLeader: a member with quorum said the leader key is missing,
	// names another node, or its lease has expired. Read-write sessions
	// end at once.
	NotLeader
)

func (s State) String() string {
	switch s {
	case Confirmed:
		return "confirmed"
	case NotLeader:
		return "not-leader"
	default:
		return "unconfirmed"
	}
}

// Clock is the time source; tests inject a fake one.
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) Timer
}

// Timer is the part of *time.Timer the fence uses.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
}

type realClock struct{}

func (realClock) Now() time.Time                 { return time.Now() }
func (realClock) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

type realTimer struct{ t *time.Timer }

func (t realTimer) C() <-chan time.Time { return t.t.C }
func (t realTimer) Stop() bool          { return t.t.Stop() }

// Config is what a Fence needs.
type Config struct {
	// Endpoints are the members' client URLs (https://host:2379), tried
	// in turn; put the local member first.
	Endpoints []string
	// TLS carries the client certificate and the client CA (RootCAs).
	TLS *tls.Config
	// Namespace and Scope are Patroni's: the leader key is
	// /<namespace>/<scope>/leader. Node is this node's Patroni name.
	Namespace, Scope, Node string
	// TTL and LoopWait are Patroni's; Margin is subtracted on top (see
	// the package comment). TTL - LoopWait - Margin must be positive.
	TTL, LoopWait, Margin time.Duration
	// Interval is the pause between rounds (default: a quarter of the
	// budget, at most 1 s).
	Interval time.Duration
	// CallTimeout bounds each HTTP call (default: a quarter of the
	// budget, at most 2 s). A round makes two calls to a member, so
	// 2*CallTimeout must be shorter than the budget.
	CallTimeout time.Duration
	// OnFence is called, from Run's goroutine, when read-write sessions
	// must end: the budget ran out, or a member with quorum said this
	// node does not lead. It must not block for long.
	OnFence func(Event)
	// OnConfirm is called, from Run's goroutine, when read-write sessions
	// may start again after a fence (or for the first time).
	OnConfirm func()
	Clock     Clock
	Log       *slog.Logger
	// DialContext, when set, replaces the dialer (tests dial from inside
	// a network namespace with it).
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Event says why a fence fired.
type Event struct {
	At     time.Time
	State  State
	Reason string
	// LastConfirmed is the start of the last confirming round (zero if
	// none).
	LastConfirmed time.Time
}

// Status is a snapshot of the fence.
type Status struct {
	State State
	// MayWrite: read-write sessions may run now.
	MayWrite bool
	// Deadline is when they must have ended, absent a new confirmation.
	Deadline      time.Time
	LastConfirmed time.Time
	LastError     string
}

// Fence is the controller; Run drives it.
type Fence struct {
	cfg    Config
	key    string
	budget time.Duration
	client *http.Client

	mu struct {
		sync.Mutex
		state         State
		fenced        bool
		deadline      time.Time
		lastConfirmed time.Time
		lastErr       string
		next          int // endpoint to try first
		watchers      map[int]func()
		nextWatcher   int
	}

	// testAfterApply, if set, runs after each round's result is applied.
	testAfterApply func(Status)
}

// New checks cfg, fills in defaults and returns a fence that starts
// fenced (nothing is confirmed yet).
func New(cfg Config) (*Fence, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("fence: no etcd endpoint")
	}
	for _, ep := range cfg.Endpoints {
		u, err := url.Parse(ep)
		if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return nil, fmt.Errorf("fence: endpoint %q: want https://host:port", ep)
		}
	}
	if cfg.TLS == nil || len(cfg.TLS.Certificates) == 0 && cfg.TLS.GetClientCertificate == nil {
		return nil, errors.New("fence: a client certificate is needed")
	}
	if cfg.Scope == "" || cfg.Node == "" || strings.Contains(cfg.Scope, "/") {
		return nil, errors.New("fence: scope and node are needed")
	}
	budget := cfg.TTL - cfg.LoopWait - cfg.Margin
	if cfg.TTL <= 0 || cfg.LoopWait <= 0 || cfg.Margin <= 0 || budget <= 0 {
		return nil, fmt.Errorf("fence: ttl %v - loop_wait %v - margin %v leaves no time", cfg.TTL, cfg.LoopWait, cfg.Margin)
	}
	if cfg.CallTimeout == 0 {
		cfg.CallTimeout = min(budget/4, 2*time.Second)
	}
	if 2*cfg.CallTimeout >= budget {
		return nil, fmt.Errorf("fence: call timeout %v is too long for a budget of %v", cfg.CallTimeout, budget)
	}
	if cfg.Interval == 0 {
		cfg.Interval = min(budget/4, time.Second)
	}
	if cfg.Interval <= 0 {
		return nil, errors.New("fence: interval must be positive")
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	ns := strings.Trim(cfg.Namespace, "/")
	key := "/" + cfg.Scope + "/leader"
	if ns != "" {
		key = "/" + ns + key
	}
	tc := cfg.TLS.Clone()
	if tc.MinVersion < tls.VersionTLS12 {
		tc.MinVersion = tls.VersionTLS12
	}
	tr := &http.Transport{
		// Never a proxy from the environment: the answer must come from
		// the member itself.
		Proxy:               nil,
		TLSClientConfig:     tc,
		TLSHandshakeTimeout: cfg.CallTimeout,
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
	}
	if cfg.DialContext != nil {
		tr.DialContext = cfg.DialContext
	} else {
		tr.DialContext = (&net.Dialer{Timeout: cfg.CallTimeout}).DialContext
	}
	f := &Fence{cfg: cfg, key: key, budget: budget, client: &http.Client{Transport: tr, Timeout: cfg.CallTimeout,
		// A member does not redirect; following one could end elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	f.mu.fenced = true
	return f, nil
}

// Key is the leader key the fence reads.
func (f *Fence) Key() string { return f.key }

// Budget is ttl - loop_wait - margin.
func (f *Fence) Budget() time.Duration { return f.budget }

// Status reports the fence's state now.
func (f *Fence) Status() Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.statusLocked(f.cfg.Clock.Now())
}

// MayWrite reports whether read-write sessions may run now. It is false
// from the deadline on even if Run has not noticed yet.
func (f *Fence) MayWrite() bool { return f.Status().MayWrite }

func (f *Fence) statusLocked(now time.Time) Status {
	return Status{
		State:         f.mu.state,
		MayWrite:      !f.mu.fenced && now.Before(f.mu.deadline),
		Deadline:      f.mu.deadline,
		LastConfirmed: f.mu.lastConfirmed,
		LastError:     f.mu.lastErr,
	}
}

// result is one round's outcome.
type result struct {
	state State
	start time.Time     // when the confirming read was sent
	left  time.Duration // the lease's time left (Confirmed only)
	err   error
}

// Run confirms leadership until ctx ends. It returns ctx's error.
func (f *Fence) Run(ctx context.Context) error {
	// Last to run: no connection outlives Run.
	defer f.client.CloseIdleConnections()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make(chan result)
	var wg sync.WaitGroup
	wg.Add(1)
	// Rounds run apart from the deadline: a round stuck in its calls
	// never delays the fence.
	go func() {
		defer wg.Done()
		for {
			r := f.round(ctx)
			// The pause starts before the result is handed over, so that
			// whoever sees the result (a test on a fake clock) finds the
			// timer already set.
			t := f.cfg.Clock.NewTimer(f.cfg.Interval)
			select {
			case results <- r:
			case <-ctx.Done():
				t.Stop()
				return
			}
			select {
			case <-t.C():
			case <-ctx.Done():
				t.Stop()
				return
			}
		}
	}()
	defer wg.Wait()

	var deadline Timer
	stop := func() {
		if deadline != nil {
			deadline.Stop()
			deadline = nil
		}
	}
	defer stop()
	for {
		var dc <-chan time.Time
		if deadline != nil {
			dc = deadline.C()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case r := <-results:
			f.apply(r)
			stop()
			st := f.Status()
			if st.MayWrite {
				deadline = f.cfg.Clock.NewTimer(st.Deadline.Sub(f.cfg.Clock.Now()))
			}
			if f.testAfterApply != nil {
				f.testAfterApply(st)
			}
		case <-dc:
			deadline = nil
			now := f.cfg.Clock.Now()
			notify := func() {}
			f.mu.Lock()
			if !f.mu.deadline.After(now) {
				notify = f.fenceLocked(now, f.deadlineReasonLocked())
			} else {
				// Woken early (a timer is not exact): wait the rest.
				deadline = f.cfg.Clock.NewTimer(f.mu.deadline.Sub(now))
			}
			f.mu.Unlock()
			notify()
		}
	}
}

// Watch calls onChange, from Run's goroutine, after every change of
// MayWrite (a fence or a confirmation, each with its Config callback),
// until stop is called. It is the gateway's Leadership.Watch: the gateway
// reads MayWrite again on each call, and refuses logins on MayWrite alone,
// which also covers a deadline that passes between two rounds.
func (f *Fence) Watch(onChange func()) (stop func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.mu.watchers == nil {
		f.mu.watchers = map[int]func(){}
	}
	id := f.mu.nextWatcher
	f.mu.nextWatcher++
	f.mu.watchers[id] = onChange
	return func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		delete(f.mu.watchers, id)
	}
}

// watchersLocked is a copy of the watchers, to call after unlocking.
func (f *Fence) watchersLocked() []func() {
	out := make([]func(), 0, len(f.mu.watchers))
	for _, w := range f.mu.watchers {
		out = append(out, w)
	}
	return out
}

// apply takes a round's result into the state and fires the callbacks
// (outside the lock: they may call Status).
func (f *Fence) apply(r result) {
	now := f.cfg.Clock.Now()
	f.mu.Lock()
	notify := f.applyLocked(now, r)
	f.mu.Unlock()
	notify()
}

func (f *Fence) applyLocked(now time.Time, r result) (notify func()) {
	f.mu.state = r.state
	f.mu.lastErr = ""
	if r.err != nil {
		f.mu.lastErr = r.err.Error()
	}
	switch r.state {
	case Confirmed:
		d := r.start.Add(min(f.cfg.TTL-f.cfg.LoopWait, r.left) - f.cfg.Margin)
		f.mu.lastConfirmed = r.start
		// Every confirmation is a sound bound on its own: keep the latest.
		if d.After(f.mu.deadline) {
			f.mu.deadline = d
		}
		if !now.Before(f.mu.deadline) {
			return f.fenceLocked(now, "the lease is too close to expiry")
		}
		if f.mu.fenced {
			f.mu.fenced = false
			f.cfg.Log.Info("Leadership confirmed; read-write sessions allowed.", "key", f.key, "until", f.mu.deadline)
			ws := f.watchersLocked()
			return func() {
				if f.cfg.OnConfirm != nil {
					f.cfg.OnConfirm()
				}
				for _, w := range ws {
					w()
				}
			}
		}
	case NotLeader:
		f.mu.deadline = time.Time{}
		return f.fenceLocked(now, r.err.Error())
	default:
		f.cfg.Log.Warn("Leadership not confirmed.", "key", f.key, "error", r.err, "deadline", f.mu.deadline)
		if !now.Before(f.mu.deadline) {
			return f.fenceLocked(now, "leadership unconfirmed for the whole budget")
		}
	}
	return func() {}
}

// deadlineReasonLocked says why the deadline ran out: reads failing, or
// reads that still confirm a lease nobody renews (a frozen Patroni).
func (f *Fence) deadlineReasonLocked() string {
	if f.mu.state == Confirmed {
		return "the leader key's lease is running out: its holder stopped renewing it"
	}
	return "leadership unconfirmed for the whole budget"
}

// fenceLocked fences (once) and returns the callback to run after
// unlocking.
func (f *Fence) fenceLocked(now time.Time, reason string) (notify func()) {
	if f.mu.fenced {
		return func() {}
	}
	f.mu.fenced = true
	ev := Event{At: now, State: f.mu.state, Reason: reason, LastConfirmed: f.mu.lastConfirmed}
	f.cfg.Log.Warn("Fencing: read-write sessions must end.", "key", f.key, "state", ev.State.String(), "reason", reason,
		"since_confirmed", now.Sub(f.mu.lastConfirmed))
	ws := f.watchersLocked()
	return func() {
		if f.cfg.OnFence != nil {
			f.cfg.OnFence(ev)
		}
		for _, w := range ws {
			w()
		}
	}
}

// errNotLeader wraps the definitive answers.
var errNotLeader = errors.New("not the leader")

// round tries the endpoints in turn, from the last one that answered,
// until one gives a definitive answer.
func (f *Fence) round(ctx context.Context) result {
	f.mu.Lock()
	first := f.mu.next
	f.mu.Unlock()
	var errs []error
	n := len(f.cfg.Endpoints)
	for i := range n {
		idx := (first + i) % n
		ep := f.cfg.Endpoints[idx]
		r := f.confirmAt(ctx, ep)
		if r.state != Unconfirmed {
			f.mu.Lock()
			f.mu.next = idx
			f.mu.Unlock()
			return r
		}
		errs = append(errs, fmt.Errorf("%s: %w", ep, r.err))
		if ctx.Err() != nil {
			break
		}
	}
	return result{state: Unconfirmed, err: errors.Join(errs...)}
}

// confirmAt makes one round against one member.
func (f *Fence) confirmAt(ctx context.Context, ep string) result {
	start := f.cfg.Clock.Now()
	a, err := f.readLeader(ctx, ep, false)
	if err != nil {
		return result{state: Unconfirmed, err: err}
	}
	switch {
	case !a.Found:
		return result{state: NotLeader, err: fmt.Errorf("%w: the leader key is missing", errNotLeader)}
	case a.Value != f.cfg.Node:
		return result{state: NotLeader, err: fmt.Errorf("%w: the leader key names %q", errNotLeader, a.Value)}
	case a.Lease == 0:
		// Patroni always attaches its lease; a key without one would
		// never expire, so nothing bounds when a replica could take over.
		return result{state: Unconfirmed, err: errors.New("the leader key has no lease")}
	}
	left, err := f.leaseTTL(ctx, ep, a.Lease)
	if err != nil {
		return result{state: Unconfirmed, err: err}
	}
	if left <= 0 {
		return result{state: NotLeader, err: fmt.Errorf("%w: the leader key's lease has expired", errNotLeader)}
	}
	return result{state: Confirmed, start: start, left: time.Duration(left) * time.Second}
}

// ReadLeader reads the leader key at one member, linearizably unless
// serializable is set, and returns its value ("" when missing). It is
// for diagnosis (and the tests that show the difference); the fence
// itself reads linearizably only.
func (f *Fence) ReadLeader(ctx context.Context, endpoint string, serializable bool) (string, error) {
	a, err := f.readLeader(ctx, endpoint, serializable)
	return a.Value, err
}

func (f *Fence) readLeader(ctx context.Context, ep string, serializable bool) (rangeAnswer, error) {
	body, err := f.post(ctx, ep, "/v3/kv/range", rangeRequest{Key: []byte(f.key), Serializable: serializable})
	if err != nil {
		return rangeAnswer{}, err
	}
	return parseRange(body, f.key)
}

func (f *Fence) leaseTTL(ctx context.Context, ep string, id int64) (int64, error) {
	body, err := f.post(ctx, ep, "/v3/lease/timetolive", leaseTTLRequest{ID: strconv.FormatInt(id, 10)})
	if err != nil {
		return 0, err
	}
	return parseLeaseTTL(body, id)
}

// post makes one call, bounded by CallTimeout.
func (f *Fence) post(ctx context.Context, ep, path string, req any) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, f.cfg.CallTimeout)
	defer cancel()
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(ep, "/")+path, bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	hr.Header.Set("Content-Type", "application/json")
	resp, err := f.client.Do(hr)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxBody {
		return nil, fmt.Errorf("%w: answer longer than %d bytes", ErrMalformed, maxBody)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: HTTP %d: %s", path, resp.StatusCode, etcdError(body))
	}
	return body, nil
}
