package gateway

import (
	"strings"
	"unicode/utf8"
)

// maxFact bounds what an audit record carries of a client's startup
// packet for the alert detectors (internal/alerting).
const maxFact = 128

// clientFacts adds to an auth.failure or session.start record what the
// alert detectors read of the startup packet: application_name (bounded,
// valid UTF-8) and the startup keys in the order sent (a tool's
// fingerprint). Values other than application_name are never copied.
func (c *clientConn) clientFacts(f map[string]any) map[string]any {
	if c.startup == nil {
		return f
	}
	if app, ok := c.startup.Get("application_name"); ok && app != "" {
		app = strings.ToValidUTF8(app, "\uFFFD")
		if len(app) > maxFact {
			cut := maxFact
			for cut > 0 && !utf8.RuneStart(app[cut]) {
				cut--
			}
			app = app[:cut]
		}
		f["application_name"] = app
	}
	keys := make([]string, 0, len(c.startup.Params))
	n := 0
	for _, p := range c.startup.Params {
		if n += len(p.Key) + 1; n > 512 {
			break
		}
		keys = append(keys, strings.ToValidUTF8(p.Key, "\uFFFD"))
	}
	f["startup_keys"] = strings.Join(keys, ",")
	return f
}
