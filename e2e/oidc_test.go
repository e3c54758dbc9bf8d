package e2e

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshield/pgshield/internal/testutil/oidcissuer"
)

const oidcAudience = "api://pgshield-e2e"

// TestOIDCTokenAuthentication runs a real OIDC issuer over HTTPS on loopback
// and logs in with real signed access tokens through psql and pgx.
func TestOIDCTokenAuthentication(t *testing.T) {
	is := oidcissuer.Start(t)
	s, err := newServer("oidc")
	if s != nil {
		defer s.stop()
	}
	if err != nil {
		t.Fatal(err)
	}
	ca, err := is.WriteCA(baseDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range [][2]string{{"pgshield.oidc_issuer", is.URL}, {"pgshield.oidc_audience", oidcAudience},
		{"pgshield.oidc_ca_file", ca}, {"pgshield.oidc_jwks_refresh_interval", "1s"}} {
		mustCLI(t, s, "parameter", "set", kv[0], kv[1])
	}
	for _, p := range [][]string{
		{"--name", "alice@contoso.com", "--object-id", "oid-alice"},
		{"--name", "bob@contoso.com", "--object-id", "oid-bob"},
		{"--name", "Contoso DBAs", "--object-id", "oid-group-dbas", "--type", "group"},
		{"--name", "ingest-app", "--object-id", "oid-app", "--type", "service"},
		{"--name", "carol@contoso.com", "--object-id", "oid-carol", "--admin"},
	} {
		mustCLI(t, s, append([]string{"principal", "create"}, p...)...)
	}

	t.Run("principal CLI", func(t *testing.T) {
		var list []struct {
			Name     string `json:"name"`
			ObjectID string `json:"object_id"`
			Type     string `json:"type"`
			Admin    bool   `json:"admin"`
		}
		out := mustCLI(t, s, "principal", "list", "-o", "json")
		if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 5 {
			t.Fatalf("principal list = %s (%v); want the 5 principals", out, err)
		}
		found := false
		for _, p := range list {
			if p.Name == "Contoso DBAs" {
				found = true
				if p.ObjectID != "oid-group-dbas" || p.Type != "group" || p.Admin {
					t.Errorf("principal %+v; want the Contoso DBAs group", p)
				}
			}
		}
		if !found {
			t.Errorf("principal list = %s; want the Contoso DBAs group in it", out)
		}
		for _, c := range []struct {
			args []string
			code int
			msg  string
		}{
			{[]string{"--name", "alice@contoso.com", "--object-id", "oid-x"}, 5, "already exists"},
			{[]string{"--name", "alice2@contoso.com", "--object-id", "oid-alice"}, 5, "already mapped"},
			{[]string{"--name", "X", "--object-id", "oid-x", "--type", "robot"}, 5, "user, group or service"},
			// A plain name would be offered SCRAM, never asked for a token.
			{[]string{"--name", "dbas", "--object-id", "oid-x"}, 5, "must be one SQL has to quote"},
			{[]string{"--name", "postgres", "--object-id", "oid-x"}, 5, "reserved"},
			{[]string{"--name", "pg_x", "--object-id", "oid-x"}, 5, "pg_ prefix"},
			{[]string{"--name", "Y", "--object-id", "has space"}, 5, "invalid object ID"},
			{[]string{"--object-id", "oid-x"}, 2, "name"},
		} {
			out, err := s.cli(append([]string{"principal", "create"}, c.args...)...)
			if exitCodeOf(err) != c.code || !strings.Contains(out, c.msg) {
				t.Errorf("principal create %v = exit %d %q; want exit %d mentioning %q", c.args, exitCodeOf(err), out, c.code, c.msg)
			}
		}
		if out, err := s.cli("principal", "delete", "--name", "nobody"); exitCodeOf(err) != 6 {
			t.Errorf("principal delete nobody = exit %d %q; want 6 (not found)", exitCodeOf(err), out)
		}
		// Only a principal can be deleted this way, not any role.
		if out, err := s.cli("principal", "delete", "--name", admin); exitCodeOf(err) != 6 {
			t.Errorf("principal delete %s = exit %d %q; want 6", admin, exitCodeOf(err), out)
		}
		if got := s.superSQL(t, `SELECT rolcanlogin::text || rolcreaterole::text || (rolpassword IS NULL)::text FROM pg_authid WHERE rolname = 'carol@contoso.com'`); got != "truetruetrue" {
			t.Errorf("admin principal role = %q; want LOGIN CREATEROLE and no password", got)
		}
	})

	tok := func(oid string, mod func(oidcissuer.Claims)) string {
		c := is.Access(oidcAudience, oid, time.Hour)
		if mod != nil {
			mod(c)
		}
		v, err := oidcissuer.Sign(is.Key(jose.RS256), "", c)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	dsnFor := func(user, extra string) string {
		return s.dsn("user='" + user + "' sslmode=verify-full " + extra)
	}

	t.Run("psql and pgx log in with a token", func(t *testing.T) {
		out, err := psql(t, dsnFor("alice@contoso.com", ""), tok("oid-alice", nil), "-c", "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
		if err != nil || out != "alice@contoso.com|t" {
			// ssl is t: the client's TLS session with the gateway, carried
			// into PostgreSQL by pgshield_guard (issue #14).
			t.Fatalf("psql with a token = %q, %v; want alice@contoso.com|t", out, err)
		}
		// How the session logged in, as the session itself reads it.
		out, err = psql(t, dsnFor("alice@contoso.com", "dbname=postgres"), tok("oid-alice", nil), "-c",
			"SELECT method, principal_object_id, issuer <> '' FROM pgshield.sessions WHERE pid = pg_backend_pid()")
		if err != nil || out != "token|oid-alice|t" {
			t.Fatalf("pgshield.sessions for a token login = %q, %v; want token|oid-alice|t", out, err)
		}
		conn, err := pgxConnect(t, s.dsn("user=ingest-app sslmode=verify-full password="+tok("oid-app", nil)))
		if err != nil {
			t.Fatalf("pgx with a service principal's token: %v", err)
		}
		var who string
		_ = conn.QueryRow(context.Background(), "SELECT current_user").Scan(&who)
		conn.Close(context.Background())
		if who != "ingest-app" {
			t.Errorf("current_user = %q; want ingest-app", who)
		}
	})

	t.Run("group principal", func(t *testing.T) {
		member := tok("oid-dave", func(c oidcissuer.Claims) { c["groups"] = []string{"oid-x", "oid-group-dbas"} })
		if out, err := psql(t, dsnFor("Contoso DBAs", ""), member, "-c", "SELECT current_user"); err != nil || out != "Contoso DBAs" {
			t.Fatalf("group login = %q, %v; want Contoso DBAs", out, err)
		}
		stranger := tok("oid-erin", func(c oidcissuer.Claims) { c["groups"] = []string{"oid-x"} })
		if out, err := psql(t, dsnFor("Contoso DBAs", ""), stranger, "-c", "SELECT 1"); err == nil {
			t.Fatalf("group login without membership succeeded: %s", out)
		}
	})

	// The first authentication request depends on the name's shape only:
	// a token request for names SQL must quote, SCRAM for plain ones.
	t.Run("a principal looks like an unknown name of the same shape", func(t *testing.T) {
		// first returns the first request for user and, after a cleartext
		// request answered with a bad token, the refusal (name elided).
		first := func(user string) (kind, refusal string) {
			r := dialTLS(t, s)
			r.send(startup(user))
			switch m := r.receive().(type) {
			case *pgproto3.AuthenticationCleartextPassword:
				r.send(&pgproto3.PasswordMessage{Password: "not-a-token"})
				e := r.expectError("28P01")
				return "cleartext", e.Severity + " " + strings.ReplaceAll(e.Message, `"`+user+`"`, `"<user>"`)
			case *pgproto3.AuthenticationSASL:
				return fmt.Sprint("SASL ", m.AuthMechanisms), ""
			default:
				t.Fatalf("%s: first answer %#v; want an authentication request", user, m)
				return "", ""
			}
		}
		for _, pair := range [][2]string{{"alice@contoso.com", "nobody@contoso.com"}, {"Contoso DBAs", "Nobody DBAs"}} {
			k1, r1 := first(pair[0])
			k2, r2 := first(pair[1])
			if k1 != "cleartext" || k1 != k2 || r1 != r2 || r1 != `FATAL password authentication failed for user "<user>"` {
				t.Errorf("principal %q: %s, %q; unknown %q: %s, %q; want the same cleartext request and 28P01",
					pair[0], k1, r1, pair[1], k2, r2)
			}
		}
		for _, user := range []string{"nobody_here", admin} {
			if k, _ := first(user); k != "SASL [SCRAM-SHA-256-PLUS SCRAM-SHA-256]" {
				t.Errorf("%s: first request %s; want SCRAM", user, k)
			}
		}
	})

	t.Run("a password role whose name SQL must quote logs in with its password over TLS", func(t *testing.T) {
		if out, err := psql(t, s.dsn("user="+admin+" sslmode=verify-full"), adminPassword, "-c",
			`CREATE ROLE "App-User" LOGIN PASSWORD 'App-User-Pass-1'`); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		// PostgreSQL made the SCRAM verifier; the gateway checks the
		// cleartext password against it.
		if out, err := psql(t, dsnFor("App-User", ""), "App-User-Pass-1", "-c", "SELECT current_user"); err != nil || out != "App-User" {
			t.Fatalf("App-User login = %q, %v; want App-User", out, err)
		}
		if out, err := psql(t, dsnFor("App-User", ""), "App-User-Pass-2", "-c", "SELECT 1"); err == nil ||
			!strings.Contains(out, `password authentication failed for user "App-User"`) {
			t.Fatalf("App-User with a wrong password = %q, %v; want 28P01", out, err)
		}
	})

	t.Run("admin principal creates roles, and roles made by admins cannot take it over", func(t *testing.T) {
		if out, err := psql(t, dsnFor("carol@contoso.com", ""), tok("oid-carol", nil), "-c", "CREATE ROLE made_by_carol"); err != nil {
			t.Fatalf("admin principal CREATE ROLE: %v %s", err, out)
		}
		if got := s.superSQL(t, `SELECT current_setting('pgshield_guard.admin_roles')`); !strings.Contains(got, "carol@contoso.com") {
			t.Fatalf("pgshield_guard.admin_roles = %q; want the admin principal in it", got)
		}
		if out, err := psql(t, s.dsn("user="+admin+" sslmode=verify-full"), adminPassword, "-c",
			"CREATE ROLE sub_admin LOGIN CREATEROLE PASSWORD 'Sub-Admin-Pass-1'"); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		out, err := psql(t, s.dsn("user=sub_admin sslmode=verify-full"), "Sub-Admin-Pass-1", "-c", `ALTER ROLE "carol@contoso.com" NOLOGIN`)
		if err == nil || !strings.Contains(out, "permission denied") && !strings.Contains(out, "42501") {
			t.Fatalf("a role made by the admin altering the admin principal = %q, %v; want it refused", out, err)
		}
	})

	// Rejections: each one the same 28P01 to the client.
	rsa := is.Key(jose.RS256)
	pubDER, _ := x509.MarshalPKIXPublicKey(rsa.Priv.Public())
	hs, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})},
		(&jose.SignerOptions{}).WithHeader("kid", rsa.ID))
	claims, _ := json.Marshal(is.Access(oidcAudience, "oid-alice", time.Hour))
	hsObj, _ := hs.Sign(claims)
	hsTok, _ := hsObj.CompactSerialize()
	b64 := func(v any) string { b, _ := json.Marshal(v); return base64.RawURLEncoding.EncodeToString(b) }
	rogue, err := is.NewKey(jose.RS256)
	if err != nil {
		t.Fatal(err)
	}
	rogueTok, _ := oidcissuer.Sign(rogue, "", is.Access(oidcAudience, "oid-alice", time.Hour))
	good := tok("oid-alice", nil)
	big := tok("oid-alice", func(c oidcissuer.Claims) { c["pad"] = strings.Repeat("p", 65<<10) })
	cases := []struct{ name, user, token, reason string }{
		{"alg none", "alice@contoso.com", b64(map[string]string{"alg": "none"}) + "." + b64(is.Access(oidcAudience, "oid-alice", time.Hour)) + ".", `"none" is not allowed`},
		{"HS256 with the RSA public key", "alice@contoso.com", hsTok, `"HS256" is not allowed`},
		{"unknown kid", "alice@contoso.com", rogueTok, "no signing key"},
		{"expired", "alice@contoso.com", tok("oid-alice", func(c oidcissuer.Claims) { c["exp"] = time.Now().Add(-5 * time.Minute).Unix() }), "expired"},
		{"nbf in the future", "alice@contoso.com", tok("oid-alice", func(c oidcissuer.Claims) { c["nbf"] = time.Now().Add(10 * time.Minute).Unix() }), "not valid before"},
		{"wrong iss", "alice@contoso.com", tok("oid-alice", func(c oidcissuer.Claims) { c["iss"] = "https://login.evil.example/" }), "not the configured issuer"},
		{"wrong aud", "alice@contoso.com", tok("oid-alice", func(c oidcissuer.Claims) { c["aud"] = "api://other" }), "audience"},
		{"alice's token as bob", "bob@contoso.com", good, `not the role's object ID "oid-bob"`},
		{"ID token", "alice@contoso.com", tok("oid-alice", func(c oidcissuer.Claims) { c["nonce"] = "n1"; c["at_hash"] = "x" }), "ID token"},
		{"truncated signature", "alice@contoso.com", good[:len(good)-12], "bad signature"},
		{"65 KiB token", "alice@contoso.com", big, "over the 16384-byte limit"},
	}
	for _, c := range cases {
		t.Run("refused: "+c.name, func(t *testing.T) {
			_, err := pgxConnect(t, dsnFor(c.user, "password="+c.token))
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "28P01" || pe.Message != `password authentication failed for user "`+c.user+`"` {
				t.Fatalf("connect = %v; want the uniform 28P01", err)
			}
		})
	}
	t.Run("refused: token over a plaintext connection", func(t *testing.T) {
		mustCLI(t, s, "parameter", "set", "require_secure_transport", "off")
		defer mustCLI(t, s, "parameter", "set", "require_secure_transport", "on")
		out, err := psql(t, s.dsn("user='alice@contoso.com' sslmode=disable"), good, "-c", "SELECT 1")
		if err == nil || !strings.Contains(out, "password authentication failed") {
			t.Fatalf("plaintext token login = %q, %v; want 28P01", out, err)
		}
		// Offered SCRAM like any name: a token is never asked for in the clear.
		c := dialRaw(t, s)
		fe := pgproto3.NewFrontend(c, c)
		fe.Send(startup("alice@contoso.com"))
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		m, err := fe.Receive()
		if sasl, ok := m.(*pgproto3.AuthenticationSASL); err != nil || !ok || fmt.Sprint(sasl.AuthMechanisms) != "[SCRAM-SHA-256]" {
			t.Fatalf("first answer in plaintext = %#v, %v; want AuthenticationSASL [SCRAM-SHA-256]", m, err)
		}
	})
	t.Run("audit records each reason, never the token", func(t *testing.T) {
		out := mustCLI(t, s, "audit", "search", "--event", "auth.failure", "-o", "json")
		for _, c := range cases {
			if !strings.Contains(out, strings.ReplaceAll(c.reason, `"`, `\"`)) {
				t.Errorf("no auth.failure with reason %q in the audit log", c.reason)
			}
		}
		if !strings.Contains(out, "over TLS only") {
			t.Errorf("no auth.failure for the plaintext token login")
		}
		// A token's signature is unique; it must be in no file pgshield
		// writes (logs, audit, configuration).
		sig := good[strings.LastIndexByte(good, '.')+1:]
		for _, dir := range []string{s.dataDir} {
			_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
				// Regular files only: the server log's named pipes would block.
				if err != nil || !d.Type().IsRegular() || strings.HasSuffix(p, ".img") {
					return nil
				}
				if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), sig) {
					t.Errorf("%s contains a token", p)
				}
				return nil
			})
		}
	})

	t.Run("issuer key rotation is picked up without restart", func(t *testing.T) {
		next, err := is.NewKey(jose.ES256)
		if err != nil {
			t.Fatal(err)
		}
		is.Replace(next)
		c := is.Access(oidcAudience, "oid-alice", time.Hour)
		rotated, err := oidcissuer.Sign(next, "at+jwt", c)
		if err != nil {
			t.Fatal(err)
		}
		// The refresh interval is 1 s here; the first try may fall inside it.
		var out string
		for i := 0; i < 5; i++ {
			if out, err = psql(t, dsnFor("alice@contoso.com", ""), rotated, "-c", "SELECT current_user"); err == nil {
				break
			}
			time.Sleep(time.Second)
		}
		if err != nil || out != "alice@contoso.com" {
			t.Fatalf("login with the rotated key = %q, %v", out, err)
		}
		// The retired key no longer works.
		if _, err := psql(t, dsnFor("alice@contoso.com", ""), good, "-c", "SELECT 1"); err == nil {
			t.Errorf("token of the retired key still accepted")
		}
		is.Publish(rsa)
	})

	t.Run("password_auth off refuses passwords, keeps tokens", func(t *testing.T) {
		mustCLI(t, s, "parameter", "set", "pgshield.password_auth", "off")
		defer mustCLI(t, s, "parameter", "set", "pgshield.password_auth", "on")
		out, err := psql(t, s.dsn("user="+admin+" sslmode=verify-full"), adminPassword, "-c", "SELECT 1")
		if err == nil || !strings.Contains(out, "password authentication failed") {
			t.Fatalf("SCRAM login with password_auth off = %q, %v; want 28P01", out, err)
		}
		next := is.Keys()[0]
		c := is.Access(oidcAudience, "oid-alice", time.Hour)
		v, err := oidcissuer.Sign(next, "", c)
		if err != nil {
			t.Fatal(err)
		}
		if out, err := psql(t, dsnFor("alice@contoso.com", ""), v, "-c", "SELECT 1"); err != nil {
			t.Fatalf("token login with password_auth off = %q, %v", out, err)
		}
	})

	t.Run("a mapping table not owned by a superuser is not trusted", func(t *testing.T) {
		s.superSQL(t, `ALTER TABLE pgshield.principals OWNER TO `+admin)
		defer s.superSQL(t, `ALTER TABLE pgshield.principals OWNER TO pgshield_service`)
		time.Sleep(2500 * time.Millisecond) // role cache TTL
		v, err := oidcissuer.Sign(is.Keys()[0], "", is.Access(oidcAudience, "oid-alice", time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if out, err := psql(t, dsnFor("alice@contoso.com", ""), v, "-c", "SELECT 1"); err == nil {
			t.Fatalf("token login through an administrator-owned mapping table succeeded: %s", out)
		}
		if out, err := s.cli("principal", "list"); err == nil || !strings.Contains(out, "not owned by a superuser") {
			t.Fatalf("principal list with an administrator-owned table = %v %s; want a refusal", err, out)
		}
	})

	t.Run("principal delete", func(t *testing.T) {
		mustCLI(t, s, "principal", "delete", "--name", "bob@contoso.com")
		if got := s.superSQL(t, `SELECT count(*) FROM pg_roles WHERE rolname = 'bob@contoso.com'`); got != "0" {
			t.Errorf("bob's role still exists after principal delete")
		}
	})
}
