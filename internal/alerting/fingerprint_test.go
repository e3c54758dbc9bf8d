package alerting

import (
	"strings"
	"testing"
)

func defaultFingerprints() []string { return strings.Split(DefaultHarmfulFingerprints, ";") }

// toolShapes are the startup packets the tools' own code writes (the
// sources are cited at DefaultHarmfulFingerprints).
var toolShapes = []struct {
	tool string
	s    Startup
}{
	// nselib/pgsql.lua v3.sendStartup(socket, "versionprobe", "versionprobe").
	{"nmap", Startup{Keys: "user,database", User: "versionprobe", Database: "versionprobe"}},
	// modules/ncrack_psql.cc: the user under attack, the rest fixed.
	{"ncrack", Startup{Keys: "user,database,application_name,client_encoding", User: "postgres", Database: "postgres",
		Application: "psql", ClientEncoding: "UTF8"}},
	{"ncrack", Startup{Keys: "user,database,application_name,client_encoding", User: "admin", Database: "postgres",
		Application: "psql", ClientEncoding: "UTF8"}},
}

// honestShapes are what the common drivers send, read from their sources:
// the key order each builds its StartupMessage in, with the values they
// put in by default or that a user plausibly configures.
var honestShapes = []struct {
	driver string
	s      Startup
}{
	// libpq (fe-connect.c/fe-protocol3.c build_startup_packet: user,
	// database, replication, options, application_name,
	// fallback_application_name, client_encoding, then PGDATESTYLE etc.;
	// dbname defaults to the user name). psql passes
	// fallback_application_name=psql and client_encoding=auto.
	{"psql", Startup{Keys: "user,database,fallback_application_name,client_encoding", User: "postgres", Database: "postgres",
		ClientEncoding: "UTF8"}},
	{"psql PGAPPNAME=psql", Startup{Keys: "user,database,application_name,fallback_application_name,client_encoding",
		User: "postgres", Database: "postgres", Application: "psql", ClientEncoding: "UTF8"}},
	{"libpq bare (hydra, medusa, psycopg, patator, sqlmap)", Startup{Keys: "user,database", User: "postgres", Database: "postgres"}},
	{"libpq dbname=template1", Startup{Keys: "user,database", User: "postgres", Database: "template1"}},
	{"libpq PGCLIENTENCODING", Startup{Keys: "user,database,client_encoding", User: "app", Database: "app", ClientEncoding: "UTF8"}},
	{"libpq application_name + client_encoding", Startup{Keys: "user,database,application_name,client_encoding",
		User: "app", Database: "postgres", Application: "billing", ClientEncoding: "UTF8"}},
	{"psycopg application_name", Startup{Keys: "user,database,application_name", User: "app", Database: "postgres", Application: "psql"}},
	// pgx v5 (pgconn.connectOne: RuntimeParams, user, database in a map;
	// pgproto3.StartupMessage.Encode writes the map in Go's random order).
	{"pgx", Startup{Keys: "user,database", User: "versionprobe", Database: "postgres"}},
	{"pgx", Startup{Keys: "database,user", User: "app", Database: "versionprobe"}},
	{"pgx application_name", Startup{Keys: "application_name,database,user", User: "app", Database: "app", Application: "psql"}},
	// pgjdbc (ConnectionFactoryImpl.getParametersForStartup: user,
	// database, client_encoding UTF8, DateStyle ISO, TimeZone,
	// extra_float_digits 3, application_name).
	{"pgjdbc", Startup{Keys: "user,database,client_encoding,DateStyle,TimeZone,extra_float_digits,application_name",
		User: "postgres", Database: "postgres", Application: "PostgreSQL JDBC Driver", ClientEncoding: "UTF8"}},
	// node-postgres (Client.getStartupConf: user, database, then
	// application_name, options...; pg-protocol's serializer.startup
	// appends client_encoding UTF8).
	{"node-postgres", Startup{Keys: "user,database,client_encoding", User: "postgres", Database: "postgres", ClientEncoding: "UTF8"}},
	{"node-postgres application_name", Startup{Keys: "user,database,application_name,client_encoding", User: "postgres",
		Database: "postgres", Application: "api", ClientEncoding: "UTF8"}},
	// asyncpg (protocol/coreproto.pyx _connect: client_encoding 'utf-8',
	// user, database, then server_settings).
	{"asyncpg", Startup{Keys: "client_encoding,user,database", User: "postgres", Database: "postgres", ClientEncoding: "'utf-8'"}},
	// Npgsql (NpgsqlConnector.GetStartupParameters: user,
	// client_encoding UTF8, database, application_name, search_path...).
	{"npgsql", Startup{Keys: "user,client_encoding,database", User: "postgres", Database: "postgres", ClientEncoding: "UTF8"}},
	{"npgsql application_name", Startup{Keys: "user,client_encoding,database,application_name", User: "postgres",
		Database: "postgres", Application: "psql", ClientEncoding: "UTF8"}},
}

func TestDefaultFingerprintsMatchTools(t *testing.T) {
	for _, c := range toolShapes {
		if got := MatchFingerprint(c.s, defaultFingerprints()); got != c.tool {
			t.Errorf("%s's packet %+v: matched %q, want %q", c.tool, c.s, got, c.tool)
		}
	}
}

func TestDefaultFingerprintsSpareHonestDrivers(t *testing.T) {
	for _, c := range honestShapes {
		if got := MatchFingerprint(c.s, defaultFingerprints()); got != "" {
			t.Errorf("%s's packet %+v matched %q", c.driver, c.s, got)
		}
	}
}

func TestFingerprintShapes(t *testing.T) {
	s := Startup{Keys: "user,database", User: "u", Database: "d"}
	for fp, want := range map[string]string{
		"user,database":         "user,database",
		"t:user,database=d":     "t",
		"t:user=u,database=d":   "t",
		"t:user,database=x":     "",
		"t:database,user":       "", // order counts
		"t:user":                "", // every key
		"t:user,database,extra": "",
		"t:user,database=":      "", // an empty value is not a wildcard
		"t:user,options=d":      "",
		"t:user,database=D":     "", // exact value
	} {
		if got := MatchFingerprint(s, []string{fp}); got != want {
			t.Errorf("%q: matched %q, want %q", fp, got, want)
		}
	}
	if got := MatchFingerprint(Startup{}, []string{"user"}); got != "" {
		t.Errorf("no startup packet matched %q", got)
	}
}

// A tool refused for speaking plaintext (require_secure_transport) is
// still named by its startup packet; a refusal without one is not.
func TestHarmfulFingerprintOnRefusedConnection(t *testing.T) {
	d := New(Config{HarmfulFingerprints: defaultFingerprints()}, nil)
	e := Event{Type: "connection.refused", Client: "192.0.2.7", User: "versionprobe", Database: "versionprobe",
		Reason: "require_secure_transport: plaintext connection", Fields: map[string]any{"startup_keys": "user,database"}}
	fs := d.Observe(e, nil)
	if len(fs) != 1 || fs[0].Type != TypeHarmfulApplication || fs[0].Details["tool"] != "nmap" ||
		fs[0].Details["matched_by"] != "startup_fingerprint" || fs[0].Details["source"] != "192.0.2.7/32" {
		t.Fatalf("nmap's probe refused before login: %+v", fs)
	}
	e.Fields = map[string]any{}
	if fs := d.Observe(e, nil); len(fs) != 0 {
		t.Errorf("a refusal without a startup packet raised %+v", fs)
	}
	e.Fields = map[string]any{"startup_keys": "user,database"}
	e.Client = ""
	if fs := d.Observe(e, nil); len(fs) != 0 {
		t.Errorf("a refusal without a peer raised %+v", fs)
	}
	// A plaintext attempt as a decoy role is an attempt at the lure.
	e = Event{Type: "connection.refused", Client: "192.0.2.8", User: "backup_admin", Database: "postgres",
		Fields: map[string]any{"startup_keys": "user,database,client_encoding"}}
	if fs := d.Observe(e, decoyRoles{"backup_admin"}); len(fs) != 1 || fs[0].Type != TypeDecoyRole {
		t.Errorf("plaintext attempt as a decoy role: %+v", fs)
	}
}

type decoyRoles []string

func (r decoyRoles) DecoyRole(name string) bool {
	for _, n := range r {
		if n == name {
			return true
		}
	}
	return false
}

func (decoyRoles) DecoyTable(string, string) (string, bool) { return "", false }
