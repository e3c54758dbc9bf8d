-- The unparsable list is in force: PostgreSQL did not keep the old one.
SHOW pgshield_guard.admin_roles;
SET SESSION AUTHORIZATION pgadmin;
CREATE ROLE regress_r;
ALTER ROLE regress_sub NOLOGIN;
DROP ROLE regress_sub;
GRANT pg_monitor TO regress_sub;
CREATE EXTENSION citext;
-- Statements that concern no role go on.
CREATE TABLE regress_r (a int);
DROP TABLE regress_r;
RESET SESSION AUTHORIZATION;
-- Superusers are unaffected; they put the list right.
CREATE ROLE regress_r;
DROP ROLE regress_r;
ALTER SYSTEM RESET pgshield_guard.admin_roles;
SELECT pg_reload_conf();
