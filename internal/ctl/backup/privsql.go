package backup

// The statements the backup controller runs as the service role or the
// superuser, each resolving only pg_catalog objects (see
// internal/postgres/privsql.go for why; privsql_test.go checks them).
// Connections pin the search path.
const (
	sqlReloadConf    = `SELECT pg_catalog.pg_reload_conf()`
	sqlInRecovery    = `SELECT pg_catalog.pg_is_in_recovery()`
	sqlSwitchWAL     = `SELECT pg_catalog.pg_walfile_name(pg_catalog.pg_switch_wal())`
	sqlArchiverState = `SELECT COALESCE(a.last_archived_wal, ''), COALESCE(a.last_failed_wal, '')
  FROM pg_catalog.pg_stat_archiver a`
)

// sqlAlterSystemReset takes a quoted identifier.
func sqlAlterSystemReset(name string) string { return "ALTER SYSTEM RESET " + name }
