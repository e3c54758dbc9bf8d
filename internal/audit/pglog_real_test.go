package audit

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// testdata/pglog holds lines that PostgreSQL 15.20 with pgaudit 1.7.0
// (Debian's postgresql-15-pgaudit) wrote to its jsonlog, with
// log_error_verbosity = verbose as pgshield sets it, from a role with
// CREATEROLE but not SUPERUSER: see testdata/pglog/README.

func readPGLine(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "pglog", name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	return []byte(strings.TrimSpace(string(b)))
}

// noSecret fails if an encoded event still carries s.
func noSecret(t *testing.T, e Event, s string) string {
	t.Helper()
	b, _, err := encode(1, zeroHash, e)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), s) {
		t.Errorf("event %s carries %q", b, s)
	}
	return string(b)
}

func TestPgauditRecordsFromPostgres(t *testing.T) {
	now := time.Unix(0, 0)
	for _, tc := range []struct {
		name string
		want map[string]any // fields of the record beyond the session's
	}{
		{"pgaudit_session_read", map[string]any{"audit_type": "SESSION", "class": "READ", "command": "SELECT",
			"statement": "SELECT id, note FROM public.accounts WHERE id = 42;", "parameters": "<none>"}},
		{"pgaudit_object_read", map[string]any{"audit_type": "OBJECT", "class": "READ", "command": "SELECT",
			"object_type": "TABLE", "object": "public.accounts",
			"statement": "SELECT id, note FROM public.accounts WHERE id = 42;", "parameters": "<none>"}},
		{"pgaudit_session_role", map[string]any{"audit_type": "SESSION", "class": "ROLE", "command": "ALTER ROLE",
			"statement": "ALTER ROLE r PASSWORD <redacted>", "parameters": "<none>"}},
		{"pgaudit_session_write_params", map[string]any{"audit_type": "SESSION", "class": "WRITE", "command": "UPDATE",
			"statement":  "PREPARE q(int, text) AS UPDATE public.accounts SET note = $2 WHERE id = $1;",
			"parameters": []any{"1", `a,"b"`}}},
		{"pgaudit_object_write_params", map[string]any{"audit_type": "OBJECT", "class": "WRITE", "command": "UPDATE",
			"object_type": "TABLE", "object": "public.accounts",
			"statement":  "PREPARE q(int, text) AS UPDATE public.accounts SET note = $2 WHERE id = $1;",
			"parameters": []any{"1", `a,"b"`}}},
		{"pgaudit_session_do_execute", map[string]any{"audit_type": "SESSION", "class": "FUNCTION", "command": "DO",
			"statement": "DO $$ BEGIN EXECUTE 'ALTER ROLE r PASSWORD <redacted>'; END $$;", "parameters": "<none>"}},
		// FOO is no role option: it goes with the password, as a mistyped
		// part of it may.
		{"pgaudit_session_do_execute_bad_option", map[string]any{"audit_type": "SESSION", "class": "FUNCTION", "command": "DO",
			"statement": "DO $$ BEGIN EXECUTE 'ALTER ROLE r PASSWORD <redacted>'; END $$;", "parameters": "<none>"}},
		{"pgaudit_session_do_format", map[string]any{"audit_type": "SESSION", "class": "FUNCTION", "command": "DO",
			"statement": "DO $$ BEGIN EXECUTE format('ALTER ROLE %I PASSWORD %L', 'r', <redacted>); END $$;", "parameters": "<none>"}},
		{"pgaudit_session_quoted_crypt", map[string]any{"audit_type": "SESSION", "class": "READ", "command": "SELECT",
			"statement": `SELECT "crypt"(<redacted>, gen_salt(<redacted>));`, "parameters": "<none>"}},
		{"pgaudit_session_params_crypt", map[string]any{"audit_type": "SESSION", "class": "READ", "command": "SELECT",
			"statement": "PREPARE p(text) AS SELECT crypt($1, gen_salt(<redacted>));", "parameters": []any{Redacted}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := ParseServerLogLine(readPGLine(t, tc.name), now)
			noSecret(t, e, "S3cr3t")
			if e.Type != TypePostgresAudit || e.Outcome != OutcomeSuccess || e.User == "" || e.Reason != "" {
				t.Fatalf("ParseServerLogLine() = %+v; want a pgaudit record", e)
			}
			got := map[string]any{}
			for k := range tc.want {
				got[k] = e.Fields[k]
			}
			for _, k := range []string{"object_type", "object"} {
				if _, ok := tc.want[k]; !ok && e.Fields[k] != nil {
					got[k] = e.Fields[k]
				}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("fields = %#v\nwant %#v", got, tc.want)
			}
		})
	}
}

// A role that RAISEs a message shaped like pgaudit's gets an ordinary log
// record under its own name, with the context and statement that show
// where the message came from, whatever the severity.
func TestForgedPgauditRecords(t *testing.T) {
	now := time.Unix(0, 0)
	for _, tc := range []struct {
		name, severity, location string
		outcome                  string
	}{
		{"forged_raise_log", "LOG", "exec_stmt_raise, pl_exec.c:3907", ""},
		{"forged_raise_warning", "WARNING", "exec_stmt_raise, pl_exec.c:3907", ""},
		{"forged_raise_notice", "NOTICE", "exec_stmt_raise, pl_exec.c:3907", ""},
		{"forged_raise_exception", "ERROR", "exec_stmt_raise, pl_exec.c:3907", OutcomeFailure},
		{"forged_assert", "ERROR", "exec_stmt_assert, pl_exec.c:3963", OutcomeFailure},
	} {
		t.Run(tc.name, func(t *testing.T) {
			line := readPGLine(t, tc.name)
			var j pgJSON
			if err := json.Unmarshal(line, &j); err != nil {
				t.Fatal(err)
			}
			if _, ok := parsePgaudit(j.Message); !ok {
				t.Fatalf("fixture message %q does not pass for pgaudit's", j.Message)
			}
			e := ParseServerLogLine(line, now)
			if e.Type != TypePostgresLog || e.Outcome != tc.outcome || e.User != "dba" {
				t.Fatalf("ParseServerLogLine() = %+v; want a postgres.log record of dba", e)
			}
			if e.Reason != j.Message {
				t.Errorf("reason = %q; want the message %q", e.Reason, j.Message)
			}
			if e.Fields["severity"] != tc.severity || e.Fields["location"] != tc.location ||
				e.Fields["context"] != j.Context || !strings.HasPrefix(j.Context, "PL/pgSQL function inline_code_block") {
				t.Errorf("fields = %v; want severity %s, location %q and the PL/pgSQL context", e.Fields, tc.severity, tc.location)
			}
			if j.Statement != "" && e.Fields["statement"] != j.Statement {
				t.Errorf("statement = %v; want %q", e.Fields["statement"], j.Statement)
			}
			for _, k := range []string{"audit_type", "class", "command"} {
				if _, ok := e.Fields[k]; ok {
					t.Errorf("field %s = %v; a forged record has no pgaudit fields", k, e.Fields[k])
				}
			}
		})
	}
	// Any other source location is not pgaudit's either.
	real := string(readPGLine(t, "pgaudit_session_read"))
	for _, loc := range []string{
		`"func_name":"exec_stmt_raise","file_name":"pgaudit.c"`,
		`"func_name":"log_audit_event","file_name":"pl_exec.c"`,
		`"func_name":"log_audit_event","file_name":"./pgaudit.c"`,
	} {
		line := strings.Replace(real, `"func_name":"log_audit_event","file_name":"pgaudit.c"`, loc, 1)
		if e := ParseServerLogLine([]byte(line), now); e.Type != TypePostgresLog {
			t.Errorf("ParseServerLogLine(%s) type = %s; want postgres.log", loc, e.Type)
		}
	}
}

// Where the location is missing (a superuser lowered log_error_verbosity
// for a session), pgaudit's own records are kept as log messages.
func TestPgauditWithoutLocation(t *testing.T) {
	line := readPGLine(t, "pgaudit_terse")
	e := ParseServerLogLine(line, time.Unix(0, 0))
	if e.Type != TypePostgresLog || !strings.HasPrefix(e.Reason, "AUDIT: SESSION,2,1,READ,SELECT,,,SELECT id FROM public.accounts") {
		t.Errorf("ParseServerLogLine() = %+v; want the record as a postgres.log message", e)
	}
	// Kept so, its parameters are redacted as a record's would be.
	line = []byte(`{"user":"u","error_severity":"LOG","message":"AUDIT: SESSION,1,1,READ,SELECT,,,\"SELECT crypt($1, $2)\",\"S3cr3t-1,x\""}`)
	e = ParseServerLogLine(line, time.Unix(0, 0))
	noSecret(t, e, "S3cr3t")
	if e.Reason != `AUDIT: SESSION,1,1,READ,SELECT,,,"SELECT crypt($1, $2)","<redacted>,<redacted>"` {
		t.Errorf("reason = %q", e.Reason)
	}
}

// Errors echo the SQL they failed on in several fields.
func TestErrorEchoesFromPostgres(t *testing.T) {
	now := time.Unix(0, 0)
	for _, tc := range []struct {
		name  string
		field string
		want  string
	}{
		{"error_do_execute_context", "context", "SQL statement \"ALTER ROLE nosuch PASSWORD <redacted>\"\nPL/pgSQL function inline_code_block line 1 at EXECUTE"},
		{"error_do_execute_internal_query", "internal_query", "ALTER ROLE r PASSWORD <redacted>"},
		{"error_syntax_unquoted_password", "reason", `syntax error at or near "<redacted>"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := ParseServerLogLine(readPGLine(t, tc.name), now)
			noSecret(t, e, "S3cr3t")
			got := e.Reason
			if tc.field != "reason" {
				got, _ = e.Fields[tc.field].(string)
			}
			if got != tc.want {
				t.Errorf("%s = %q; want %q", tc.field, got, tc.want)
			}
		})
	}
}
