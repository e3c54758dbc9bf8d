package sqlqual

import "testing"

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		name string
		sql  string
		ok   bool
	}{
		{"qualified", `SELECT pg_catalog.lower($1::pg_catalog.text) FROM pg_catalog.pg_settings s WHERE s.name OPERATOR(pg_catalog.=) $2::pg_catalog.text`, true},
		{"unqualified function", `SELECT lower($1::pg_catalog.text)`, false},
		{"unqualified aggregate", `SELECT coalesce(array_agg(n ORDER BY n), '{}')`, false},
		{"bare operator", `SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = 'x'::pg_catalog.regclass`, false},
		{"operator of another schema", `SELECT 1 WHERE 1 OPERATOR(public.=) 1`, false},
		{"unqualified cast", `SELECT 'x'::regclass`, false},
		{"uncast parameter", `SELECT pg_catalog.lower($1)`, false},
		{"unqualified collation", `SELECT 1 ORDER BY 1 COLLATE "C"`, false},
		{"keywords", `SELECT COALESCE(x, ''), EXISTS (SELECT FROM pg_catalog.pg_class) WHERE x IN (SELECT 1)`, true},
		{"setting", `ALTER ROLE "r" SET pgaudit.log = 'none'`, true},
		{"function body", "CREATE FUNCTION s.f() RETURNS pg_catalog.int4 LANGUAGE sql SET search_path = pg_catalog AS $fn$ SELECT 1 + 1 $fn$", false},
		{"string holding SQL-like text", `SELECT 'lower(x) = y'`, true},
		{"quoted function name", `SELECT "lower"('x')`, false},
		{"comment", "SELECT 1 -- lower(x) = y\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			probs := Check(tc.sql)
			if (len(probs) == 0) != tc.ok {
				t.Errorf("Check(%q) = %q; want ok=%v", tc.sql, probs, tc.ok)
			}
		})
	}
}

func TestInlineSQL(t *testing.T) {
	for src, want := range map[string]bool{
		"d.catalog.Pool.QueryRow(ctx, `SELECT 1`)":      true,
		`conn.Exec(ctx, "SELECT 1")`:                    true,
		"conn.Exec(ctx, sqlPing)":                       false,
		"tx.QueryRow(ctx, sqlInsertPrincipal, p.Name)":  false,
		"c.Pool.Query(r.Context(), `SELECT 1`)":         true,
		"c.Pool.Query(r.Context(), sqlSettingsOrdered)": false,
	} {
		if got := InlineSQL.MatchString(src); got != want {
			t.Errorf("InlineSQL.MatchString(%q) = %v; want %v", src, got, want)
		}
	}
}
