package audit

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// Lines as PostgreSQL 15.20 writes them with log_destination = 'jsonlog'
// (and, for pgaudit's, log_error_verbosity = verbose: see fromPgaudit).
const (
	jsonPgauditRead = `{"timestamp":"2026-11-25 14:37:18.018 UTC","user":"app","dbname":"postgres","pid":32115,"remote_host":"[local]","session_id":"6b06f29e.7d73","line_num":3,"ps":"SELECT","session_start":"2026-11-25 14:37:18 UTC","vxid":"3/2","txid":0,"error_severity":"LOG","message":"AUDIT: SESSION,1,1,READ,SELECT,TABLE,public.accounts,\"SELECT id, note FROM accounts WHERE id = $1\",\"42,\"\"x,y\"\"\"","func_name":"log_audit_event","file_name":"pgaudit.c","file_line_num":783,"application_name":"psql","backend_type":"client backend","query_id":0}`
	jsonFailedAlter = `{"timestamp":"2026-11-25 14:37:18.018 UTC","user":"postgres","dbname":"postgres","pid":32115,"remote_host":"[local]","session_id":"6b06f29e.7d73","line_num":1,"ps":"ALTER ROLE","session_start":"2026-11-25 14:37:18 UTC","vxid":"3/2","txid":0,"error_severity":"ERROR","state_code":"42704","message":"role \"nobody\" does not exist","statement":"ALTER ROLE nobody PASSWORD 'Unique-Secret-42'","application_name":"psql","backend_type":"client backend","query_id":0}`
	jsonSyntaxError = `{"timestamp":"2026-11-25 14:37:18.018 UTC","user":"u","dbname":"d","pid":7,"error_severity":"ERROR","state_code":"42601","message":"unterminated quoted string at or near \"'Unique-Secret-42\"","statement":"ALTER ROLE u PASSWORD 'Unique-Secret-42","cursor_position":23}`
	jsonBindParams  = `{"timestamp":"2026-11-25 14:37:18.018 UTC","user":"u","dbname":"d","pid":7,"error_severity":"LOG","message":"execute <unnamed>: UPDATE users SET password = $1 WHERE id = $2","detail":"parameters: $1 = 'Unique-Secret-42', $2 = '7'"}`
)

func TestParseServerLogLine(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	e := ParseServerLogLine([]byte(jsonPgauditRead), now)
	want := Event{
		Time: time.Date(2026, 11, 25, 14, 37, 18, 18e6, time.UTC), Type: TypePostgresAudit, Outcome: OutcomeSuccess,
		User: "app", Database: "postgres",
		Fields: map[string]any{"pid": int64(32115), "session_id": "6b06f29e.7d73", "line_num": int64(3),
			"backend_type": "client backend", "application_name": "psql", "vxid": "3/2",
			"audit_type": "SESSION", "statement_id": "1", "substatement_id": "1", "class": "READ", "command": "SELECT",
			"object_type": "TABLE", "object": "public.accounts", "statement": "SELECT id, note FROM accounts WHERE id = $1",
			"parameters": []any{"42", "x,y"}},
	}
	if !reflect.DeepEqual(e, want) {
		t.Errorf("ParseServerLogLine(pgaudit) =\n%#v\nwant\n%#v", e, want)
	}

	for _, tc := range []struct {
		name, line string
	}{
		{"failed ALTER ROLE", jsonFailedAlter},
		{"unterminated literal echoed in the message", jsonSyntaxError},
		{"bound parameter of a password statement", jsonBindParams},
		{"pgaudit ROLE record", `{"error_severity":"LOG","message":"AUDIT: SESSION,2,1,ROLE,ALTER ROLE,,,ALTER ROLE x PASSWORD 'Unique-Secret-42',<not logged>","func_name":"log_audit_event","file_name":"pgaudit.c"}`},
		{"pgaudit parameters of a pgcrypto call", `{"error_severity":"LOG","message":"AUDIT: SESSION,2,1,READ,SELECT,,,\"SELECT pgp_sym_encrypt(x, $1)\",Unique-Secret-42","func_name":"log_audit_event","file_name":"pgaudit.c"}`},
		// The same, unproven (no location): kept as a message, as redacted.
		{"unproven pgaudit ROLE record", `{"error_severity":"LOG","message":"AUDIT: SESSION,2,1,ROLE,ALTER ROLE,,,ALTER ROLE x PASSWORD 'Unique-Secret-42',<not logged>"}`},
		{"unproven pgaudit parameters of a pgcrypto call", `{"error_severity":"LOG","message":"AUDIT: SESSION,2,1,READ,SELECT,,,\"SELECT pgp_sym_encrypt(x, $1)\",Unique-Secret-42"}`},
		{"not jsonlog", `ALTER ROLE x PASSWORD 'Unique-Secret-42'`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := ParseServerLogLine([]byte(tc.line), now)
			b, _, err := encode(1, zeroHash, e)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(b), "Unique-Secret-42") || !strings.Contains(string(b), Redacted) {
				t.Errorf("ParseServerLogLine(%s) = %s; want the secret redacted", tc.line, b)
			}
		})
	}

	e = ParseServerLogLine([]byte(jsonFailedAlter), now)
	if e.Type != TypePostgresLog || e.Outcome != OutcomeFailure || e.Reason != `role "nobody" does not exist` ||
		e.Fields["sqlstate"] != "42704" || e.Fields["statement"] != "ALTER ROLE nobody PASSWORD <redacted>" {
		t.Errorf("ParseServerLogLine(failed ALTER) = %+v", e)
	}

	// A refused escalation is its own event type, with who and what.
	refused := `{"timestamp":"2026-11-25 15:01:02.003 UTC","user":"pgadmin","dbname":"postgres","error_severity":"ERROR",` +
		`"state_code":"42501","message":"permission denied to grant role \"pg_execute_server_program\"",` +
		`"statement":"GRANT pg_execute_server_program TO pgadmin"}`
	e = ParseServerLogLine([]byte(refused), now)
	if e.Type != TypePrivilegeRefused || e.Outcome != OutcomeFailure || e.User != "pgadmin" ||
		e.Fields["statement"] != "GRANT pg_execute_server_program TO pgadmin" {
		t.Errorf("ParseServerLogLine(42501) = %+v; want a privilege.refused event naming the role and statement", e)
	}
	notice := strings.Replace(refused, `"ERROR"`, `"NOTICE"`, 1)
	if e := ParseServerLogLine([]byte(notice), now); e.Type != TypePostgresLog {
		t.Errorf("ParseServerLogLine(NOTICE 42501) type = %q; want postgres.log (nothing was refused)", e.Type)
	}
}

func TestParsePgaudit(t *testing.T) {
	for _, tc := range []struct {
		msg  string
		ok   bool
		want []string // class, command, object, statement, params raw
	}{
		{"AUDIT: SESSION,1,1,DDL,CREATE TABLE,TABLE,public.t,create table t (a int),<not logged>", true,
			[]string{"DDL", "CREATE TABLE", "public.t", "create table t (a int)", "<not logged>"}},
		{"AUDIT: OBJECT,3,2,WRITE,INSERT,TABLE,public.t,\"insert into t values (1), (2)\",<none>,2", true,
			[]string{"WRITE", "INSERT", "public.t", "insert into t values (1), (2)", "<none>"}},
		{"AUDIT: SESSION,1,1,MISC,SET,,,<not logged>,<not logged>", true,
			[]string{"MISC", "SET", "", "<not logged>", "<not logged>"}},
		{"AUDIT: nothing like it", false, nil},
		{"AUDIT: SESSION,1,1,READ,SELECT,,,\"unterminated,<none>", false, nil},
		{"connection received", false, nil},
	} {
		rec, ok := parsePgaudit(tc.msg)
		if ok != tc.ok {
			t.Errorf("parsePgaudit(%q) ok = %v; want %v", tc.msg, ok, tc.ok)
			continue
		}
		if !ok {
			continue
		}
		got := []string{rec.class, rec.command, rec.objectName, rec.statement, rec.paramsRaw}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("parsePgaudit(%q) = %q; want %q", tc.msg, got, tc.want)
		}
	}
}

// pgauditCSV quotes a field as pgaudit's append_valid_csv does.
func pgauditCSV(s string) string {
	if strings.ContainsAny(s, ",\"\r\n") {
		return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
	}
	return s
}
