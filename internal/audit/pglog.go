package audit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"
)

// Record types for PostgreSQL's own log, merged into the audit stream.
const (
	// TypePostgresAudit is a pgaudit record (message "AUDIT: SESSION,..."
	// or "AUDIT: OBJECT,..."), parsed into fields.
	TypePostgresAudit = "postgres.audit"
	// TypePostgresLog is any other message of PostgreSQL's server log.
	TypePostgresLog = "postgres.log"
	// TypePostgresStderr is a line PostgreSQL (or a program it ran) wrote to
	// standard error outside its logging protocol.
	TypePostgresStderr = "postgres.stderr"
	// TypePrivilegeRefused is an ERROR with SQLSTATE 42501: a statement
	// refused for want of a privilege, among them every escalation
	// pgshield_guard refuses (GRANT pg_execute_server_program, ALTER ROLE
	// ... SUPERUSER, COPY ... PROGRAM, ...), with the role and statement.
	TypePrivilegeRefused = "privilege.refused"
	// TypePostgresOversized is a jsonlog line longer than ServerLog.MaxLine:
	// too long to keep, so only who wrote it and what kind of record it
	// began as are kept (ParseOversizedHead). A statement padded past the
	// limit must not make a pgaudit record or a refusal vanish unseen.
	TypePostgresOversized = "postgres.oversized"
)

// oversizedHead is how much of an oversized jsonlog line is kept to find
// out who wrote it: PostgreSQL writes user, dbname, pid, remote_host,
// remote_port, error_severity and state_code before the message.
const oversizedHead = 64 << 10

// ParseOversizedHead makes the event for a jsonlog line of total bytes that
// was too long to keep, from its first bytes. The message itself is not
// kept (it may hold a secret the redaction would need the whole line to
// find); only its kind: a pgaudit record (and its class), or not.
func ParseOversizedHead(head []byte, total int, now time.Time) Event {
	e := Event{Time: now, Type: TypePostgresOversized, Outcome: OutcomeFailure,
		Reason: fmt.Sprintf("a record of %d bytes in PostgreSQL's log was too long to inspect and was dropped", total)}
	f := map[string]any{"bytes": total}
	e.Fields = f
	const key = `,"message":"`
	i := bytes.Index(head, []byte(key))
	if i < 0 {
		return e
	}
	var j pgJSON
	if err := json.Unmarshal(append(append([]byte(nil), head[:i]...), '}'), &j); err != nil {
		return e
	}
	e.User, e.Database = j.User, j.DBName
	if t, err := time.Parse(pgTimeLayout, j.Timestamp); err == nil {
		e.Time = t.UTC()
	}
	if j.RemoteHost != "" && j.RemoteHost != "[local]" {
		e.Client = j.RemoteHost
		if j.RemotePort != 0 {
			e.Client = fmt.Sprintf("%s:%d", j.RemoteHost, j.RemotePort)
		}
	}
	if j.PID != 0 {
		f["pid"] = j.PID
	}
	if j.Severity != "" {
		f["severity"] = j.Severity
	}
	if j.StateCode != "" {
		f["sqlstate"] = j.StateCode
	}
	// pgaudit's records begin "AUDIT: SESSION," or "AUDIT: OBJECT,": the
	// first bytes say which, without decoding the rest of the message.
	msg := head[i+len(key):]
	for _, k := range []string{"SESSION", "OBJECT"} {
		if bytes.HasPrefix(msg, []byte("AUDIT: "+k+",")) {
			f["audit_type"] = k
		}
	}
	return e
}

// pgJSON is one line of PostgreSQL 15's jsonlog (src/backend/utils/error/
// jsonlog.c). Absent keys stay zero.
type pgJSON struct {
	Timestamp        string `json:"timestamp"`
	User             string `json:"user"`
	DBName           string `json:"dbname"`
	PID              int64  `json:"pid"`
	RemoteHost       string `json:"remote_host"`
	RemotePort       int64  `json:"remote_port"`
	SessionID        string `json:"session_id"`
	LineNum          int64  `json:"line_num"`
	PS               string `json:"ps"`
	VXID             string `json:"vxid"`
	TXID             int64  `json:"txid"`
	Severity         string `json:"error_severity"`
	StateCode        string `json:"state_code"`
	Message          string `json:"message"`
	Detail           string `json:"detail"`
	Hint             string `json:"hint"`
	InternalQuery    string `json:"internal_query"`
	InternalPosition int64  `json:"internal_position"`
	Context          string `json:"context"`
	Statement        string `json:"statement"`
	CursorPosition   int64  `json:"cursor_position"`
	FuncName         string `json:"func_name"`
	FileName         string `json:"file_name"`
	FileLineNum      int64  `json:"file_line_num"`
	ApplicationName  string `json:"application_name"`
	BackendType      string `json:"backend_type"`
	LeaderPID        int64  `json:"leader_pid"`
	QueryID          int64  `json:"query_id"`
}

// pgTimeLayout is jsonlog's timestamp with log_timezone = 'UTC', which
// pgshield sets and protects so that times parse without ambiguity.
const pgTimeLayout = "2006-01-02 15:04:05.000 MST"

// ParseServerLogLine turns one jsonlog line into an audit Event, with every
// secret redacted (see Redact): pgaudit records (see fromPgaudit) become
// TypePostgresAudit with their CSV parsed into fields, everything else
// TypePostgresLog. A line that is not valid jsonlog is kept, redacted, as
// the reason of a TypePostgresStderr event, so nothing PostgreSQL says is
// dropped. now stamps events whose timestamp does not parse.
func ParseServerLogLine(line []byte, now time.Time) Event {
	var j pgJSON
	if err := json.Unmarshal(line, &j); err != nil {
		return ParseStderrLine(line, now)
	}
	e := Event{Time: now, Type: TypePostgresLog, User: j.User, Database: j.DBName}
	if t, err := time.Parse(pgTimeLayout, j.Timestamp); err == nil {
		e.Time = t.UTC()
	}
	if j.RemoteHost != "" && j.RemoteHost != "[local]" {
		e.Client = j.RemoteHost
		if j.RemotePort != 0 {
			e.Client = fmt.Sprintf("%s:%d", j.RemoteHost, j.RemotePort)
		}
	}
	f := map[string]any{}
	setInt := func(k string, v int64) {
		if v != 0 {
			f[k] = v
		}
	}
	setStr := func(k, v string) {
		if v != "" {
			f[k] = v
		}
	}
	setInt("pid", j.PID)
	setStr("session_id", j.SessionID)
	setInt("line_num", j.LineNum)
	setStr("backend_type", j.BackendType)
	setStr("application_name", j.ApplicationName)
	setInt("leader_pid", j.LeaderPID)
	setInt("query_id", j.QueryID)
	setStr("vxid", j.VXID)
	setInt("txid", j.TXID)

	var r redactor
	rec, isAudit := parsePgaudit(j.Message)
	if isAudit {
		r.redactPgaudit(&rec)
	}
	if isAudit && fromPgaudit(&j) {
		e.Type, e.Outcome = TypePostgresAudit, OutcomeSuccess
		f["audit_type"] = rec.auditType
		f["statement_id"] = rec.statementID
		f["substatement_id"] = rec.substatementID
		f["class"] = rec.class
		f["command"] = rec.command
		setStr("object_type", rec.objectType)
		setStr("object", rec.objectName)
		f["statement"] = rec.statement
		switch {
		case rec.params == nil:
			f["parameters"] = rec.paramsRaw // <not logged>, <none>, <previously logged>
		default:
			ps := make([]any, len(rec.params)) // redacted by redactPgaudit
			for i, p := range rec.params {
				ps[i] = p
			}
			f["parameters"] = ps
		}
		if rec.rows != "" {
			f["rows"] = rec.rows
		}
		scrubFields(&r, f)
		e.Fields = f
		return e
	}

	// SQL first, so that what it hides is known when the prose is read.
	stmt := r.text(j.Statement)
	iq := r.text(j.InternalQuery)
	msg := r.text(j.Message)
	if isAudit && rec.params != nil && r.sensitive {
		// Shaped like pgaudit's but not proven (see fromPgaudit): its
		// parameters go as a record's would.
		msg = r.text(rec.message())
	}
	detail := r.text(j.Detail)
	if r.sensitive {
		detail = redactLogParameters(detail)
	}
	e.Reason = msg
	switch j.Severity {
	case "ERROR", "FATAL", "PANIC":
		e.Outcome = OutcomeFailure
		if j.StateCode == "42501" {
			e.Type = TypePrivilegeRefused
		}
	}
	setStr("severity", j.Severity)
	setStr("sqlstate", j.StateCode)
	setStr("detail", detail)
	setStr("hint", r.text(j.Hint))
	setStr("context", r.text(j.Context))
	setStr("statement", stmt)
	setStr("internal_query", iq)
	setInt("cursor_position", j.CursorPosition)
	setInt("internal_position", j.InternalPosition)
	setStr("ps", j.PS)
	if j.FuncName != "" {
		f["location"] = fmt.Sprintf("%s, %s:%d", j.FuncName, j.FileName, j.FileLineNum)
	}
	e.Reason = r.scrub(e.Reason)
	scrubFields(&r, f)
	e.Fields = f
	return e
}

// scrubFields removes the record's known secrets from its string fields.
func scrubFields(r *redactor, f map[string]any) {
	for k, v := range f {
		switch x := v.(type) {
		case string:
			f[k] = r.scrub(x)
		case []any:
			for i, p := range x {
				if s, ok := p.(string); ok {
					x[i] = r.scrub(s)
				}
			}
		}
	}
}

// logParamRE matches the values in PostgreSQL's "parameters: $1 = '...',
// $2 = NULL" detail (log_parameter_max_length and ..._on_error).
var logParamRE = regexp.MustCompile(`(\$[0-9]+ = )('(?:[^']|'')*(?:'|$)|NULL)`)

// redactLogParameters hides bound parameter values when the statement they
// belong to carried a secret (UPDATE users SET password = $1).
func redactLogParameters(detail string) string {
	return logParamRE.ReplaceAllString(detail, "${1}"+Redacted)
}

// ParseStderrLine turns a line PostgreSQL wrote outside its logging
// protocol into a redacted TypePostgresStderr event.
func ParseStderrLine(line []byte, now time.Time) Event {
	s := strings.TrimRight(string(line), "\r\n")
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	return Event{Time: now, Type: TypePostgresStderr, Reason: Redact(s)}
}

// pgauditRecord is the CSV that follows "AUDIT: " in a pgaudit message:
// AUDIT_TYPE, STATEMENT_ID, SUBSTATEMENT_ID, CLASS, COMMAND, OBJECT_TYPE,
// OBJECT_NAME, STATEMENT, PARAMETER and, with pgaudit.log_rows, ROWS.
type pgauditRecord struct {
	auditType, statementID, substatementID, class, command string
	objectType, objectName, statement                      string
	paramsRaw                                              string
	params                                                 []string // nil unless logged
	rows                                                   string
}

// fromPgaudit reports whether pgaudit itself wrote the record. Any role
// can log a message that starts with "AUDIT: " (RAISE LOG in a DO block),
// but not choose the C source location that jsonlog adds with
// log_error_verbosity = verbose, which pgshield sets and protects: every
// pgaudit record, SESSION or OBJECT, comes from the one ereport in
// pgaudit.c's log_audit_event (pgaudit 1.7), a user's RAISE from
// pl_exec.c. Without the location (verbosity lowered by a superuser) a
// genuine record is kept as an ordinary log record, never promoted.
func fromPgaudit(j *pgJSON) bool {
	return j.FileName == "pgaudit.c" && j.FuncName == "log_audit_event"
}

// parsePgaudit parses a pgaudit message. It reports false for any other
// message, so an ordinary message that merely starts with "AUDIT: " is
// kept as a log line.
func parsePgaudit(msg string) (pgauditRecord, bool) {
	var rec pgauditRecord
	body, ok := strings.CutPrefix(msg, "AUDIT: ")
	if !ok {
		return rec, false
	}
	fs, ok := parseCSV(body)
	if !ok || len(fs) != 9 && len(fs) != 10 || fs[0] != "SESSION" && fs[0] != "OBJECT" {
		return rec, false
	}
	rec = pgauditRecord{auditType: fs[0], statementID: fs[1], substatementID: fs[2], class: fs[3],
		command: fs[4], objectType: fs[5], objectName: fs[6], statement: fs[7], paramsRaw: fs[8]}
	if len(fs) == 10 {
		rec.rows = fs[9]
	}
	switch fs[8] {
	case "<not logged>", "<none>", "<previously logged>":
	default:
		// The parameters are themselves a CSV list, quoted as one field.
		ps, ok := parseCSV(fs[8])
		if !ok {
			ps = []string{fs[8]}
		}
		rec.params = ps
		rec.paramsRaw = ""
	}
	return rec, true
}

// redactPgaudit redacts the statement of rec and its parameters: all of
// them when the statement carried a secret (ALTER ROLE r PASSWORD $1).
func (r *redactor) redactPgaudit(rec *pgauditRecord) {
	rec.statement = r.text(rec.statement)
	for i, p := range rec.params {
		if r.sensitive {
			rec.params[i] = Redacted
		} else {
			rec.params[i] = r.text(p)
		}
	}
}

// message writes rec back as pgaudit's message.
func (rec pgauditRecord) message() string {
	params := rec.paramsRaw
	if rec.params != nil {
		ps := make([]string, len(rec.params))
		for i, p := range rec.params {
			ps[i] = csvField(p)
		}
		params = csvField(strings.Join(ps, ","))
	}
	fs := []string{rec.auditType, rec.statementID, rec.substatementID, rec.class, rec.command,
		rec.objectType, rec.objectName, rec.statement}
	for i, f := range fs {
		fs[i] = csvField(f)
	}
	fs = append(fs, params)
	if rec.rows != "" {
		fs = append(fs, csvField(rec.rows))
	}
	return "AUDIT: " + strings.Join(fs, ",")
}

// csvField quotes a field as pgaudit's append_valid_csv does.
func csvField(s string) string {
	if strings.ContainsAny(s, ",\"\r\n") {
		return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
	}
	return s
}

// parseCSV splits one line of pgaudit's CSV: a field is quoted (with ""
// for a quote) when it holds a comma, quote, CR or LF, and bare otherwise.
// ok is false for a malformed quoted field.
func parseCSV(s string) ([]string, bool) {
	var out []string
	for i := 0; ; {
		if i < len(s) && s[i] == '"' {
			var b strings.Builder
			j := i + 1
			for {
				if j >= len(s) {
					return nil, false
				}
				if s[j] == '"' {
					if j+1 < len(s) && s[j+1] == '"' {
						b.WriteByte('"')
						j += 2
						continue
					}
					j++
					break
				}
				b.WriteByte(s[j])
				j++
			}
			out = append(out, b.String())
			if j == len(s) {
				return out, true
			}
			if s[j] != ',' {
				return nil, false
			}
			i = j + 1
			continue
		}
		k := strings.IndexByte(s[i:], ',')
		if k < 0 {
			return append(out, s[i:]), true
		}
		out = append(out, s[i:i+k])
		i += k + 1
	}
}
