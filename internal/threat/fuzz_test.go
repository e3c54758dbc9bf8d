package threat

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzDecodeState feeds the state file decoder arbitrary bytes: it must
// never panic, and whatever it accepts must load and save back to a file
// it accepts again.
func FuzzDecodeState(f *testing.F) {
	f.Add([]byte(`{"version":1,"bans":[{"source":"203.0.113.7/32","banned_at":"2026-11-25T12:00:00Z","until":"2026-11-25T12:10:00Z","count":1}],"known_sources":[{"source":"2001:db8:1:2::/64","at":"2026-11-25T12:00:00Z"}],"known_roles":[{"source":"10.0.0.1/32","role":"pgadmin","at":"2026-11-25T12:00:00Z"}]}`))
	f.Add([]byte(`{"version":1,"bans":[],"known_sources":[],"known_roles":[]}`))
	f.Add([]byte(`{"version":1,"bans":null}`))
	f.Add([]byte(`{"version":1} {}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := decodeState(bytes.NewReader(data), 1000)
		if err != nil {
			return
		}
		g := New(DefaultConfig(), WithClock(newClock().Now))
		g.mu.Lock()
		for _, b := range st.Bans {
			k, err := parseKey(b.Source)
			if err != nil {
				t.Fatalf("decodeState accepted source %q that parseKey refuses: %v", b.Source, err)
			}
			g.mu.bans.Put(k, &ban{at: b.At, until: b.Until, count: b.Count})
		}
		g.mu.Unlock()
		again, err := json.Marshal(st)
		if err != nil {
			t.Fatalf("Marshal(accepted state) = %v", err)
		}
		if _, err := decodeState(bytes.NewReader(again), 1000); err != nil {
			t.Fatalf("decodeState(re-encoded %s) = %v; want it accepted again", again, err)
		}
	})
}
