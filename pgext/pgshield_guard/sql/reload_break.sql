--
-- A reload that brings an administrator list pgshield_guard cannot parse
-- (what pgshield wrote before it quoted names) is taken, not refused, and
-- the guard fails closed. The reload reaches the sessions the following
-- test files open.
--
CREATE ROLE regress_sub LOGIN CREATEROLE;
ALTER SYSTEM SET pgshield_guard.admin_roles = 'pgadmin,Contoso DBAs';
SELECT pg_reload_conf();
