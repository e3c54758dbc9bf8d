package alerting

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

type decoys struct {
	roles  map[string]bool
	tables map[string]string // db + "|" + object -> name
}

func (d decoys) DecoyRole(n string) bool { return d.roles[n] }
func (d decoys) DecoyTable(db, obj string) (string, bool) {
	n, ok := d.tables[db+"|"+obj]
	return n, ok
}

func testConfig() Config {
	return Config{Failures: 5, RoleFailures: 20, Window: 10 * time.Minute,
		PrincipalUnseen: 60 * 24 * time.Hour, SourceUnseen: 60 * 24 * time.Hour, Learning: 7 * 24 * time.Hour,
		HarmfulApps: []string{"sqlmap", "hydra", "pgsql-brute"}}
}

func newTest() (*Detector, *clock) {
	c := &clock{t: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)}
	return New(testConfig(), c.now), c
}

func fail(client, user string, exists bool) Event {
	return Event{Type: "auth.failure", Outcome: "failure", Client: client, User: user, Database: "postgres",
		Reason: "wrong password", Fields: map[string]any{"role_exists": exists}}
}

func login(client, user string) Event {
	return Event{Type: "session.start", Outcome: "success", Client: client, User: user, Database: "postgres",
		Fields: map[string]any{}}
}

func types(fs []Finding) []string {
	var out []string
	for _, f := range fs {
		out = append(out, f.Type)
	}
	return out
}

func has(fs []Finding, typ string) *Finding {
	for i := range fs {
		if fs[i].Type == typ {
			return &fs[i]
		}
	}
	return nil
}

func TestBruteForceValidUser(t *testing.T) {
	d, c := newTest()
	for i := 1; i <= 4; i++ {
		if fs := d.Observe(fail("10.0.0.9", "app", true), nil); has(fs, TypeBruteForceValid) != nil {
			t.Fatalf("failure %d raised %v; want nothing before 5", i, types(fs))
		}
		c.advance(time.Second)
	}
	fs := d.Observe(fail("10.0.0.9", "app", true), nil)
	f := has(fs, TypeBruteForceValid)
	if f == nil || f.Key != "src=10.0.0.9/32|role=app" || f.Details["failures_in_window"] != "5" {
		t.Fatalf("fifth failure = %+v; want a brute-force alert keyed by source and role", fs)
	}
	// Failures spread beyond the window never add up.
	d2, c2 := newTest()
	for i := 0; i < 10; i++ {
		if fs := d2.Observe(fail("10.0.0.9", "app", true), nil); has(fs, TypeBruteForceValid) != nil {
			t.Fatalf("failure %d, 3 minutes apart, raised %v", i, types(fs))
		}
		c2.advance(3 * time.Minute)
	}
}

func TestBruteForceInvalidUsers(t *testing.T) {
	d, _ := newTest()
	var fs []Finding
	for i := 0; i < 5; i++ {
		fs = d.Observe(fail("2001:db8::1", "guess"+itoa(i), false), nil)
	}
	f := has(fs, TypeBruteForceInvalid)
	if f == nil || f.Key != "src=2001:db8::/64" {
		t.Fatalf("five unknown names = %v; want an invalid-users alert for the /64", fs)
	}
	if has(fs, TypeBruteForceValid) != nil {
		t.Errorf("unknown names raised a valid-user alert")
	}
	// Without the field, the reason decides (older events).
	d2, _ := newTest()
	for i := 0; i < 5; i++ {
		e := fail("10.1.1.1", "x", true)
		e.Fields, e.Reason = map[string]any{}, "role does not exist"
		fs = d2.Observe(e, nil)
	}
	if has(fs, TypeBruteForceInvalid) == nil {
		t.Errorf("reason %q did not count as an invalid user", "role does not exist")
	}
}

func TestDistributedBruteForce(t *testing.T) {
	d, _ := newTest()
	var fs []Finding
	for i := 0; i < 20; i++ {
		fs = d.Observe(fail("10.9.0."+itoa(i+1), "app", true), nil)
	}
	f := has(fs, TypeBruteForceValid)
	if f == nil || f.Key != "role=app" || f.Details["distributed"] != "true" {
		t.Fatalf("20 sources x 1 failure = %+v; want one distributed alert on the role", fs)
	}
}

func TestSuccessfulBruteForce(t *testing.T) {
	d, c := newTest()
	for i := 0; i < 5; i++ {
		d.Observe(fail("10.0.0.9", "app", true), nil)
	}
	c.advance(time.Minute)
	// Another source's success is not it.
	if fs := d.Observe(login("10.0.0.10", "app"), nil); has(fs, TypeBruteForceSuccess) != nil {
		t.Fatalf("a success from another source raised %v", types(fs))
	}
	fs := d.Observe(login("10.0.0.9", "app"), nil)
	if f := has(fs, TypeBruteForceSuccess); f == nil || f.Details["failures_before"] != "5" {
		t.Fatalf("success after 5 failures = %v; want a successful brute force alert", fs)
	}
	if fs := d.Observe(login("10.0.0.9", "app"), nil); has(fs, TypeBruteForceSuccess) != nil {
		t.Errorf("the next success raised it again")
	}
	// Failures that left the window are forgotten.
	for i := 0; i < 5; i++ {
		d.Observe(fail("10.0.0.9", "app", true), nil)
	}
	c.advance(11 * time.Minute)
	if fs := d.Observe(login("10.0.0.9", "app"), nil); has(fs, TypeBruteForceSuccess) != nil {
		t.Errorf("a success 11 minutes after the failures raised it")
	}
}

func TestHarmfulApplication(t *testing.T) {
	d, _ := newTest()
	for _, tc := range []struct {
		app, want string
	}{
		{"sqlmap/1.7.2#stable (https://sqlmap.org)", "sqlmap"},
		{"SQLMap", "sqlmap"},
		{"Hydra", "hydra"},
		{"nmap pgsql-brute", "pgsql-brute"},
		{"psql", ""},
		{"hydrangea-reports", ""}, // a word, not a substring
		{"", ""},
	} {
		e := fail("10.0.0.1", "app", true)
		e.Fields["application_name"] = tc.app
		f := has(d.Observe(e, nil), TypeHarmfulApplication)
		got := ""
		if f != nil {
			got = f.Details["tool"]
		}
		if got != tc.want {
			t.Errorf("application_name %q matched %q; want %q", tc.app, got, tc.want)
		}
	}
	cfg := testConfig()
	cfg.HarmfulFingerprints = []string{"user,database"}
	d.SetConfig(cfg)
	e := login("10.0.0.1", "app")
	e.Fields["startup_keys"] = "user,database"
	if f := has(d.Observe(e, nil), TypeHarmfulApplication); f == nil || f.Details["matched_by"] != "startup_fingerprint" {
		t.Errorf("fingerprint user,database not matched")
	}
}

func TestPrincipalAndSourceNotSeen(t *testing.T) {
	d, c := newTest()
	// Learning: a first login is history, not an alert.
	if fs := d.Observe(login("10.0.0.1", "app"), nil); len(fs) != 0 {
		t.Fatalf("first login while learning = %v; want none", types(fs))
	}
	c.advance(24 * time.Hour)
	if fs := d.Observe(login("10.0.0.77", "app"), nil); len(fs) != 0 {
		t.Fatalf("same /24 = %v; want none", types(fs))
	}
	// A new network while learning is learned too.
	if fs := d.Observe(login("192.0.2.1", "app"), nil); len(fs) != 0 {
		t.Fatalf("new /24 while learning = %v; want none", types(fs))
	}
	c.advance(7 * 24 * time.Hour)
	fs := d.Observe(login("198.51.100.7", "app"), nil)
	if f := has(fs, TypeSourceNotSeen); f == nil || f.Details["source_prefix"] != "198.51.100.0/24" {
		t.Fatalf("new /24 after learning = %v; want source_not_seen", fs)
	}
	if fs := d.Observe(login("10.0.0.1", "other"), nil); has(fs, TypePrincipalNotSeen) == nil {
		t.Fatalf("a role never seen, after learning = %v; want principal_not_seen", types(fs))
	}
	c.advance(61 * 24 * time.Hour)
	fs = d.Observe(login("10.0.0.1", "app"), nil)
	if has(fs, TypePrincipalNotSeen) == nil || has(fs, TypeSourceNotSeen) == nil {
		t.Fatalf("after 61 days = %v; want both not-seen alerts", types(fs))
	}
	// Saved and loaded, the history holds.
	d2 := New(testConfig(), c.now)
	d2.LoadHistory(d.History())
	if fs := d2.Observe(login("10.0.0.1", "app"), nil); len(fs) != 0 {
		t.Errorf("after reload = %v; want none", types(fs))
	}
}

func TestDecoys(t *testing.T) {
	d, _ := newTest()
	dec := decoys{roles: map[string]bool{"backup_admin": true},
		tables: map[string]string{"postgres|finance.payroll": "finance.payroll"}}
	if f := has(d.Observe(fail("10.0.0.3", "backup_admin", true), dec), TypeDecoyRole); f == nil || f.Key != "role=backup_admin|src=10.0.0.3/32" {
		t.Errorf("decoy role login attempt not alerted")
	}
	if f := has(d.Observe(fail("10.0.0.3", "Backup_Admin", false), dec), TypeDecoyRole); f != nil {
		t.Errorf("another name (case differs) alerted as the decoy")
	}
	read := Event{Type: "postgres.audit", Client: "10.0.0.4:51234", User: "app", Database: "postgres",
		Fields: map[string]any{"audit_type": "OBJECT", "class": "READ", "command": "SELECT", "object": "finance.payroll", "statement": "select * from finance.payroll"}}
	if f := has(d.Observe(read, dec), TypeDecoyTable); f == nil || f.Details["table"] != "finance.payroll" || f.Key != "table=finance.payroll|user=app|src=10.0.0.4/32" {
		t.Errorf("decoy read = %+v; want a decoy_table_read alert", f)
	}
	// A table of the same name in another database is not the decoy, and
	// a SESSION record (any statement naming it) is not an OBJECT one.
	other := read
	other.Database = "tenantdb"
	if fs := d.Observe(other, dec); len(fs) != 0 {
		t.Errorf("same name in another database alerted: %v", types(fs))
	}
	sess := read
	sess.Fields = map[string]any{"audit_type": "SESSION", "object": "finance.payroll"}
	if fs := d.Observe(sess, dec); len(fs) != 0 {
		t.Errorf("SESSION record alerted: %v", types(fs))
	}
}

func TestEscalationRefused(t *testing.T) {
	d, _ := newTest()
	e := Event{Type: "privilege.refused", User: "pgadmin", Client: "127.0.0.1:5000", Reason: "permission denied to grant role",
		Fields: map[string]any{"sqlstate": "42501", "statement": "GRANT pg_execute_server_program TO pgadmin",
			"location": "check_grant_role, pgshield_guard.c:512"}}
	if f := has(d.Observe(e, nil), TypeEscalationRefused); f == nil || f.Evidence["statement"] == "" {
		t.Errorf("guard refusal not alerted")
	}
	// Refused inside a function the user only called: the alert says so,
	// with PostgreSQL's CONTEXT (a planted function must not read as the
	// user's own attempt).
	e.Fields["context"] = "SQL statement \"GRANT pg_write_server_files TO session_user\"\nPL/pgSQL function public.trap2() line 3 at EXECUTE"
	if f := has(d.Observe(e, nil), TypeEscalationRefused); f == nil || f.Evidence["context"] == "" || f.Details["refused_in"] == "" {
		t.Errorf("refusal inside called code: finding %+v; want its context and refused_in", f)
	}
	delete(e.Fields, "context")
	// A tenant's RAISE with 42501 comes from PL/pgSQL: not the guard.
	e.Fields["location"] = "exec_stmt_raise, pl_exec.c:3889"
	if fs := d.Observe(e, nil); len(fs) != 0 {
		t.Errorf("RAISE '...' USING ERRCODE 42501 alerted: %v", types(fs))
	}
	e.Fields["location"] = "aclcheck_error, aclchk.c:3652"
	if fs := d.Observe(e, nil); len(fs) != 0 {
		t.Errorf("an ordinary permission denied alerted: %v", types(fs))
	}
}

func TestNoPeerNoBlame(t *testing.T) {
	d, _ := newTest()
	// A name carrying another address never becomes the source.
	e := fail("", "x\n\"client\":\"10.6.6.6\"", true)
	for i := 0; i < 10; i++ {
		if fs := d.Observe(e, nil); len(fs) != 0 {
			t.Fatalf("event without a peer raised %v", types(fs))
		}
	}
	e = fail("10.0.0.8", "evil\n\"client\":\"10.6.6.6\"", true)
	var fs []Finding
	for i := 0; i < 5; i++ {
		fs = d.Observe(e, nil)
	}
	f := has(fs, TypeBruteForceValid)
	if f == nil || !strings.HasPrefix(f.Key, "src=10.0.0.8/32|") || f.Client != "10.0.0.8" {
		t.Fatalf("finding = %+v; want the real peer 10.0.0.8", f)
	}
}

func TestBound(t *testing.T) {
	long := strings.Repeat("é", 200) // 400 bytes
	b := Bound(long, MaxName)
	if len(b) > MaxName || !utf8.ValidString(b) || !strings.HasSuffix(b, "…") {
		t.Errorf("Bound = %d bytes, valid %v", len(b), utf8.ValidString(b))
	}
	if got := Bound("a\xffb", 10); !utf8.ValidString(got) {
		t.Errorf("Bound(invalid UTF-8) = %q", got)
	}
	// Bounded state: a spray of invented names keeps the maps bounded.
	d, _ := newTest()
	for i := 0; i < maxFailKeys+100; i++ {
		d.Observe(fail("10.0.0.1", "n"+itoa(i), true), nil)
	}
	if d.pairFails.Len() > maxFailKeys {
		t.Errorf("pairFails has %d entries; want at most %d", d.pairFails.Len(), maxFailKeys)
	}
}

func TestDiffPrivileges(t *testing.T) {
	old := &Snapshot{Attrs: map[string][]string{"pgadmin": {"CREATEROLE"}},
		Members: map[string][]string{"pg_signal_backend": {"pgadmin"}}}
	cur := &Snapshot{Attrs: map[string][]string{"pgadmin": {"CREATEROLE"}, "app": {"CREATEROLE"}},
		Members:      map[string][]string{"pg_signal_backend": {"pgadmin"}, "pg_read_all_data": {"app"}},
		PublicCreate: []string{"PUBLIC"}}
	fs := DiffPrivileges(old, cur)
	var got []string
	for _, f := range fs {
		got = append(got, f.Details["role"]+":"+f.Details["privilege"])
	}
	want := "app:CREATEROLE,app:member of pg_read_all_data,PUBLIC:CREATE on schema public"
	if strings.Join(got, ",") != want {
		t.Errorf("DiffPrivileges = %v; want %s", got, want)
	}
	if fs := DiffPrivileges(nil, cur); fs != nil {
		t.Errorf("first snapshot raised %d", len(fs))
	}
	if fs := DiffPrivileges(cur, old); len(fs) != 0 {
		t.Errorf("a privilege lost raised %d", len(fs))
	}
}

func TestParseClient(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.1": "10.0.0.1", "10.0.0.1:5432": "10.0.0.1", "[2001:db8::1]:7": "2001:db8::1",
		"::ffff:10.0.0.1": "10.0.0.1", "2001:db8::1": "2001:db8::1",
	} {
		a, ok := ParseClient(in)
		if !ok || a.String() != want {
			t.Errorf("ParseClient(%q) = %v, %v; want %s", in, a, ok, want)
		}
	}
	for in, want := range map[string]string{"::1:5432": "::1", "10.0.0.1:5432": "10.0.0.1", "2001:db8::1:7": "2001:db8::1"} {
		if a, ok := ParseClientPort(in); !ok || a.String() != want {
			t.Errorf("ParseClientPort(%q) = %v, %v; want %s", in, a, ok, want)
		}
	}
	for _, in := range []string{"", "uid=0 pid=1", "[local]", "host"} {
		if _, ok := ParseClient(in); ok {
			t.Errorf("ParseClient(%q) ok; want not an address", in)
		}
	}
}

// A pgaudit record or a refusal padded past the server log's line limit
// cannot be read, so it is an alert itself, blamed on who wrote it; other
// oversized records (a huge failed INSERT) are not.
func TestOversizedRecord(t *testing.T) {
	d, _ := newTest()
	e := Event{Type: "postgres.oversized", User: "t1", Database: "postgres", Client: "10.77.5.2:51234",
		Reason: "a record of 17826538 bytes in PostgreSQL's log was too long to inspect and was dropped",
		Fields: map[string]any{"audit_type": "OBJECT", "bytes": 17826538}}
	f := has(d.Observe(e, nil), TypeOversizedRecord)
	if f == nil || f.User != "t1" || f.Details["source"] != "10.77.5.2/32" || f.Details["audit_type"] != "OBJECT" {
		t.Fatalf("padded pgaudit record: finding %+v; want %s for t1 from 10.77.5.2/32", f, TypeOversizedRecord)
	}
	if k, ok := Lookup(TypeOversizedRecord); !ok || k.Severity != High {
		t.Errorf("Lookup(%s) = %+v; want High", TypeOversizedRecord, k)
	}
	e.Fields = map[string]any{"sqlstate": "42501", "severity": "ERROR"}
	if has(d.Observe(e, nil), TypeOversizedRecord) == nil {
		t.Error("padded refusal (42501) not alerted")
	}
	e.Fields = map[string]any{"sqlstate": "22001", "severity": "ERROR"}
	if fs := d.Observe(e, nil); len(fs) != 0 {
		t.Errorf("an oversized ordinary error alerted: %v", types(fs))
	}
}
