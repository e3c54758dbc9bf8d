package threat

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"time"
	"unicode/utf8"
)

// The state file keeps what must survive a restart: bans (with their
// history, so the next one still doubles) and known-good sources, so that
// a flood right after a restart cannot keep the usual clients out. Failure
// windows and live counts start empty.

// fileVersion is the state file's format.
const fileVersion = 1

// maxFileSize bounds what Load reads: a million entries of about 100 bytes.
const maxFileSize = 256 << 20

// ErrCorrupt wraps every reason a state file is refused.
var ErrCorrupt = errors.New("threat state file is corrupt")

type fileState struct {
	Version   int         `json:"version"`
	Bans      []fileBan   `json:"bans"`
	Known     []fileKnown `json:"known_sources"`
	KnownRole []fileKnown `json:"known_roles"`
}

type fileBan struct {
	Source string    `json:"source"`
	At     time.Time `json:"banned_at"`
	Until  time.Time `json:"until"`
	Count  int       `json:"count"`
}

type fileKnown struct {
	Source string    `json:"source"`
	Role   string    `json:"role,omitempty"`
	At     time.Time `json:"at"`
}

// decodeState reads a state file strictly: one JSON object of the known
// fields, the current version, canonical source keys, sane times and
// counts, at most limit entries per table. Anything else is ErrCorrupt.
func decodeState(r io.Reader, limit int) (*fileState, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrCorrupt, maxFileSize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var st fileState
	if err := dec.Decode(&st); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: data after the state object", ErrCorrupt)
	}
	if st.Version != fileVersion {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrCorrupt, st.Version, fileVersion)
	}
	if len(st.Bans) > limit || len(st.Known) > limit || len(st.KnownRole) > limit {
		return nil, fmt.Errorf("%w: more than %d entries in a table", ErrCorrupt, limit)
	}
	for i, b := range st.Bans {
		if _, err := parseKey(b.Source); err != nil {
			return nil, fmt.Errorf("%w: ban %d: %v", ErrCorrupt, i, err)
		}
		if b.Count < 1 || b.Count > 64 || !saneTime(b.At) || !saneTime(b.Until) || b.Until.Before(b.At) {
			return nil, fmt.Errorf("%w: ban %d: impossible count or times", ErrCorrupt, i)
		}
	}
	for i, k := range append(append([]fileKnown(nil), st.Known...), st.KnownRole...) {
		if _, err := parseKey(k.Source); err != nil {
			return nil, fmt.Errorf("%w: known source %d: %v", ErrCorrupt, i, err)
		}
		if !saneTime(k.At) {
			return nil, fmt.Errorf("%w: known source %d: impossible time", ErrCorrupt, i)
		}
		isRole := i >= len(st.Known)
		if isRole != (k.Role != "") || len(k.Role) > maxRoleKey || !utf8.ValidString(k.Role) {
			return nil, fmt.Errorf("%w: known source %d: bad role name", ErrCorrupt, i)
		}
	}
	return &st, nil
}

// parseKey accepts only what SourceKey makes: an IPv4 /32 or IPv6 /64.
func parseKey(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if p != SourceKey(p.Addr()) || p.Addr().Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q is not a source key (IPv4 /32 or IPv6 /64)", s)
	}
	return p, nil
}

// saneTime refuses the zero time and anything outside 2000-2200: a clock
// far off would otherwise make a ban that never ends.
func saneTime(t time.Time) bool {
	return t.Year() >= 2000 && t.Year() < 2200
}

// Load reads the state file, if WithFile named one, into g. A missing file
// is no error; a corrupt one is reported (wrapping ErrCorrupt) and ignored:
// g keeps an empty state, and the next Save replaces the file.
func (g *Guard) Load() error {
	if g.path == "" {
		return nil
	}
	f, err := os.Open(g.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := decodeState(f, g.max)
	if err != nil {
		return fmt.Errorf("%s: %w", g.path, err)
	}
	now := g.now()
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, b := range st.Bans {
		if now.Sub(b.Until) > banForget {
			continue
		}
		k, _ := parseKey(b.Source)
		at, until := rebaseBan(now, b.At, b.Until)
		g.mu.bans.Put(k, &ban{at: at, until: until, count: b.Count})
	}
	for _, kn := range st.Known {
		k, _ := parseKey(kn.Source)
		g.mu.known.Put(k, rebaseAt(now, kn.At))
	}
	for _, kn := range st.KnownRole {
		k, _ := parseKey(kn.Source)
		g.mu.knownPair.Put(pairKey{k, kn.Role}, rebaseAt(now, kn.At))
	}
	return nil
}

// rebaseBan turns a ban read from the file (wall-clock times: the only
// clock that survives a restart) into times on now's clock. Within a run,
// times from time.Now carry the monotonic clock, so a ban is a duration
// that wall-clock jumps do not stretch or cut; the file's times are
// compared with the wall clock once, here. A ban never lasts longer than
// it was set for: if the clock went back before the ban began, it runs
// its whole length from now, not until its old end.
func rebaseBan(now, at, until time.Time) (time.Time, time.Time) {
	length := until.Sub(at)
	left := min(until.Sub(now), length)
	u := now.Add(left)
	return u.Add(-length), u
}

// rebaseAt is rebaseBan for a known-good source's time of login: an age
// that the clock made negative counts as zero.
func rebaseAt(now, at time.Time) time.Time {
	return now.Add(-max(now.Sub(at), 0))
}

// Save writes the state file if anything it keeps changed since the last
// Save: a temporary file in the same 0700 directory, synced, then renamed
// over the old one, so a crash leaves one or the other whole.
func (g *Guard) Save() error {
	if g.path == "" {
		return nil
	}
	now := g.now()
	g.mu.Lock()
	if !g.mu.dirty {
		g.mu.Unlock()
		return nil
	}
	st := fileState{Version: fileVersion, Bans: []fileBan{}, Known: []fileKnown{}, KnownRole: []fileKnown{}}
	ttl := g.mu.cfg.KnownTTL
	g.mu.bans.Each(func(k netip.Prefix, b *ban) {
		if now.Sub(b.until) <= banForget {
			st.Bans = append(st.Bans, fileBan{Source: k.String(), At: b.at, Until: b.until, Count: b.count})
		}
	})
	g.mu.known.Each(func(k netip.Prefix, at time.Time) {
		if now.Sub(at) < ttl {
			st.Known = append(st.Known, fileKnown{Source: k.String(), At: at})
		}
	})
	g.mu.knownPair.Each(func(k pairKey, at time.Time) {
		// A name that is not UTF-8 would come back as another (JSON
		// replaces its bytes): it is not kept.
		if now.Sub(at) < ttl && utf8.ValidString(k.role) {
			st.KnownRole = append(st.KnownRole, fileKnown{Source: k.src.String(), Role: k.role, At: at})
		}
	})
	g.mu.dirty = false
	g.mu.Unlock()
	data, err := json.Marshal(st)
	if err == nil {
		err = writeFileAtomic(g.path, data)
	}
	if err != nil {
		g.mu.Lock()
		g.mu.dirty = true // try again next time
		g.mu.Unlock()
	}
	return err
}

// Run saves the state every interval until ctx ends, then once more.
// Failures go to onErr (nil: dropped); the next round retries.
func (g *Guard) Run(ctx context.Context, interval time.Duration, onErr func(error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	report := func(err error) {
		if err != nil && onErr != nil {
			onErr(err)
		}
	}
	for {
		select {
		case <-ctx.Done():
			report(g.Save())
			return
		case <-t.C:
			report(g.Save())
		}
	}
}

func writeFileAtomic(name string, data []byte) error {
	dir := filepath.Dir(name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(name)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op after the rename
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, name)
}
