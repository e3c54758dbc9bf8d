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
// fingerprint). Values other than application_name and client_encoding
// are never copied.
func (c *clientConn) clientFacts(f map[string]any) map[string]any {
	if c.startup == nil {
		return f
	}
	if app, ok := c.startup.Get("application_name"); ok && app != "" {
		f["application_name"] = boundFact(app, maxFact)
	}
	// client_encoding's value is part of some tools' fixed packets; an
	// encoding name, nothing private.
	if enc, ok := c.startup.Get("client_encoding"); ok && enc != "" {
		f["client_encoding"] = boundFact(enc, 64)
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

// boundFact makes s valid UTF-8 of at most max bytes.
func boundFact(s string, max int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) > max {
		cut := max
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return s
}
