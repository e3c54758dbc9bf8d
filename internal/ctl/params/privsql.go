package params

// The statements the parameters controller runs as the service role or the superuser,
// each resolving only pg_catalog objects (see internal/postgres/privsql.go
// for why; privsql_test.go checks them). Connections pin the search path.
const (
	sqlAvailableExtensions = `SELECT a.name::pg_catalog.text FROM pg_catalog.pg_available_extensions a`
	sqlReloadConf          = `SELECT pg_catalog.pg_reload_conf()`
	sqlSettings            = `SELECT s.name, s.setting, COALESCE(s.unit, ''), s.context, s.pending_restart, s.short_desc, COALESCE(s.boot_val, '')
  FROM pg_catalog.pg_settings s`
	sqlSettingsOrdered = sqlSettings + ` ORDER BY s.name COLLATE pg_catalog."C"`
	// Names are matched case-insensitively, as PostgreSQL does: pg_settings
	// spells a few in mixed case (TimeZone, DateStyle, IntervalStyle).
	sqlSettingByName = sqlSettings + ` WHERE pg_catalog.lower(s.name) OPERATOR(pg_catalog.=) pg_catalog.lower($1::pg_catalog.text)`
	// sqlCurrentSetting reads a setting as a session of the pool sees it.
	sqlCurrentSetting = `SELECT pg_catalog.current_setting($1::pg_catalog.text)`
	sqlClock          = `SELECT pg_catalog.clock_timestamp()`
	// sqlSettingContext is pg_settings.context of one parameter.
	sqlSettingContext = `SELECT s.context FROM pg_catalog.pg_settings s WHERE pg_catalog.lower(s.name) OPERATOR(pg_catalog.=) pg_catalog.lower($1::pg_catalog.text)`
	// sqlTrySetting sets a parameter for the current transaction only
	// (cluster.go rolls it back): PostgreSQL checks the value.
	sqlTrySetting = `SELECT pg_catalog.set_config($1::pg_catalog.text, $2::pg_catalog.text, true)`
	// sqlStaleStatements lists the backends of non-superusers running a
	// statement that began before $1.
	sqlStaleStatements = `SELECT a.pid FROM pg_catalog.pg_stat_activity a
  JOIN pg_catalog.pg_authid r ON r.oid OPERATOR(pg_catalog.=) a.usesysid
 WHERE a.backend_type OPERATOR(pg_catalog.=) 'client backend'::pg_catalog.text
   AND a.state OPERATOR(pg_catalog.=) 'active'::pg_catalog.text
   AND a.query_start OPERATOR(pg_catalog.<) $1::pg_catalog.timestamptz
   AND NOT r.rolsuper
   AND a.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid()`
	sqlTerminate = `SELECT pg_catalog.pg_terminate_backend($1::pg_catalog.int4)`
)

// sqlAlterSystemSet takes a quoted identifier and a quoted literal.
func sqlAlterSystemSet(name, literal string) string {
	return "ALTER SYSTEM SET " + name + " TO " + literal
}
