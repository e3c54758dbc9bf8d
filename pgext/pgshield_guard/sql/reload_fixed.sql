-- The list parses again: role management is back, and so is protection.
SHOW pgshield_guard.admin_roles;
SET SESSION AUTHORIZATION pgadmin;
CREATE ROLE regress_r;
DROP ROLE regress_r;
SET SESSION AUTHORIZATION regress_sub;
GRANT pgadmin TO regress_sub;
GRANT "Contoso DBAs" TO regress_sub;
RESET SESSION AUTHORIZATION;
DROP ROLE regress_sub, regress_x, regress_file_reader, regress_prog_runner;
