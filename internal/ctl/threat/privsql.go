package threat

// The statement the threat controller runs as the service role, over a
// connection with the search path pinned; it resolves only pg_catalog
// objects (privsql_test.go checks it).
const (
	// sqlConnectionLimits: PostgreSQL's max_connections and
	// superuser_reserved_connections in force.
	sqlConnectionLimits = `SELECT pg_catalog.current_setting('max_connections'::pg_catalog.text)::pg_catalog.int4,
       pg_catalog.current_setting('superuser_reserved_connections'::pg_catalog.text)::pg_catalog.int4`
)
