package pgbackend

// The login lookup reads password verifiers, as pgshield's lookup role,
// among hostile tenants: like every statement pgshield runs as a role of
// its own (see internal/postgres/privsql.go), it is kept here so that
// privsql_test.go can check that it resolves only pg_catalog's objects and
// pgshield's own, and its connections pin the search path.

// PinnedSearchPath is the search_path of every connection pgshield opens
// as a role of its own, sent in the startup packet so that no role or
// database setting applies. pg_temp last: the session's own temporary
// schema is never searched first (functions and operators are never looked
// up there at all).
const PinnedSearchPath = "pg_catalog, pg_temp"

// sqlLookupRole is what the gateway runs, as the lookup role, for each
// login. The name travels as text: a cast to name would cut it to 63 bytes
// and match another role.
const sqlLookupRole = `SELECT l.can_login, l.is_superuser, l.password, l.valid_until, l.object_id, l.kind, l.admin
  FROM pgshield.login_role($1::pg_catalog.text) AS l`
