package config

import (
	"strings"
	"testing"
)

func TestPoolOverrides(t *testing.T) {
	good := []struct{ in, canon string }{
		{"", ""},
		{"db:reports=transaction", "db:reports=transaction"},
		{" role:App = Session ,database:reports=TRANSACTION ", "db:reports=transaction, role:App=session"},
		{`role:"batch ""jobs"", x=off"=off, db:"a,b"=session`, `db:"a,b"=session, role:"batch ""jobs"", x=off"=off`},
		{"user:u1=off", "role:u1=off"},
		{"db:" + strings.Repeat("d", 63) + "=off", "db:" + strings.Repeat("d", 63) + "=off"},
		{`role:"é"=transaction`, `role:"é"=transaction`},
	}
	for _, c := range good {
		got, err := checkPoolOverrides(c.in)
		if err != nil || got != c.canon {
			t.Errorf("checkPoolOverrides(%q) = %q, %v; want %q", c.in, got, err, c.canon)
			continue
		}
		// The canonical form reads back to itself.
		if again, err := checkPoolOverrides(got); err != nil || again != got {
			t.Errorf("canonical %q reads back as %q, %v", got, again, err)
		}
	}
	bad := []string{
		"reports=transaction",                          // no kind
		"schema:x=session",                             // unknown kind
		"db:x=statement",                               // PgBouncer's statement mode: not offered
		"db:x",                                         // no mode
		"db:=session",                                  // no name
		`db:""=session`,                                // empty quoted name
		`db:"x=session`,                                // unterminated quote
		"db:x=session,",                                // empty last entry
		"db:x=session,,role:y=off",                     // empty entry
		"db:x=session, db:x=off",                       // twice
		"db:" + strings.Repeat("d", 64) + "=off",       // longer than NAMEDATALEN-1
		"db:a b=session",                               // a space needs quotes
		"db:\"a\x00b\"=session",                        // NUL
		"db:\"a\nb\"=session",                          // control character
		"db:\"\xff\"=session",                          // not UTF-8
		"db:x'; DROP TABLE t; --=session",              // not a plain name
		strings.Repeat("db:x=off,", 1001) + "db:y=off", // too many (and duplicates)
	}
	for _, in := range bad {
		if got, err := checkPoolOverrides(in); err == nil {
			t.Errorf("checkPoolOverrides(%q) = %q; want an error", in, got)
		}
	}
}

func TestModeFor(t *testing.T) {
	o, err := ParsePoolOverrides("db:reports=transaction, db:legacy=off, role:etl=session")
	if err != nil {
		t.Fatal(err)
	}
	p := PoolParams{Mode: "session", Overrides: o}
	for _, c := range []struct{ role, db, want string }{
		{"app", "reports", "transaction"}, // the database's
		{"etl", "reports", "session"},     // the role's beats it
		{"app", "legacy", "off"},
		{"app", "postgres", "session"},    // the global mode
		{"Etl", "reports", "transaction"}, // exact names: Etl is not etl
		{"app", "REPORTS", "session"},
	} {
		if got := p.ModeFor(c.role, c.db); got != c.want {
			t.Errorf("ModeFor(%q, %q) = %s; want %s", c.role, c.db, got, c.want)
		}
	}
	p.Mode = "transaction"
	if got := p.ModeFor("app", "postgres"); got != "transaction" {
		t.Errorf("ModeFor with global transaction = %s", got)
	}
	// The parameter goes through ResolveParams.
	params, err := ResolveParams(map[string]string{"pgshield.pool_mode_overrides": "db:reports=transaction"})
	if err != nil || params.Pool.ModeFor("x", "reports") != "transaction" || params.Pool.ModeFor("x", "y") != "session" {
		t.Fatalf("ResolveParams: %v, %+v", err, params.Pool)
	}
	if _, err := ResolveParams(map[string]string{"pgshield.pool_mode_overrides": "db:reports=sometimes"}); err == nil {
		t.Fatal("ResolveParams accepted a bad mode")
	}
}
