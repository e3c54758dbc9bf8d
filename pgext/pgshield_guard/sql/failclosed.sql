--
-- pgshield_guard fails closed: the server started with an administrator
-- list it cannot parse (regress-broken.conf). PostgreSQL keeps the value
-- instead of falling back to the default (an empty list), and roles that
-- are not superusers may manage no role and create no extension.
--
SHOW pgshield_guard.admin_roles;
CREATE ROLE pgadmin LOGIN CREATEROLE CREATEDB;
CREATE ROLE "Contoso DBAs" CREATEROLE;
CREATE ROLE regress_sub LOGIN CREATEROLE;
CREATE ROLE regress_x;
GRANT CREATE ON DATABASE regression TO pgadmin;
GRANT ALL ON SCHEMA public TO pgadmin;

SET SESSION AUTHORIZATION regress_sub;
-- The takeover of the finding: refused at its first step.
GRANT pgadmin TO regress_sub;
SET ROLE pgadmin;
ALTER ROLE pgadmin NOLOGIN;
ALTER ROLE "Contoso DBAs" LOGIN PASSWORD 'taken';
RESET SESSION AUTHORIZATION;

SET SESSION AUTHORIZATION pgadmin;
-- Every kind of role management.
CREATE ROLE regress_new;
ALTER ROLE regress_x LOGIN;
ALTER ROLE pgadmin PASSWORD 'own';
ALTER ROLE regress_x SET work_mem = '1MB';
ALTER ROLE regress_x RENAME TO regress_y;
DROP ROLE regress_x;
DROP ROLE IF EXISTS regress_nobody;
GRANT pg_monitor TO regress_x;
REVOKE pg_monitor FROM regress_x;
ALTER GROUP regress_x ADD USER regress_sub;
REASSIGN OWNED BY regress_x TO pgadmin;
DROP OWNED BY regress_x;
SET ROLE regress_x;
SET SESSION AUTHORIZATION regress_sub;
-- Also from a function and DO.
DO $$ BEGIN EXECUTE 'CREATE ROLE regress_new'; END $$;
CREATE FUNCTION regress_grant() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	GRANT pgadmin TO regress_sub;
END $$;
SELECT regress_grant();
DROP FUNCTION regress_grant();
-- And extensions, allowed ones too.
CREATE EXTENSION citext;
CREATE EXTENSION IF NOT EXISTS citext;
-- Going back to oneself is allowed.
RESET ROLE;
SELECT current_user;
-- Statements that concern no role go on, under their usual rules.
CREATE TABLE regress_t (a int);
COPY regress_t TO STDOUT;
COPY regress_t TO PROGRAM 'id';
DROP TABLE regress_t;
RESET SESSION AUTHORIZATION;

-- Superusers are unaffected.
CREATE ROLE regress_new;
ALTER ROLE regress_new LOGIN;
GRANT pgadmin TO regress_new;
REVOKE pgadmin FROM regress_new;
ALTER ROLE regress_new RENAME TO regress_newer;
DROP ROLE regress_newer;
CREATE EXTENSION citext;
DROP EXTENSION citext;
DROP ROLE regress_sub, regress_x, "Contoso DBAs";
