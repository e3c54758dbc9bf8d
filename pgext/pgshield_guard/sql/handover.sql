--
-- pgshield_guard.handover_check: what the gateway reads after DISCARD ALL
-- before it hands a pooled backend to another client. The flags and the
-- role name, not the digest (it hashes OIDs), are shown; the digest is
-- compared before and after.
--
CREATE ROLE "ho user" LOGIN;
CREATE ROLE ho_other LOGIN;
CREATE FUNCTION pg_temp.hc() RETURNS text LANGUAGE sql AS
  $$SELECT regexp_replace(pg_catalog.current_setting('pgshield_guard.handover_check'),
    '^(v4 [tf] [tf] [tf] [tf] [tf]) [0-9a-f]{64} (.*)$', '\1 <digest> \2')$$;
CREATE TEMP TABLE digests (ord int, step text, d text);
GRANT ALL ON digests TO PUBLIC;
CREATE FUNCTION pg_temp.dg() RETURNS text LANGUAGE sql AS
  $$SELECT split_part(pg_catalog.current_setting('pgshield_guard.handover_check'), ' ', 7)$$;
SET SESSION AUTHORIZATION "ho user";
SELECT pg_temp.hc();
INSERT INTO digests SELECT 1, 'start', pg_temp.dg();
-- Read-only to everyone: SET, set_config, RESET, ALTER ROLE/DATABASE SET.
SET pgshield_guard.handover_check = 'v4 t f t t f 0000000000000000000000000000000000000000000000000000000000000000 ho user';
SELECT pg_catalog.set_config('pgshield_guard.handover_check', 'v1', false);
RESET pgshield_guard.handover_check;
ALTER ROLE "ho user" SET pgshield_guard.handover_check = 'v1';
-- After SET ROLE the first flag is f.
RESET SESSION AUTHORIZATION;
GRANT ho_other TO "ho user";
SET SESSION AUTHORIZATION "ho user";
SET ROLE ho_other;
SELECT pg_temp.hc();
RESET ROLE;
RESET SESSION AUTHORIZATION;
-- NOLOGIN, an expired VALID UNTIL: the role flag is f.
ALTER ROLE "ho user" NOLOGIN;
SET SESSION AUTHORIZATION "ho user";
SELECT pg_temp.hc();
RESET SESSION AUTHORIZATION;
ALTER ROLE "ho user" LOGIN VALID UNTIL '2000-01-01';
SET SESSION AUTHORIZATION "ho user";
SELECT pg_temp.hc();
RESET SESSION AUTHORIZATION;
ALTER ROLE "ho user" VALID UNTIL 'infinity';
-- CONNECT revoked, or connections not allowed: the database flag is f.
REVOKE CONNECT ON DATABASE regression FROM PUBLIC;
SET SESSION AUTHORIZATION "ho user";
SELECT pg_temp.hc();
RESET SESSION AUTHORIZATION;
GRANT CONNECT ON DATABASE regression TO PUBLIC;
SET SESSION AUTHORIZATION "ho user";
SELECT pg_temp.hc();
RESET SESSION AUTHORIZATION;
-- A database with dblink: the extension flag is t.
CREATE EXTENSION dblink;
SET SESSION AUTHORIZATION "ho user";
SELECT pg_temp.hc();
RESET SESSION AUTHORIZATION;
DROP EXTENSION dblink;
-- ALTER ROLE/DATABASE ... SET move the digest; unrelated roles' do not.
ALTER ROLE ho_other SET work_mem = '8MB';
SET SESSION AUTHORIZATION "ho user";
INSERT INTO digests SELECT 2, 'other role', pg_temp.dg();
RESET SESSION AUTHORIZATION;
ALTER ROLE "ho user" SET work_mem = '8MB';
SET SESSION AUTHORIZATION "ho user";
INSERT INTO digests SELECT 3, 'role', pg_temp.dg();
RESET SESSION AUTHORIZATION;
ALTER ROLE "ho user" IN DATABASE regression SET work_mem = '9MB';
SET SESSION AUTHORIZATION "ho user";
INSERT INTO digests SELECT 4, 'role in database', pg_temp.dg();
RESET SESSION AUTHORIZATION;
ALTER DATABASE regression SET work_mem = '10MB';
SET SESSION AUTHORIZATION "ho user";
INSERT INTO digests SELECT 5, 'database', pg_temp.dg();
RESET SESSION AUTHORIZATION;
ALTER ROLE ALL SET work_mem = '11MB';
SET SESSION AUTHORIZATION "ho user";
INSERT INTO digests SELECT 6, 'all roles', pg_temp.dg();
RESET SESSION AUTHORIZATION;
SELECT step, d = lag(d) OVER (ORDER BY ord) AS same_as_previous, length(d) FROM digests ORDER BY ord;
ALTER ROLE ALL RESET work_mem;
ALTER DATABASE regression RESET work_mem;
-- The DIRTY flag (the fifth): state DISCARD ALL would clear. The
-- statements above made it t; DISCARD ALL clears it. Functions in public:
-- DISCARD ALL drops temporary ones.
CREATE FUNCTION public.ho_dirty() RETURNS text LANGUAGE sql AS
  $$SELECT split_part(pg_catalog.current_setting('pgshield_guard.handover_check'), ' ', 6)$$;
CREATE FUNCTION public.ho_mk() RETURNS void LANGUAGE plpgsql AS
  $$BEGIN CREATE TEMP TABLE IF NOT EXISTS t_in_fn (x int); END$$;
SELECT public.ho_dirty() AS after_create_function;
DISCARD ALL;
SELECT public.ho_dirty() AS after_discard_all;
-- Transaction-scoped work leaves it f.
SELECT 1 FROM pg_class LIMIT 1;
BEGIN;
SET LOCAL work_mem = '5MB';
LOCK pg_class IN ACCESS SHARE MODE;
SELECT pg_catalog.set_config('work_mem', '6MB', true);
COMMIT;
SHOW work_mem;
SELECT public.ho_dirty() AS after_transaction_scoped;
BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE;
SELECT 1;
COMMIT;
SELECT public.ho_dirty() AS after_begin_isolation_level;
-- A session-level value, from SET or from set_config inside a query.
SELECT pg_catalog.set_config('work_mem', '6MB', false);
SELECT public.ho_dirty() AS after_set_config;
DISCARD ALL;
SET work_mem = '7MB';
RESET work_mem;
SELECT public.ho_dirty() AS after_set_then_reset;
DISCARD ALL;
-- Utility statements run inside functions count too.
DO $$BEGIN EXECUTE 'PREPARE p AS SELECT 1'; END$$;
SELECT public.ho_dirty() AS after_do_prepare;
DISCARD ALL;
SELECT public.ho_mk();
SELECT public.ho_dirty() AS after_function_creating_temp_table;
DISCARD ALL;
LISTEN ch;
SELECT public.ho_dirty() AS after_listen;
DISCARD ALL;
DECLARE c CURSOR WITH HOLD FOR SELECT 1;
SELECT public.ho_dirty() AS after_declare_with_hold;
DISCARD ALL;
SELECT public.ho_dirty() AS after_discard_again;
DROP FUNCTION public.ho_dirty();
DROP FUNCTION public.ho_mk();
-- Not listed among the server's settings.
SELECT count(*) FROM pg_settings WHERE name = 'pgshield_guard.handover_check';
DROP ROLE "ho user";
DROP ROLE ho_other;
