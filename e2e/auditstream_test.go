package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// auditRecords runs `audit search` with args and decodes the records.
func auditRecords(t *testing.T, s *server, args ...string) []map[string]any {
	t.Helper()
	out := mustCLI(t, s, append([]string{"audit", "search", "-o", "json"}, args...)...)
	var rs []map[string]any
	if err := json.Unmarshal([]byte(out), &rs); err != nil {
		t.Fatalf("audit search -o json: %v\n%s", err, out)
	}
	return rs
}

// waitRecord polls the audit log until a record matching ok appears: the
// server log reaches it asynchronously, through a pipe.
func waitRecord(t *testing.T, s *server, what string, ok func(map[string]any) bool, args ...string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		for _, r := range auditRecords(t, s, args...) {
			if ok(r) {
				return r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no audit record %s after 20s (search %v)", what, args)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func fields(r map[string]any) map[string]any {
	f, _ := r["fields"].(map[string]any)
	return f
}

// scanFiles returns the regular files under roots that contain any of
// needles. FIFOs, sockets and devices are skipped (reading a pipe would
// block); files are streamed, so the 1 GiB sparse volume image is read too.
func scanFiles(t *testing.T, needles []string, roots ...string) []string {
	t.Helper()
	var hits []string
	maxLen := 0
	for _, n := range needles {
		maxLen = max(maxLen, len(n))
	}
	for _, root := range roots {
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				if os.IsNotExist(err) || os.IsPermission(err) {
					return nil
				}
				return err
			}
			if !d.Type().IsRegular() {
				return nil
			}
			f, err := os.Open(p)
			if err != nil {
				return nil // vanished meanwhile (a temp file)
			}
			defer f.Close()
			buf := make([]byte, 1<<20+maxLen)
			carry := 0
			for {
				n, rerr := f.Read(buf[carry:])
				chunk := buf[:carry+n]
				for _, needle := range needles {
					if bytes.Contains(chunk, []byte(needle)) {
						hits = append(hits, p)
						return nil
					}
				}
				if rerr == io.EOF {
					return nil
				}
				if rerr != nil {
					return nil
				}
				carry = min(len(chunk), maxLen)
				copy(buf, chunk[len(chunk)-carry:])
			}
		})
		if err != nil {
			t.Fatalf("scanning %s: %v", root, err)
		}
	}
	return hits
}

// TestAuditStream exercises the one audit stream on a server of its own:
// pgaudit records with parsed fields, secrets that reach no file, the log
// on the encrypted volume across a lock, fail-closed, syslog forwarding
// and audited management calls.
func TestAuditStream(t *testing.T) {
	s := startedServer(t, "auditstream")
	adminDSN := s.dsn("user=" + admin + " sslmode=require")
	sqlAsAdmin := func(sql string) (string, error) { return psql(t, adminDSN, adminPassword, "-c", sql) }

	t.Run("pgaudit READ record with parsed fields", func(t *testing.T) {
		mustCLI(t, s, "parameter", "set", "pgaudit.log", "read,role")
		// One record per relation, naming it (pgaudit's session records
		// leave the object empty otherwise).
		mustCLI(t, s, "parameter", "set", "pgaudit.log_relation", "on")
		if out, err := sqlAsAdmin("CREATE TABLE audited_accounts (id int, note text)"); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		if out, err := sqlAsAdmin("SELECT note FROM audited_accounts WHERE id = 7"); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		r := waitRecord(t, s, "pgaudit READ of audited_accounts", func(r map[string]any) bool {
			f := fields(r)
			return f["class"] == "READ" && f["object"] == "public.audited_accounts"
		}, "--event", "postgres.audit", "--user", admin)
		f := fields(r)
		if f["command"] != "SELECT" || f["object_type"] != "TABLE" || f["audit_type"] != "SESSION" ||
			f["statement"] != "SELECT note FROM audited_accounts WHERE id = 7" || f["parameters"] != "<not logged>" ||
			r["database"] != "postgres" || r["outcome"] != "success" {
			t.Errorf("pgaudit record = %v; want parsed class, command, object, statement, parameters", r)
		}
	})

	t.Run("secrets reach no file", func(t *testing.T) {
		const secret = "Unique-Secret-42"
		token := "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhdWRpdC10YXJnZXQiLCJpYXQiOjE3MDAwMDAwMDB9.c2lnbmF0dXJlLWF1ZGl0LXN0cmVhbS10ZXN0"
		// Every statement in the server log too, so PostgreSQL's own
		// messages carry the text, not just pgaudit's.
		mustCLI(t, s, "parameter", "set", "log_statement", "all")
		for _, sql := range []string{
			"CREATE ROLE audit_target LOGIN",
			"ALTER ROLE audit_target PASSWORD '" + secret + "'",
		} {
			if out, err := sqlAsAdmin(sql); err != nil {
				t.Fatalf("%s: %v %s", sql, err, out)
			}
		}
		// Failing variants: PostgreSQL echoes the statement (log_min_error_statement)
		// and, for syntax errors, the text near the error.
		for _, sql := range []string{
			"ALTER ROLE no_such_role PASSWORD '" + secret + "'",
			"ALTER ROLE audit_target PASSWORD " + secret,
			"ALTER ROLE audit_target PASSWORD '" + secret,
		} {
			if out, err := sqlAsAdmin(sql); err == nil {
				t.Fatalf("%s succeeded: %s", sql, out)
			}
		}
		// A login with a token-like string as the password.
		if out, err := psql(t, s.dsn("user=audit_target sslmode=require"), token, "-c", "SELECT 1"); err == nil {
			t.Fatalf("login with a wrong password succeeded: %s", out)
		}
		// The records are there, redacted: the statements were audited,
		// not just lost.
		waitRecord(t, s, "for the failed ALTER ROLE", func(r map[string]any) bool {
			return r["reason"] == `role "no_such_role" does not exist` &&
				fields(r)["statement"] == "ALTER ROLE no_such_role PASSWORD <redacted>"
		}, "--event", "postgres.log", "--user", admin)
		waitRecord(t, s, "pgaudit ROLE", func(r map[string]any) bool {
			return fields(r)["class"] == "ROLE" && fields(r)["statement"] == "ALTER ROLE audit_target PASSWORD <redacted>"
		}, "--event", "postgres.audit")
		waitRecord(t, s, "for the unterminated literal", func(r map[string]any) bool {
			return fields(r)["sqlstate"] == "42601" && strings.Contains(fmt.Sprint(fields(r)["statement"]), "PASSWORD <redacted>") &&
				!strings.Contains(fmt.Sprint(fields(r)["statement"]), "Secret")
		}, "--event", "postgres.log")
		waitRecord(t, s, "auth.failure for audit_target", func(r map[string]any) bool { return true },
			"--event", "auth.failure", "--user", "audit_target")
		// Past the log's deferred fsync.
		time.Sleep(300 * time.Millisecond)

		roots := []string{s.dataDir, "/etc/pgshield", "/var/log/postgresql"}
		if hits := scanFiles(t, []string{secret, token}, roots...); len(hits) > 0 {
			t.Errorf("the secret or the token is in %v", hits)
		}
		// The same scan finds it where it is planted, in the data
		// directory and on the encrypted volume: it can fail.
		planted := []string{filepath.Join(s.dataDir, "log", "planted.txt"), filepath.Join(s.dataDir, "volume", "data", "planted.txt")}
		for _, p := range planted {
			if err := os.WriteFile(p, []byte("x "+secret+" y"), 0o600); err != nil {
				t.Fatal(err)
			}
			defer os.Remove(p)
		}
		tokenFile := filepath.Join(s.dataDir, "planted-token.bin")
		if err := os.WriteFile(tokenFile, append(bytes.Repeat([]byte{0}, 3<<20-10), token...), 0o600); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(tokenFile)
		hits := scanFiles(t, []string{secret, token}, roots...)
		want := append(planted, tokenFile)
		if !slices.Equal(slices.Sorted(slices.Values(hits)), slices.Sorted(slices.Values(want))) {
			t.Errorf("scan with planted secrets found %v; want exactly %v", hits, want)
		}
		mustCLI(t, s, "parameter", "set", "log_statement", "none")
	})

	t.Run("management API calls are audited", func(t *testing.T) {
		r := waitRecord(t, s, "api.call for parameter set", func(r map[string]any) bool {
			return fields(r)["path"] == "/v1/parameters/log_statement"
		}, "--event", "api.call")
		f := fields(r)
		if f["method"] != "PUT" || f["peer_uid"] != float64(0) || f["peer_pid"] == nil || r["outcome"] != "success" {
			t.Errorf("api.call record = %v; want PUT by uid 0 with a pid", r)
		}
		if _, err := s.cli("parameter", "set", "pgshield.audit_retention_days", "5000"); err == nil {
			t.Fatal("parameter set audit_retention_days 5000 succeeded")
		}
		waitRecord(t, s, "failed api.call", func(r map[string]any) bool {
			return r["outcome"] == "failure" && fields(r)["path"] == "/v1/parameters/pgshield.audit_retention_days"
		}, "--event", "api.call")
	})

	t.Run("events while locked are kept", func(t *testing.T) {
		mustCLI(t, s, "key", "lock")
		out, err := psql(t, adminDSN, adminPassword, "-c", "SELECT 1")
		if err == nil || !strings.Contains(out, "server is locked") {
			t.Fatalf("login while locked = %v %s; want refused", err, out)
		}
		if _, err := s.cli("audit", "tail"); err == nil {
			t.Error("audit tail while locked succeeded; the log is on the locked volume")
		}
		mustCLI(t, s, "key", "unlock")
		r := waitRecord(t, s, "connection.refused while locked", func(r map[string]any) bool {
			return strings.Contains(fmt.Sprint(r["reason"]), "server is locked")
		}, "--event", "connection.refused", "--user", admin)
		locked := waitRecord(t, s, "key.state Locked", func(r map[string]any) bool { return fields(r)["state"] == "Locked" },
			"--event", "key.state")
		if locked["seq"].(float64) >= r["seq"].(float64) {
			t.Errorf("key.state Locked (seq %v) does not precede the refusal (seq %v)", locked["seq"], r["seq"])
		}
		if out := mustCLI(t, s, "audit", "verify"); !strings.Contains(out, "true") {
			t.Errorf("audit verify after lock and unlock: %s", out)
		}
	})

	t.Run("fail closed", func(t *testing.T) {
		live := filepath.Join(s.dataDir, "volume", "data", "audit", "audit.jsonl")
		// A real write failure: ext4 refuses every write to an immutable
		// file, even through the descriptor pgshield holds open.
		if out, err := exec.Command("chattr", "+i", live).CombinedOutput(); err != nil {
			t.Fatalf("chattr +i: %v %s", err, out)
		}
		defer exec.Command("chattr", "-i", live).Run()
		mustCLI(t, s, "parameter", "set", "pgshield.audit_fail_closed", "on") // its own record fails to write
		out, err := psql(t, adminDSN, adminPassword, "-c", "SELECT 1")
		if err == nil || !strings.Contains(out, "audit log cannot be written") || !strings.Contains(out, "audit_fail_closed") {
			t.Fatalf("login with fail_closed on and the audit log failing = %v %s; want refused", err, out)
		}
		conn, err := pgxConnect(t, adminDSN+" password="+adminPassword)
		if err == nil {
			conn.Close(t.Context())
			t.Fatal("pgx login succeeded with fail_closed on")
		}
		if code := sqlState(err); code != "57P03" {
			t.Errorf("SQLSTATE = %q (%v); want 57P03", code, err)
		}
		mustCLI(t, s, "parameter", "set", "pgshield.audit_fail_closed", "off")
		if out, err := psql(t, adminDSN, adminPassword, "-c", "SELECT 1"); err != nil {
			t.Fatalf("login with fail_closed off = %v %s; want allowed (events kept in memory)", err, out)
		}
		if out, err := exec.Command("chattr", "-i", live).CombinedOutput(); err != nil {
			t.Fatalf("chattr -i: %v %s", err, out)
		}
		gap := waitRecord(t, s, "gap record for the outage", func(r map[string]any) bool { return fields(r)["kind"] == "outage" },
			"--event", "audit.gap")
		if !strings.Contains(fmt.Sprint(gap["reason"]), "operation not permitted") {
			t.Errorf("gap record reason = %v; want the write error", gap["reason"])
		}
		// The events of the outage follow it, the session included.
		waitRecord(t, s, "the session started during the outage", func(r map[string]any) bool {
			return r["seq"].(float64) > gap["seq"].(float64)
		}, "--event", "session.start", "--user", admin)
		if out := mustCLI(t, s, "audit", "verify"); !strings.Contains(out, "true") {
			t.Errorf("audit verify after the outage: %s", out)
		}
	})

	t.Run("syslog RFC 5424", func(t *testing.T) {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		mustCLI(t, s, "parameter", "set", "pgshield.audit_syslog", "udp://"+pc.LocalAddr().String())
		defer s.cli("parameter", "set", "pgshield.audit_syslog", "")
		_, _ = psql(t, adminDSN, "wrong-password", "-c", "SELECT 1")
		re := regexp.MustCompile(`^<(\d{1,3})>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z \S+ pgshield \d+ (\S+) \[meta sequenceId="\d+"\] (\{.*\})$`)
		buf := make([]byte, 65536)
		deadline := time.Now().Add(15 * time.Second)
		for {
			_ = pc.SetReadDeadline(deadline)
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				t.Fatalf("no auth.failure message over UDP: %v", err)
			}
			m := re.FindStringSubmatch(string(buf[:n]))
			if m == nil {
				t.Fatalf("datagram is not RFC 5424 as expected: %q", buf[:n])
			}
			if m[2] == "auth.failure" {
				if m[1] != "108" || !strings.Contains(m[3], `"reason":"wrong password"`) || !strings.Contains(m[3], `"hash":"`) {
					t.Errorf("auth.failure message = %q; want PRI 108 and the chained record", buf[:n])
				}
				break
			}
		}
	})

	if out := mustCLI(t, s, "audit", "verify"); !strings.Contains(out, "true") {
		t.Errorf("audit verify at the end: %s", out)
	}
}
