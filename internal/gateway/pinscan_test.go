package gateway

import "testing"

func TestNeedsPin(t *testing.T) {
	for sql, want := range map[string]bool{
		"SELECT 1":                                          false,
		"SELECT * FROM t WHERE a = 'set x'":                 true, // superset: a string's words count
		"UPDATE t SET a = 1":                                false,
		"BEGIN; SET LOCAL work_mem = '8MB'; COMMIT":         false,
		"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE":      false,
		"set work_mem = '8MB'":                              true,
		"/* x */ SET search_path = a":                       true,
		"SELECT 1; SET x.y = 1":                             true,
		"-- SET x\nSELECT 1":                                false,
		"LISTEN ch":                                         true,
		"PREPARE p AS SELECT 1":                             true,
		"DECLARE c CURSOR WITH HOLD FOR SELECT 1":           true,
		"DECLARE c CURSOR FOR SELECT 1":                     false,
		"CREATE TEMP TABLE x (a int)":                       true,
		"create temporary table x (a int)":                  true,
		"CREATE TABLE pg_temp.x (a int)":                    true,
		"SELECT pg_advisory_lock(1)":                        true,
		"SELECT pg_advisory_xact_lock(1)":                   false,
		`SELECT "pg_advisory_lock"(1)`:                      true,
		"SELECT set_config('a.b', 'c', false)":              true,
		"LOAD 'x'":                                          true,
		"DO $$BEGIN PERFORM 1; SET work_mem = '1MB'; END$$": true,
		"DO $f$BEGIN EXECUTE 'LISTEN x'; END$f$":            true,
		"SELECT $1::int":                                    false,
		"RESET ALL":                                         true,
		"SET":                                               true,
		"INSERT INTO t VALUES (1) ON CONFLICT (a) DO UPDATE SET b = 2": false,
	} {
		if got := needsPin(sql); got != want {
			t.Errorf("needsPin(%q) = %v; want %v", sql, got, want)
		}
	}
}
