--
-- pgshield_guard: roles that are not superusers (a CREATEROLE
-- administrator like pgshield's pgadmin, and every role it creates) may not
-- become superuser-equivalent. Set up as the bootstrap superuser, then act
-- as the hostile tenant with SET SESSION AUTHORIZATION.
--
-- The settings as the server parsed them from regress.conf, the lines
-- pgshield writes.
SHOW pgshield_guard.reserved_roles;
SHOW pgshield_guard.reserved_memberships;
SHOW pgshield_guard.admin_roles;
SHOW pgshield_guard.allowed_extensions;
-- Not superusers: the lists, not superuser status, protect them here.
CREATE ROLE pgshield_service LOGIN;
CREATE ROLE pgshield_auth LOGIN;
-- The administrator, as pgshield init makes it.
CREATE ROLE pgadmin LOGIN CREATEROLE CREATEDB;
GRANT pg_monitor, pg_signal_backend, pg_read_all_settings, pg_read_all_stats TO pgadmin;
GRANT CREATE ON DATABASE regression TO pgadmin;
GRANT ALL ON SCHEMA public TO pgadmin WITH GRANT OPTION;
-- Administrator principals whose names an unquoted list would mangle.
CREATE ROLE "Contoso DBAs" CREATEROLE CREATEDB;
CREATE ROLE "Mary.Smith@Contoso.com" LOGIN CREATEROLE CREATEDB;
CREATE ROLE "O'Brien" LOGIN CREATEROLE;
CREATE ROLE "say ""hi""" LOGIN CREATEROLE;
CREATE ROLE "back\slash" LOGIN CREATEROLE;
CREATE ROLE "Ünïcødé 管理者" LOGIN CREATEROLE;
CREATE ROLE "a,b" LOGIN CREATEROLE;
-- Holders of reserved memberships.
CREATE ROLE regress_file_reader IN ROLE pg_read_server_files;
CREATE ROLE regress_prog_runner;
GRANT pg_execute_server_program TO regress_prog_runner;
-- PostgreSQL refuses these functions to everyone until a superuser grants
-- EXECUTE; pgshield_guard keeps them superuser-only even then.
GRANT EXECUTE ON FUNCTION pg_read_file(text), pg_ls_dir(text), lo_import(text), lo_export(oid, text) TO pgadmin;

SET SESSION AUTHORIZATION pgadmin;
SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user;
CREATE ROLE regress_x;
GRANT CREATE ON SCHEMA public TO regress_x;
CREATE TABLE regress_t (a int);
INSERT INTO regress_t VALUES (1);

-- Superuser attributes.
CREATE ROLE regress_bad SUPERUSER;
CREATE ROLE regress_bad REPLICATION;
CREATE ROLE regress_bad BYPASSRLS;
ALTER ROLE regress_x SUPERUSER;
ALTER ROLE regress_x REPLICATION;
ALTER ROLE regress_x BYPASSRLS;
ALTER ROLE pgadmin SUPERUSER;

-- Membership in the roles that reach the server's programs and files.
GRANT pg_execute_server_program TO regress_x;
GRANT pg_read_server_files TO regress_x;
GRANT pg_write_server_files TO pgadmin;
-- pg_write_all_data writes pg_authid and pg_database through the updatable
-- system views pg_group and pg_stat_database_conflicts.
GRANT pg_write_all_data TO pgadmin;
GRANT pg_execute_server_program TO regress_x WITH ADMIN OPTION;
CREATE ROLE regress_bad IN ROLE pg_execute_server_program;
CREATE ROLE regress_bad IN ROLE pg_monitor, pg_write_server_files;
ALTER GROUP pg_read_server_files ADD USER regress_x;
-- A role that holds such a membership carries it.
GRANT regress_file_reader TO regress_x;
GRANT regress_prog_runner TO pgadmin;
CREATE ROLE regress_bad IN ROLE regress_prog_runner;
ALTER GROUP regress_file_reader ADD USER regress_x;
ALTER ROLE regress_file_reader LOGIN PASSWORD 'taken';
ALTER ROLE regress_prog_runner RENAME TO regress_mine;
DROP ROLE regress_prog_runner;
CREATE ROLE regress_bad ROLE regress_file_reader;
GRANT regress_x TO regress_file_reader;

-- COPY with programs and server files; through the client is fine.
COPY regress_t TO PROGRAM 'id';
COPY regress_t FROM PROGRAM 'id';
COPY regress_t TO '/tmp/regress_t.out';
COPY regress_t FROM '/etc/hostname';
COPY regress_t TO STDOUT;
COPY (SELECT 2) TO STDOUT;

-- Server file functions, even with EXECUTE granted.
SELECT pg_read_file('/etc/hostname');
SELECT pg_ls_dir('.');
SELECT lo_import('/etc/hostname');
SELECT lo_export(0, '/tmp/regress_lo.out');
DO $$ BEGIN PERFORM pg_read_file('/etc/hostname'); END $$;
-- Not granted: PostgreSQL's own refusal.
SELECT pg_read_binary_file('/etc/hostname');

-- Predefined roles: no takeover.
ALTER ROLE pg_execute_server_program LOGIN;
ALTER ROLE pg_monitor PASSWORD 'taken';
ALTER ROLE pg_read_all_data SET search_path = public;
ALTER ROLE pg_monitor RENAME TO regress_monitor;
ALTER ROLE pg_write_server_files RENAME TO regress_files;
DROP ROLE pg_signal_backend;
DROP ROLE pg_read_server_files;
GRANT regress_x TO pg_monitor;
CREATE ROLE regress_bad ROLE pg_read_all_stats;

-- Languages, C and internal functions, libraries, server settings.
-- (CREATE LANGUAGE without a handler is CREATE EXTENSION.)
CREATE LANGUAGE plperlu;
CREATE TRUSTED LANGUAGE regress_lang HANDLER plpgsql_call_handler;
CREATE FUNCTION regress_c() RETURNS int AS 'pgshield_guard', '_PG_init' LANGUAGE c;
CREATE FUNCTION regress_internal(cstring) RETURNS int AS 'int4in' LANGUAGE internal;
LOAD 'pgshield_guard';
LOAD '$libdir/plugins/anything';
ALTER SYSTEM SET work_mem = '64MB';
ALTER SYSTEM RESET ALL;
GRANT SET ON PARAMETER work_mem TO regress_x;
GRANT ALTER SYSTEM ON PARAMETER pgshield_guard.admin_roles TO pgadmin;
-- pgshield_guard's own settings come only from the configuration files.
SET pgshield_guard.admin_roles = '';
SELECT set_config('pgshield_guard.reserved_roles', '', false);

-- Reserved roles: postgres, pgshield_service, pgshield_auth.
ALTER ROLE postgres PASSWORD 'taken';
ALTER ROLE pgshield_service PASSWORD 'taken';
ALTER ROLE pgshield_auth NOLOGIN;
ALTER ROLE pgshield_service CREATEDB;
ALTER ROLE pgshield_auth VALID UNTIL '2000-01-01';
ALTER ROLE pgshield_auth SET search_path = public;
ALTER ROLE pgshield_service IN DATABASE regression SET work_mem = '1MB';
ALTER ROLE ALL SET work_mem = '1MB';
ALTER ROLE pgshield_auth RENAME TO regress_auth;
ALTER ROLE regress_x RENAME TO pgshield_auth;
CREATE ROLE pgshield_service;
DROP ROLE pgshield_auth;
DROP ROLE postgres;
DROP ROLE IF EXISTS regress_nobody, pgshield_service;
GRANT pgshield_service TO regress_x;
GRANT postgres TO pgadmin;
GRANT pgshield_auth TO regress_x;
GRANT regress_x TO pgshield_auth;
GRANT regress_x TO regress_x GRANTED BY pgshield_service;
REVOKE pgshield_service FROM regress_x;
REVOKE regress_x FROM pgshield_auth;
ALTER GROUP regress_x ADD USER pgshield_service;
ALTER GROUP pgshield_auth DROP USER regress_x;
CREATE ROLE regress_bad IN ROLE postgres;
CREATE ROLE regress_bad ADMIN pgshield_auth;
SET ROLE pgshield_service;
SET ROLE postgres;
SET SESSION AUTHORIZATION pgshield_auth;
SET SESSION AUTHORIZATION postgres;
SELECT set_config('role', 'pgshield_service', false);
SELECT set_config('role', 'postgres', true);
ALTER ROLE regress_x SET role = 'pgshield_service';
ALTER ROLE regress_x SET session_authorization = 'postgres';
REASSIGN OWNED BY pgshield_service TO regress_x;
REASSIGN OWNED BY regress_x TO postgres;
DROP OWNED BY pgshield_auth;
SELECT current_user;

-- Administrator roles: a role the administrator created (CREATEROLE, as
-- PostgreSQL 15 lets it be) may not take the administrator over.
CREATE ROLE regress_sub LOGIN CREATEROLE;
GRANT CREATE ON SCHEMA public TO regress_sub;
CREATE ROLE "mary.smith@contoso.com" LOGIN;
SET SESSION AUTHORIZATION regress_sub;
GRANT pgadmin TO regress_sub;
SET ROLE pgadmin;
ALTER ROLE pgadmin NOLOGIN;
ALTER ROLE pgadmin PASSWORD 'taken';
ALTER ROLE pgadmin VALID UNTIL '2000-01-01';
ALTER ROLE pgadmin CONNECTION LIMIT 0;
ALTER ROLE pgadmin SET search_path = evil;
ALTER ROLE pgadmin RENAME TO regress_gone;
DROP ROLE pgadmin;
CREATE ROLE regress_bad ROLE pgadmin;
CREATE ROLE regress_bad IN ROLE pgadmin;
ALTER GROUP pgadmin ADD USER regress_sub;
GRANT regress_sub TO pgadmin;
-- Every administrator principal, by its exact name.
GRANT "Contoso DBAs" TO regress_sub;
ALTER ROLE "Contoso DBAs" LOGIN PASSWORD 'taken';
ALTER ROLE "Mary.Smith@Contoso.com" NOLOGIN;
GRANT "Mary.Smith@Contoso.com" TO regress_sub;
ALTER ROLE "O'Brien" PASSWORD 'taken';
DROP ROLE "say ""hi""";
ALTER ROLE "back\slash" RENAME TO regress_gone;
GRANT "Ünïcødé 管理者" TO regress_sub;
ALTER ROLE "a,b" NOLOGIN;
-- Names are compared exactly: the lower-case namesake is no administrator.
ALTER ROLE "mary.smith@contoso.com" NOLOGIN;
-- Through a function, DO and EXECUTE alike.
CREATE FUNCTION regress_takeover() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	ALTER ROLE pgadmin NOLOGIN;
END $$;
SELECT regress_takeover();
DO $$ BEGIN EXECUTE 'GRANT pgadmin TO regress_sub'; END $$;
DO $$ BEGIN EXECUTE format('ALTER ROLE %I NOLOGIN', 'Mary.Smith@Contoso.com'); END $$;
DO $$ BEGIN GRANT pg_execute_server_program TO regress_sub; END $$;
DO $$ BEGIN EXECUTE 'CREATE ROLE regress_bad SUPERUSER'; END $$;
DO $$ BEGIN EXECUTE 'COPY regress_t TO PROGRAM ''id'''; END $$;
DO $$ BEGIN PERFORM pg_catalog.set_config('role', 'postgres', false); END $$;
DO $$ BEGIN EXECUTE 'SET ROLE pgshield_service'; END $$;
CREATE FUNCTION regress_grant(r text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE format('GRANT %I TO regress_sub', r);
END $$;
SELECT regress_grant('pg_write_server_files');
SELECT regress_grant('Contoso DBAs');
DROP FUNCTION regress_takeover();
DROP FUNCTION regress_grant(text);
RESET SESSION AUTHORIZATION;

-- The administrator may not take another administrator over either.
SET SESSION AUTHORIZATION pgadmin;
GRANT "Contoso DBAs" TO pgadmin;
ALTER ROLE "Mary.Smith@Contoso.com" CREATEDB;
DROP ROLE "a,b";

-- Extensions: only those allowed, and without CASCADE.
CREATE EXTENSION file_fdw;
CREATE EXTENSION earthdistance;
CREATE EXTENSION hstore CASCADE;
CREATE EXTENSION citext;
CREATE EXTENSION "uuid-ossp";
-- Not marked trusted: created through pgshield_guard's own path.
CREATE EXTENSION pg_stat_statements;
CREATE EXTENSION IF NOT EXISTS citext;
SELECT e.extname, r.rolname AS owner FROM pg_extension e JOIN pg_roles r ON r.oid = e.extowner
 WHERE e.extname <> 'plpgsql' ORDER BY 1;
DO $$ BEGIN EXECUTE 'CREATE EXTENSION file_fdw'; END $$;
DROP EXTENSION pg_stat_statements, citext, "uuid-ossp";

-- What the administrator may do.
CREATE ROLE regress_app LOGIN PASSWORD 'secret' CREATEROLE CREATEDB VALID UNTIL 'infinity' CONNECTION LIMIT 5;
ALTER ROLE regress_app NOCREATEDB;
ALTER ROLE regress_app SET work_mem = '8MB';
ALTER ROLE regress_app IN DATABASE regression SET statement_timeout = '1min';
ALTER ROLE regress_app RESET ALL;
GRANT pg_monitor, pg_read_all_stats, pg_read_all_settings, pg_signal_backend TO regress_app;
GRANT pg_read_all_data TO regress_app;
GRANT regress_x TO regress_app WITH ADMIN OPTION;
REVOKE regress_x FROM regress_app;
REVOKE pg_monitor FROM regress_app;
CREATE ROLE regress_group ROLE regress_app ADMIN regress_x IN ROLE pg_monitor;
ALTER GROUP regress_group DROP USER regress_app;
ALTER ROLE regress_app RENAME TO regress_app2;
GRANT regress_app2 TO pgadmin;
SET ROLE regress_app2;
SELECT current_user;
RESET ROLE;
SELECT set_config('role', 'regress_app2', false);
RESET ROLE;
ALTER ROLE pgadmin PASSWORD 'new-secret';
ALTER ROLE pgadmin SET work_mem = '16MB';
ALTER ROLE pgadmin RESET work_mem;
-- The administrator's own principal may manage itself too.
RESET SESSION AUTHORIZATION;
SET SESSION AUTHORIZATION "Mary.Smith@Contoso.com";
ALTER ROLE "Mary.Smith@Contoso.com" PASSWORD 'own';
CREATE ROLE regress_marys;
DROP ROLE regress_marys;
RESET SESSION AUTHORIZATION;
SET SESSION AUTHORIZATION pgadmin;
ALTER ROLE "mary.smith@contoso.com" NOLOGIN;
DROP ROLE "mary.smith@contoso.com";
GRANT regress_x TO pgadmin;
CREATE TABLE regress_owned (a int);
ALTER TABLE regress_owned OWNER TO regress_x;
REASSIGN OWNED BY regress_x TO pgadmin;
DROP OWNED BY regress_x;
CREATE DATABASE regress_db;
DROP DATABASE regress_db;
DROP TABLE regress_t, regress_owned;
REVOKE CREATE ON SCHEMA public FROM regress_sub;
DROP ROLE regress_app2, regress_group, regress_sub;
RESET SESSION AUTHORIZATION;
SELECT rolname FROM pg_roles WHERE rolsuper ORDER BY 1;
