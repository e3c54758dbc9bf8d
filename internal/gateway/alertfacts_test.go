package gateway

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/pgshield/pgshield/internal/wire"
)

// What the alert detectors get of a startup packet: the keys in order,
// application_name and client_encoding bounded and valid UTF-8, and no
// other value (options may carry anything).
func TestClientFacts(t *testing.T) {
	c := &clientConn{admitted: admitted{startup: &wire.Startup{Params: []wire.Param{
		{Key: "user", Value: "postgres"}, {Key: "database", Value: "postgres"},
		{Key: "application_name", Value: "psql"}, {Key: "client_encoding", Value: "UTF8"},
		{Key: "options", Value: "-c password=secret"},
	}}}}
	f := c.clientFacts(map[string]any{})
	if f["startup_keys"] != "user,database,application_name,client_encoding,options" || f["application_name"] != "psql" ||
		f["client_encoding"] != "UTF8" || len(f) != 3 {
		t.Errorf("facts = %v", f)
	}
	c.startup.Params = []wire.Param{{Key: "user", Value: "u"}, {Key: "client_encoding", Value: strings.Repeat("é", 100) + "\xff"}}
	f = c.clientFacts(map[string]any{})
	if enc := f["client_encoding"].(string); len(enc) > 64 || !utf8.ValidString(enc) {
		t.Errorf("client_encoding kept as %q", enc)
	}
	c.startup = nil
	if f := c.clientFacts(map[string]any{}); len(f) != 0 {
		t.Errorf("no startup packet: %v", f)
	}
}
