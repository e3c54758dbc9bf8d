/*
 * pgshield_guard: keeps every role that is not a superuser (the server
 * administrator pgshield creates, and any role it creates) from becoming a
 * superuser or its equivalent.
 *
 * PostgreSQL 15 treats CREATEROLE as almost-superuser: such a role may grant
 * pg_execute_server_program (a shell as the postgres OS user), alter
 * predefined roles, and add members to the superuser. The checks here run in
 * a ProcessUtility hook, so they hold for statements sent by the client and
 * for those run inside functions, DO blocks and EXECUTE alike; a filter on
 * SQL text in front of the server would not. Prior art: supabase/supautils
 * (reserved roles and memberships, privileged extensions) and the
 * azure_pg_admin model of Azure Database for PostgreSQL.
 *
 * Configuration comes only from GUCs that can be set in the server's
 * configuration files (PGC_SIGHUP), which pgshield writes:
 *   pgshield_guard.reserved_roles        roles no one but a superuser may alter,
 *                                        drop, rename, grant, grant to or SET ROLE to
 *   pgshield_guard.reserved_memberships  roles whose membership only a superuser
 *                                        may grant (server files and programs)
 *   pgshield_guard.admin_roles           roles that only superusers and the role
 *                                        itself may alter, drop, rename or grant
 *                                        (PostgreSQL 15 lets any CREATEROLE role
 *                                        take over any other non-superuser)
 *   pgshield_guard.allowed_extensions    what non-superusers may CREATE EXTENSION
 *
 * Each is a list of SQL identifiers; pgshield quotes every name, and names
 * are compared exactly, as PostgreSQL stores them. A list that does not
 * parse is kept as it is rather than refused (a refused value would leave
 * PostgreSQL on the previous or the default list, which may protect less),
 * and while any list does not parse, non-superusers may manage no role and
 * create no extension: the guard fails closed.
 */
#include "postgres.h"

/*
 * libpq-be.h would pull in the Kerberos headers for Port's GSS state, a
 * pointer either way (pg_gssinfo * or void *): without them the layout is
 * the same and the build needs no libkrb5-dev.
 */
#undef ENABLE_GSS

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/parallel.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_database.h"
#include "catalog/pg_db_role_setting.h"
#include "catalog/pg_extension.h"
#include "commands/alter.h"
#include "commands/defrem.h"
#include "commands/extension.h"
#include "commands/prepare.h"
#include "commands/sequence.h"
#include "common/cryptohash.h"
#include "common/hmac.h"
#include "common/sha2.h"
#include "common/ip.h"
#include "fmgr.h"
#include "funcapi.h"
#include "libpq/auth.h"
#include "libpq/libpq-be.h"
#include "libpq/libpq.h"
#include "miscadmin.h"
#include "postmaster/postmaster.h"
#include "storage/ipc.h"
#include "storage/lock.h"
#include "storage/lwlock.h"
#include "storage/procarray.h"
#include "storage/shmem.h"
#include "storage/sinval.h"
#include "utils/backend_status.h"
#include "utils/inet.h"
#include "utils/timestamp.h"
#include "nodes/parsenodes.h"
#include "storage/fd.h"
#include "executor/executor.h"
#include "optimizer/planner.h"
#include "parser/analyze.h"
#include "tcop/tcopprot.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/guc_tables.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/varlena.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

static char *reserved_roles = NULL;
static char *reserved_memberships = NULL;
static char *allowed_extensions = NULL;
static char *admin_roles = NULL;

/* Whether each list above parses (set by the assign hooks). */
static bool reserved_roles_ok = true;
static bool reserved_memberships_ok = true;
static bool allowed_extensions_ok = true;
static bool admin_roles_ok = true;

static ProcessUtility_hook_type prev_utility_hook = NULL;
static object_access_hook_type prev_object_access_hook = NULL;
static post_parse_analyze_hook_type prev_post_parse_analyze_hook = NULL;
static ExecutorStart_hook_type prev_executor_start_hook = NULL;
static planner_hook_type prev_planner_hook = NULL;

#define DENY(msg, detail) \
	ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE), errmsg msg, errdetail detail))

/* name_in_list reports whether name is an element of an identifier list. */
static bool
name_in_list(const char *name, const char *list)
{
	char	   *raw;
	List	   *elems;
	ListCell   *lc;
	bool		found = false;

	if (name == NULL || list == NULL || list[0] == '\0')
		return false;
	raw = pstrdup(list);
	/* A list that does not parse matches nothing; check_settings refuses first. */
	if (SplitIdentifierString(raw, ',', &elems))
	{
		foreach(lc, elems)
		{
			if (strcmp(name, (char *) lfirst(lc)) == 0)
			{
				found = true;
				break;
			}
		}
	}
	list_free(elems);
	pfree(raw);
	return found;
}

/* list_display renders a parsed list for messages: "a, b", or "none". */
static const char *
list_display(const char *list)
{
	char	   *raw;
	List	   *elems = NIL;
	ListCell   *lc;
	StringInfoData out;

	if (list == NULL)
		return "none";
	raw = pstrdup(list);
	if (!SplitIdentifierString(raw, ',', &elems) || elems == NIL)
		return "none";
	initStringInfo(&out);
	foreach(lc, elems)
		appendStringInfo(&out, "%s%s", out.len > 0 ? ", " : "", (char *) lfirst(lc));
	return out.data;
}

/* is_reserved: a superuser, or named in pgshield_guard.reserved_roles. */
static bool
is_reserved(Oid roleid)
{
	char	   *name;

	if (!OidIsValid(roleid))
		return false;
	if (superuser_arg(roleid))
		return true;
	name = GetUserNameFromId(roleid, true);
	return name != NULL && name_in_list(name, reserved_roles);
}

/* is_other_admin: an administrator role (pgshield_guard.admin_roles) other than the current user. */
static bool
is_other_admin(Oid roleid)
{
	char	   *name;

	if (!OidIsValid(roleid) || roleid == GetUserId())
		return false;
	name = GetUserNameFromId(roleid, true);
	return name != NULL && name_in_list(name, admin_roles);
}

/*
 * reserved_membership_of returns the reserved role whose privileges roleid
 * has through membership (itself included), or NULL. Granting such a role
 * hands those privileges over.
 */
static const char *
reserved_membership_of(Oid roleid)
{
	const char *lists[] = {reserved_memberships, reserved_roles};
	int			i;

	for (i = 0; i < (int) lengthof(lists); i++)
	{
		char	   *raw;
		List	   *elems = NIL;
		ListCell   *lc;

		if (lists[i] == NULL || lists[i][0] == '\0')
			continue;
		raw = pstrdup(lists[i]);
		if (!SplitIdentifierString(raw, ',', &elems))
			continue;
		foreach(lc, elems)
		{
			Oid			r = get_role_oid((char *) lfirst(lc), true);

			if (OidIsValid(r) && is_member_of_role_nosuper(roleid, r))
				return pstrdup((char *) lfirst(lc));
		}
		list_free(elems);
	}
	return NULL;
}

static Oid
rolespec_oid(RoleSpec *spec)
{
	if (spec == NULL || spec->roletype == ROLESPEC_PUBLIC)
		return InvalidOid;
	return get_rolespec_oid(spec, true);
}

static const char *
rolespec_label(RoleSpec *spec)
{
	if (spec == NULL)
		return "?";
	if (spec->roletype == ROLESPEC_CSTRING)
		return spec->rolename;
	return get_rolespec_name(spec);
}

/*
 * check_target refuses to act on (alter, drop, rename, give memberships to)
 * a reserved role, a predefined pg_ role, or a role that holds a reserved
 * membership: taking over such a role would take over its privileges.
 */
static void
check_target(Oid roleid, const char *label, const char *action)
{
	const char *via;

	if (!OidIsValid(roleid))
		return;					/* PostgreSQL reports the missing role */
	if (is_reserved(roleid))
		DENY(("permission denied to %s role \"%s\"", action, label),
			 ("\"%s\" is a reserved role: only superusers can alter, drop or rename it, or change its memberships.", label));
	if (strncmp(label, "pg_", 3) == 0)
		DENY(("permission denied to %s role \"%s\"", action, label),
			 ("\"%s\" is a predefined role: only superusers can alter it or give it memberships.", label));
	via = reserved_membership_of(roleid);
	if (via != NULL)
		DENY(("permission denied to %s role \"%s\"", action, label),
			 ("\"%s\" is a member of \"%s\": only superusers can alter, drop or rename it, or change its memberships.", label, via));
	if (is_other_admin(roleid))
		DENY(("permission denied to %s role \"%s\"", action, label),
			 ("\"%s\" is the server administrator: only it and superusers can alter it or change its memberships.", label));
}

/* check_grantable refuses to grant membership in a role that carries a reserved one. */
static void
check_grantable(Oid roleid, const char *label)
{
	const char *via;

	if (!OidIsValid(roleid))
		return;
	if (is_reserved(roleid))
		DENY(("permission denied to grant role \"%s\"", label),
			 ("\"%s\" is a reserved role: only superusers can grant it.", label));
	via = reserved_membership_of(roleid);
	if (via != NULL && strcmp(via, label) == 0)
		DENY(("permission denied to grant role \"%s\"", label),
			 ("Membership in \"%s\" reaches the server's files, programs or system catalogs: only superusers can grant it.", label));
	if (via != NULL)
		DENY(("permission denied to grant role \"%s\"", label),
			 ("\"%s\" is a member of \"%s\": only superusers can grant it.", label, via));
	if (is_other_admin(roleid))
		DENY(("permission denied to grant role \"%s\"", label),
			 ("\"%s\" is the server administrator: only it and superusers can grant it.", label));
}

/* check_attributes refuses SUPERUSER, REPLICATION and BYPASSRLS. */
static void
check_attributes(List *options, const char *action)
{
	ListCell   *lc;

	foreach(lc, options)
	{
		DefElem    *d = lfirst_node(DefElem, lc);
		const char *attr = NULL;

		if (strcmp(d->defname, "superuser") == 0)
			attr = "SUPERUSER";
		else if (strcmp(d->defname, "isreplication") == 0)
			attr = "REPLICATION";
		else if (strcmp(d->defname, "bypassrls") == 0)
			attr = "BYPASSRLS";
		if (attr != NULL && defGetBoolean(d))
			DENY(("permission denied to %s role", action),
				 ("Only superusers can give the %s attribute.", attr));
	}
}

/* check_role_switch refuses SET ROLE / SESSION AUTHORIZATION to reserved roles. */
static void
check_role_switch(const char *guc, List *args)
{
	ListCell   *lc;

	foreach(lc, args)
	{
		Node	   *arg = (Node *) lfirst(lc);
		const char *name;
		Oid			roleid;

		if (!IsA(arg, A_Const) || ((A_Const *) arg)->isnull ||
			!IsA(&((A_Const *) arg)->val, String))
			continue;
		name = strVal(&((A_Const *) arg)->val);
		roleid = get_role_oid(name, true);
		if (is_reserved(roleid) || (OidIsValid(roleid) && reserved_membership_of(roleid) != NULL))
			DENY(("permission denied to set %s \"%s\"", guc, name),
				 ("\"%s\" is a reserved role or holds a reserved membership: only superusers can become it.", name));
	}
}

static bool
is_role_switch(const char *name)
{
	return strcmp(name, "role") == 0 || strcmp(name, "session_authorization") == 0;
}

/*
 * check_settings refuses the statement while any of pgshield_guard's lists
 * does not parse: the guard cannot tell then which roles it protects.
 */
static void
check_settings(void)
{
	StringInfoData bad;

	if (reserved_roles_ok && reserved_memberships_ok && admin_roles_ok && allowed_extensions_ok)
		return;
	initStringInfo(&bad);
	if (!reserved_roles_ok)
		appendStringInfoString(&bad, ", pgshield_guard.reserved_roles");
	if (!reserved_memberships_ok)
		appendStringInfoString(&bad, ", pgshield_guard.reserved_memberships");
	if (!admin_roles_ok)
		appendStringInfoString(&bad, ", pgshield_guard.admin_roles");
	if (!allowed_extensions_ok)
		appendStringInfoString(&bad, ", pgshield_guard.allowed_extensions");
	ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					errmsg("pgshield_guard's settings do not parse: role management is refused until an operator fixes them"),
					errdetail("Not a valid list of names: %s.", bad.data + 2)));
}

/* concerns_roles: statements whose checks depend on the role lists. */
static bool
concerns_roles(Node *stmt)
{
	switch (nodeTag(stmt))
	{
		case T_CreateRoleStmt:
		case T_AlterRoleStmt:
		case T_AlterRoleSetStmt:
		case T_DropRoleStmt:
		case T_GrantRoleStmt:
		case T_ReassignOwnedStmt:
		case T_DropOwnedStmt:
			return true;
		case T_RenameStmt:
			return ((RenameStmt *) stmt)->renameType == OBJECT_ROLE;
		case T_VariableSetStmt:
			{
				VariableSetStmt *s = (VariableSetStmt *) stmt;

				/* RESET ROLE and SET ... DEFAULT only go back to the session user. */
				return s->kind == VAR_SET_VALUE && s->name != NULL && is_role_switch(s->name);
			}
		default:
			return false;
	}
}

/* check_utility applies the rules to one statement of a non-superuser. */
static void
check_utility(Node *stmt)
{
	ListCell   *lc;

	if (concerns_roles(stmt))
		check_settings();
	switch (nodeTag(stmt))
	{
		case T_CreateRoleStmt:
			{
				CreateRoleStmt *s = (CreateRoleStmt *) stmt;

				if (name_in_list(s->role, reserved_roles))
					DENY(("permission denied to create role \"%s\"", s->role),
						 ("\"%s\" is a reserved role name.", s->role));
				check_attributes(s->options, "create");
				foreach(lc, s->options)
				{
					DefElem    *d = lfirst_node(DefElem, lc);
					ListCell   *m;

					/* IN ROLE r: the new role becomes a member of r */
					if (strcmp(d->defname, "addroleto") == 0)
						foreach(m, (List *) d->arg)
							check_grantable(rolespec_oid(lfirst(m)), rolespec_label(lfirst(m)));
					/* ROLE m / ADMIN m: m becomes a member of the new role */
					if (strcmp(d->defname, "rolemembers") == 0 || strcmp(d->defname, "adminmembers") == 0)
						foreach(m, (List *) d->arg)
							check_target(rolespec_oid(lfirst(m)), rolespec_label(lfirst(m)), "grant membership to");
				}
				break;
			}
		case T_AlterRoleStmt:
			{
				AlterRoleStmt *s = (AlterRoleStmt *) stmt;
				List	   *members = NIL;
				bool		group = false;

				check_attributes(s->options, "alter");
				foreach(lc, s->options)
				{
					DefElem    *d = lfirst_node(DefElem, lc);

					if (strcmp(d->defname, "rolemembers") == 0)
					{
						group = true;
						members = (List *) d->arg;
					}
				}
				if (group)
				{
					/* ALTER GROUP g ADD|DROP USER m: GRANT|REVOKE g TO|FROM m */
					ListCell   *m;

					if (s->action > 0)
						check_grantable(rolespec_oid(s->role), rolespec_label(s->role));
					else if (is_reserved(rolespec_oid(s->role)))
						check_target(rolespec_oid(s->role), rolespec_label(s->role), "revoke");
					foreach(m, members)
						check_target(rolespec_oid(lfirst(m)), rolespec_label(lfirst(m)),
									 s->action > 0 ? "grant membership to" : "revoke membership from");
				}
				else
					check_target(rolespec_oid(s->role), rolespec_label(s->role), "alter");
				break;
			}
		case T_AlterRoleSetStmt:
			{
				AlterRoleSetStmt *s = (AlterRoleSetStmt *) stmt;

				if (s->role == NULL)
					DENY(("permission denied to alter settings of all roles"),
						 ("Only superusers can change settings for every role."));
				check_target(rolespec_oid(s->role), rolespec_label(s->role), "alter");
				if (s->setstmt != NULL && s->setstmt->name != NULL && is_role_switch(s->setstmt->name))
					check_role_switch(s->setstmt->name, s->setstmt->args);
				break;
			}
		case T_DropRoleStmt:
			foreach(lc, ((DropRoleStmt *) stmt)->roles)
				check_target(rolespec_oid(lfirst(lc)), rolespec_label(lfirst(lc)), "drop");
			break;
		case T_RenameStmt:
			{
				RenameStmt *s = (RenameStmt *) stmt;

				if (s->renameType != OBJECT_ROLE)
					break;
				check_target(get_role_oid(s->subname, true), s->subname, "rename");
				if (name_in_list(s->newname, reserved_roles))
					DENY(("permission denied to rename role \"%s\"", s->subname),
						 ("\"%s\" is a reserved role name.", s->newname));
				break;
			}
		case T_GrantRoleStmt:
			{
				GrantRoleStmt *s = (GrantRoleStmt *) stmt;

				foreach(lc, s->granted_roles)
				{
					AccessPriv *p = lfirst_node(AccessPriv, lc);
					Oid			r = get_role_oid(p->priv_name, true);

					if (s->is_grant)
						check_grantable(r, p->priv_name);
					else if (is_reserved(r))
						check_target(r, p->priv_name, "revoke");
				}
				foreach(lc, s->grantee_roles)
					check_target(rolespec_oid(lfirst(lc)), rolespec_label(lfirst(lc)),
								 s->is_grant ? "grant membership to" : "revoke membership from");
				if (s->grantor != NULL && is_reserved(rolespec_oid(s->grantor)))
					check_target(rolespec_oid(s->grantor), rolespec_label(s->grantor), "grant as");
				break;
			}
		case T_ReassignOwnedStmt:
			{
				ReassignOwnedStmt *s = (ReassignOwnedStmt *) stmt;

				foreach(lc, s->roles)
					if (is_reserved(rolespec_oid(lfirst(lc))))
						check_target(rolespec_oid(lfirst(lc)), rolespec_label(lfirst(lc)), "reassign objects of");
				if (is_reserved(rolespec_oid(s->newrole)))
					check_target(rolespec_oid(s->newrole), rolespec_label(s->newrole), "reassign objects to");
				break;
			}
		case T_DropOwnedStmt:
			foreach(lc, ((DropOwnedStmt *) stmt)->roles)
				if (is_reserved(rolespec_oid(lfirst(lc))))
					check_target(rolespec_oid(lfirst(lc)), rolespec_label(lfirst(lc)), "drop objects of");
			break;
		case T_CopyStmt:
			{
				CopyStmt   *s = (CopyStmt *) stmt;

				if (s->is_program)
					DENY(("permission denied to COPY to or from an external program"),
						 ("Only superusers can run programs on the server."));
				if (s->filename != NULL)
					ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
									errmsg("permission denied to COPY to or from a file on the server"),
									errdetail("Only superusers can read or write the server's files."),
									errhint("COPY ... TO STDOUT and COPY ... FROM STDIN (psql's \\copy) move data through the client.")));
				break;
			}
		case T_CreatePLangStmt:
			DENY(("permission denied to create language \"%s\"", ((CreatePLangStmt *) stmt)->plname),
				 ("Only superusers can create procedural languages."));
			break;
		case T_AlterSystemStmt:
			ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
							errmsg("permission denied to run ALTER SYSTEM"),
							errdetail("Server parameters are managed by pgshield."),
							errhint("An operator sets them with: pgshield parameter set NAME VALUE")));
			break;
		case T_LoadStmt:
			DENY(("permission denied to load library \"%s\"", ((LoadStmt *) stmt)->filename),
				 ("Only superusers can load libraries into the server."));
			break;
		case T_VariableSetStmt:
			{
				VariableSetStmt *s = (VariableSetStmt *) stmt;

				if (s->kind == VAR_SET_VALUE && s->name != NULL && is_role_switch(s->name))
					check_role_switch(s->name, s->args);
				break;
			}
		case T_GrantStmt:
			if (((GrantStmt *) stmt)->objtype == OBJECT_PARAMETER_ACL)
				DENY(("permission denied to grant privileges on parameters"),
					 ("Server parameters are managed by pgshield."));
			break;
		default:
			break;
	}
}

/* Control holds what pgshield_guard needs from an extension's control file. */
typedef struct Control
{
	bool		found;
	bool		trusted;
	bool		superuser;		/* needs a superuser unless trusted */
	char	   *schema;			/* fixed schema, if any */
} Control;

static void
read_control(const char *extname, Control *c)
{
	char		sharepath[MAXPGPATH];
	char		path[MAXPGPATH];
	FILE	   *f;
	ConfigVariable *head = NULL,
			   *tail = NULL,
			   *item;

	memset(c, 0, sizeof(*c));
	c->superuser = true;
	if (strchr(extname, '/') != NULL || strstr(extname, "..") != NULL)
		return;
	get_share_path(my_exec_path, sharepath);
	snprintf(path, sizeof(path), "%s/extension/%s.control", sharepath, extname);
	if ((f = AllocateFile(path, "r")) == NULL)
		return;					/* PostgreSQL reports "is not available" */
	c->found = true;
	(void) ParseConfigFp(f, path, 0, ERROR, &head, &tail);
	FreeFile(f);
	for (item = head; item != NULL; item = item->next)
	{
		if (strcmp(item->name, "trusted") == 0)
			(void) parse_bool(item->value, &c->trusted);
		else if (strcmp(item->name, "superuser") == 0)
			(void) parse_bool(item->value, &c->superuser);
		else if (strcmp(item->name, "schema") == 0)
			c->schema = pstrdup(item->value);
	}
	FreeConfigVariables(head);
}

static void
call_next(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
		  ProcessUtilityContext context, ParamListInfo params,
		  QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	if (prev_utility_hook)
		prev_utility_hook(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
}

/*
 * create_extension handles CREATE EXTENSION by a non-superuser. Only
 * extensions in pgshield_guard.allowed_extensions pass. PostgreSQL runs a
 * trusted extension's script as the bootstrap superuser itself; for an
 * allowed extension that is not marked trusted (pg_stat_statements, pgaudit)
 * this does the same: it checks what PostgreSQL checks for trusted ones,
 * runs the one statement as the bootstrap superuser and hands the extension
 * to the caller, as PostgreSQL does. Returns false when the statement should
 * go on to PostgreSQL as it is.
 */
static bool
create_extension(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
				 ProcessUtilityContext context, ParamListInfo params,
				 QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	CreateExtensionStmt *s = (CreateExtensionStmt *) pstmt->utilityStmt;
	const char *schema = NULL;
	ListCell   *lc;
	Control		c;
	Oid			nsp = InvalidOid;
	Oid			save_userid;
	int			save_sec_context;

	check_settings();
	/* Already there: PostgreSQL says so (or skips with IF NOT EXISTS). */
	if (OidIsValid(get_extension_oid(s->extname, true)))
		return false;
	if (!name_in_list(s->extname, allowed_extensions))
		ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						errmsg("extension \"%s\" is not allowed", s->extname),
						errdetail("Allowed extensions: %s.", list_display(allowed_extensions)),
						errhint("An operator can change the list with: pgshield parameter set pgshield.allowed_extensions ...")));
	foreach(lc, s->options)
	{
		DefElem    *d = lfirst_node(DefElem, lc);

		if (strcmp(d->defname, "schema") == 0)
			schema = defGetString(d);
		else if (strcmp(d->defname, "cascade") == 0 && defGetBoolean(d))
			ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
							errmsg("permission denied to create extension \"%s\" with CASCADE", s->extname),
							errhint("Create the extensions it requires first, each on its own.")));
	}
	read_control(s->extname, &c);
	if (!c.found)
		return false;

	/*
	 * The script runs as a superuser, who may create objects anywhere: the
	 * caller must be allowed to create in the target schema.
	 */
	if (schema != NULL)
		nsp = get_namespace_oid(schema, true);
	else if (c.schema == NULL)
	{
		List	   *path = fetch_search_path(false);

		if (path != NIL)
			nsp = linitial_oid(path);
	}
	if (OidIsValid(nsp) && pg_namespace_aclcheck(nsp, GetUserId(), ACL_CREATE) != ACLCHECK_OK)
		ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						errmsg("permission denied for schema %s", get_namespace_name(nsp)),
						errdetail("Creating extension \"%s\" there needs the CREATE privilege on that schema.", s->extname)));

	if (c.trusted || !c.superuser)
		return false;			/* PostgreSQL's own path for trusted extensions */

	if (pg_database_aclcheck(MyDatabaseId, GetUserId(), ACL_CREATE) != ACLCHECK_OK)
		ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						errmsg("permission denied to create extension \"%s\"", s->extname),
						errhint("Must have CREATE privilege on current database to create this extension.")));

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(BOOTSTRAP_SUPERUSERID,
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	PG_TRY();
	{
		Relation	rel;

		call_next(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
		CommandCounterIncrement();
		/* The caller owns the extension; its objects stay the superuser's. */
		rel = table_open(ExtensionRelationId, RowExclusiveLock);
		AlterObjectOwner_internal(rel, get_extension_oid(s->extname, false), save_userid);
		table_close(rel, NoLock);
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec_context);
	}
	PG_END_TRY();
	return true;
}

/*
 * session_dirty: whether this session may hold state that DISCARD ALL
 * clears and a transaction's end does not (a session-level GUC, a prepared
 * statement, a temporary table, a WITH HOLD cursor, LISTEN, ...). Every
 * utility statement but the few below sets it, at any nesting level (a
 * function's EXECUTE passes here too); DISCARD ALL clears it. What a
 * utility statement cannot leave is checked where it is read
 * (session_gucs_set) or undone at every rebind (check_bind_client:
 * session advisory locks, sequence state). The gateway skips DISCARD ALL
 * at a transaction-mode hand-over only while this is false.
 */
static bool session_dirty = false;

/* Whether to report session_dirty to the gateway, and whether it was (report_at_end). */
static bool report_state = false;
static bool dirty_reported = false;

/*
 * A pipelined hand-over that fails with a mere ERROR poisons the session.
 * The gateway sends the next client's messages right behind the rebind
 * (SET pgshield_guard.bind_client ... expect=...); the rebind itself turns
 * every failure into FATAL (check_bind_client), but an ERROR can come
 * before the guard's utility hook is reached: a cancel (pg_cancel_backend
 * from another session of the role) or a statement timeout at the
 * interrupt check exec_simple_query makes before parse analysis. Then the
 * session would go on, still bound to the last client, and run what
 * follows. So a callback at the bottom of the error context stack, put
 * back at the end of every transaction of a gateway session (PostgreSQL
 * empties the stack after an error), marks the session
 * poisoned when an error is reported while the statement is a pipelined
 * rebind; a poisoned session ends (FATAL) at the first hook of anything
 * else: parse analysis, planning, execution, a utility statement, a
 * function called by FunctionCall. Nothing a client sends runs without
 * passing one of them first.
 */
static bool poisoned = false;

#define BIND_SET_PREFIX "SET pgshield_guard.bind_client = '"

static void
bind_error_callback(void *arg)
{
	int			cat;

	if (debug_query_string == NULL || strncmp(debug_query_string, BIND_SET_PREFIX, strlen(BIND_SET_PREFIX)) != 0 ||
		strstr(debug_query_string, "&expect=") == NULL)
		return;
	/* Errors only: a NOTICE or a LOG line (pgaudit's) passes here too. */
	cat = ERRCODE_TO_CATEGORY(geterrcode());
	if (cat != ERRCODE_SUCCESSFUL_COMPLETION && cat != ERRCODE_WARNING && cat != ERRCODE_NO_DATA)
		poisoned = true;
}

static ErrorContextCallback bind_errcb = {NULL, bind_error_callback, NULL};

/* arm_bind_errcb puts bind_errcb at the bottom of an empty error context stack. */
static void
arm_bind_errcb(void)
{
	if (error_context_stack == NULL)
	{
		bind_errcb.previous = NULL;
		error_context_stack = &bind_errcb;
	}
}

/* refuse_if_poisoned ends a session whose pipelined hand-over failed. */
static void
refuse_if_poisoned(void)
{
	if (poisoned)
		ereport(FATAL, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						errmsg("pooled backend refused for its next client: its hand-over failed")));
}

/* is_bind_set: SET pgshield_guard.bind_client (the gateway's rebind). */
static bool
is_bind_set(Node *stmt)
{
	VariableSetStmt *v;

	if (stmt == NULL || !IsA(stmt, VariableSetStmt))
		return false;
	v = (VariableSetStmt *) stmt;
	return v->kind == VAR_SET_VALUE && v->name != NULL && strcmp(v->name, "pgshield_guard.bind_client") == 0;
}

static bool
utility_leaves_state(Node *stmt)
{
	switch (nodeTag(stmt))
	{
		case T_TransactionStmt:	/* BEGIN, COMMIT, SAVEPOINT, PREPARE TRANSACTION */
		case T_VariableShowStmt:
		case T_CopyStmt:
		case T_LockStmt:
			return false;
		case T_VariableSetStmt:
			return !((VariableSetStmt *) stmt)->is_local;
		default:
			return true;
	}
}

static void
guard_ProcessUtility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
					 ProcessUtilityContext context, ParamListInfo params,
					 QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *stmt = pstmt->utilityStmt;
	bool		discard_all = IsA(stmt, DiscardStmt) && ((DiscardStmt *) stmt)->target == DISCARD_ALL;

	if (is_bind_set(stmt))
	{
		/*
		 * The rebind: nothing interrupts it once here, and it leaves no
		 * state of its own (check_bind_client keeps the setting empty).
		 */
		refuse_if_poisoned();
		HOLD_INTERRUPTS();
		call_next(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
		RESUME_INTERRUPTS();
		return;
	}
	refuse_if_poisoned();
	/* Before it runs: a statement that fails half-way may still leave some. */
	if (!discard_all && utility_leaves_state(stmt))
		session_dirty = true;
	switch (nodeTag(stmt))
	{
			/* Only these need a look; superuser() needs a live transaction. */
		case T_CreateRoleStmt:
		case T_AlterRoleStmt:
		case T_AlterRoleSetStmt:
		case T_DropRoleStmt:
		case T_RenameStmt:
		case T_GrantRoleStmt:
		case T_ReassignOwnedStmt:
		case T_DropOwnedStmt:
		case T_CopyStmt:
		case T_CreatePLangStmt:
		case T_AlterSystemStmt:
		case T_LoadStmt:
		case T_VariableSetStmt:
		case T_GrantStmt:
			if (!superuser())
				check_utility(stmt);
			break;
		case T_CreateExtensionStmt:
			if (!superuser() &&
				create_extension(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc))
				return;
			break;
		default:
			break;
	}
	call_next(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	if (discard_all)
		session_dirty = dirty_reported = false;
}

/*
 * Functions that read or write the server's files. PostgreSQL lets no one
 * but superusers run them unless a superuser grants EXECUTE; this keeps them
 * superuser-only even then.
 */
static bool
is_server_file_function(Oid fn)
{
	switch (fn)
	{
		case F_LO_IMPORT_TEXT:
		case F_LO_IMPORT_TEXT_OID:
		case F_LO_EXPORT:
		case F_PG_READ_FILE_TEXT:
		case F_PG_READ_FILE_OLD:
		case F_PG_READ_FILE_TEXT_INT8_INT8:
		case F_PG_READ_FILE_TEXT_INT8_INT8_BOOL:
		case F_PG_READ_BINARY_FILE_TEXT:
		case F_PG_READ_BINARY_FILE_TEXT_INT8_INT8:
		case F_PG_READ_BINARY_FILE_TEXT_INT8_INT8_BOOL:
		case F_PG_STAT_FILE_TEXT:
		case F_PG_STAT_FILE_TEXT_BOOL:
		case F_PG_LS_DIR_TEXT:
		case F_PG_LS_DIR_TEXT_BOOL_BOOL:
			return true;
	}
	return false;
}

/*
 * guard_object_access sees every function call the executor and the
 * fast-path interface prepare (OAT_FUNCTION_EXECUTE), built-in ones included;
 * fmgr_hook would miss built-ins, which fmgr calls without a lookup.
 */
/* Parse analysis, planning and execution of anything: not in a poisoned session. */
static void
guard_post_parse_analyze(ParseState *pstate, Query *query, JumbleState *jstate)
{
	refuse_if_poisoned();
	if (prev_post_parse_analyze_hook)
		prev_post_parse_analyze_hook(pstate, query, jstate);
}

static PlannedStmt *
guard_planner(Query *parse, const char *query_string, int cursorOptions, ParamListInfo boundParams)
{
	refuse_if_poisoned();
	if (prev_planner_hook)
		return prev_planner_hook(parse, query_string, cursorOptions, boundParams);
	return standard_planner(parse, query_string, cursorOptions, boundParams);
}

static void
guard_executor_start(QueryDesc *queryDesc, int eflags)
{
	refuse_if_poisoned();
	if (prev_executor_start_hook)
		prev_executor_start_hook(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
}

/*
 * is_rewind_session: a cluster node's pg_rewind (pgshield_guard.rewind_role,
 * empty on a single node) reads the source's files with the functions
 * Patroni grants it. Only the role itself, logged in as itself: not a
 * SECURITY DEFINER function it owns called by someone else, not SET ROLE
 * (it is a reserved role, which no one but a superuser may become or
 * grant). It logs in only over the node link with its SCRAM password.
 */
static char *rewind_role = NULL;

static bool
is_rewind_session(void)
{
	Oid			role;

	if (rewind_role == NULL || rewind_role[0] == '\0')
		return false;
	role = get_role_oid(rewind_role, true);
	return OidIsValid(role) && GetSessionUserId() == role && GetUserId() == role;
}

static void
guard_object_access(ObjectAccessType access, Oid classId, Oid objectId, int subId, void *arg)
{
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);
	if (access == OAT_FUNCTION_EXECUTE)
		refuse_if_poisoned();	/* a FunctionCall message among others */
	if (access == OAT_FUNCTION_EXECUTE && classId == ProcedureRelationId &&
		is_server_file_function(objectId) && !superuser() && !is_rewind_session())
		ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						errmsg("permission denied for function %s", get_func_name(objectId)),
						errdetail("Only superusers can read or write the server's files.")));
}

/*
 * check_list accepts every value: refusing one would leave PostgreSQL on the
 * previous value (on reload) or the default (at start), so a list pgshield
 * extended but wrote wrong would silently protect less. It only records, in
 * extra, whether the list parses; the assign hooks keep that for
 * check_settings.
 */
static bool
check_list(const char *guc, char **newval, void **extra)
{
	bool	   *ok = malloc(sizeof(bool));

	/* Out of memory: NULL extra, which the assign hooks take as broken. */
	if (ok != NULL)
	{
		List	   *elems = NIL;
		char	   *raw = pstrdup(*newval != NULL ? *newval : "");

		*ok = SplitIdentifierString(raw, ',', &elems);
		list_free(elems);
		pfree(raw);
	}
	/* Said once, by the postmaster, rather than by every backend. */
	if ((ok == NULL || !*ok) && !IsUnderPostmaster)
		ereport(WARNING,
				(errmsg("%s is not a valid list of names: \"%s\"", guc, *newval != NULL ? *newval : ""),
				 errdetail("Until it is fixed, roles that are not superusers can manage no role and create no extension.")));
	*extra = ok;
	return true;
}

#define LIST_HOOKS(var) \
static bool \
check_##var(char **newval, void **extra, GucSource source) \
{ \
	return check_list("pgshield_guard." #var, newval, extra); \
} \
static void \
assign_##var(const char *newval, void *extra) \
{ \
	var##_ok = extra != NULL && *(bool *) extra; \
}

LIST_HOOKS(reserved_roles)
LIST_HOOKS(reserved_memberships)
LIST_HOOKS(admin_roles)
LIST_HOOKS(allowed_extensions)

/*
 * ---- The real client ----
 *
 * Every gateway session reaches PostgreSQL over the private Unix socket, so
 * PostgreSQL would show each one as [local]. The gateway (root, the only
 * process that may talk to that socket besides the postgres OS user) puts
 * what it knows into one startup parameter, pgshield_guard.client: the
 * client's address and port, its TLS session, how it logged in, and a
 * random per-backend key for rebinding. ClientAuthentication_hook takes it
 * out of the startup options (so no GUC ever holds it: SET, RESET ALL and
 * DISCARD ALL have nothing to change) before "connection authorized" is
 * logged and before pgstat_bestart copies MyProcPort into pg_stat_activity.
 *
 * It is believed only from a peer with uid pgshield_guard.gateway_uid
 * (root): the postgres OS user can reach the socket too, and its sessions
 * show what PostgreSQL would. A value from anyone else, or one that does
 * not parse, ends the connection with FATAL.
 *
 * Record: "v=1&addr=A&port=P[&tls=V&cipher=C&bits=N]&method=M[&oid=O]
 * [&iss=I][&exp=UNIX]&key=HEX64", values percent-encoded. A later
 * "SET pgshield_guard.bind_client = 'v=1&seq=N&pid=PID&addr=...&mac=HEX64'"
 * rebinds the backend to a new client (a pooled backend): the MAC is
 * HMAC-SHA-256 under the backend's key over everything before "&mac=", and
 * seq must grow, so a tenant who reads the statement in pg_stat_activity
 * can neither replay it nor forge another.
 */
#define CLIENT_PARAM "pgshield_guard.client"
#define MAX_RECORD 4096
#define KEY_LEN 32

typedef struct ClientIdentity
{
	struct sockaddr_storage addr;
	socklen_t	salen;
	char		host[INET6_ADDRSTRLEN];
	char		port[8];
	char		hostname[NI_MAXHOST];
	char		tls_version[16];	/* "" without TLS */
	char		cipher[NAMEDATALEN];
	int			bits;
	char		method[24];
	char		principal[129];
	char		issuer[257];
	int64		expiry;			/* unix seconds, 0 if none */
	uint64		seq;
	int			pid;
	bool		report;			/* report=1: report session state (report_state) */
	bool		has_expect;		/* expect=DIGEST: a pipelined hand-over (check_bind_client) */
	char		expect[2 * PG_SHA256_DIGEST_LENGTH + 1];
} ClientIdentity;

/* One slot per backend, for pgshield.sessions. */
typedef struct ClientSlot
{
	int			pid;			/* 0: unused */
	Oid			userid;
	TimestampTz bound_at;
	int64		expiry;
	char		method[24];
	char		identity[129];
	char		principal[129];
	char		issuer[257];
} ClientSlot;

static int	gateway_uid = 0;
static char *bind_client = NULL;

static bool client_bound = false;	/* a trusted record was applied */
static ClientIdentity client;
static uint8 client_key[KEY_LEN];
static uint64 client_seq = 0;
static char client_identity[129];
static bool publish_pending = false;
static bool exit_registered = false;

static ClientSlot *client_slots = NULL;
static LWLock *client_lock = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static ClientAuthentication_hook_type prev_client_auth_hook = NULL;

static const char *const login_methods[] = {"scram-sha-256", "scram-sha-256-plus", "token", "password"};

static int
hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * pct_decode decodes src[0..len) into dst (dstsize with its NUL). Control
 * characters are refused: the values reach the server log.
 */
static bool
pct_decode(const char *src, size_t len, char *dst, size_t dstsize)
{
	size_t		o = 0;
	size_t		i;

	for (i = 0; i < len; i++)
	{
		int			c = (unsigned char) src[i];

		if (c == '%')
		{
			int			h,
						l;

			if (len - i < 3 || (h = hexval(src[i + 1])) < 0 || (l = hexval(src[i + 2])) < 0)
				return false;
			c = h * 16 + l;
			i += 2;
		}
		if (c < 0x20 || c == 0x7f || o + 1 >= dstsize)
			return false;
		dst[o++] = (char) c;
	}
	dst[o] = '\0';
	return true;
}

static bool
parse_int64(const char *s, int64 min, int64 max, int64 *out)
{
	char	   *end;
	long long	v;

	if (s[0] < '0' || s[0] > '9')
		return false;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max)
		return false;
	*out = v;
	return true;
}

static bool
parse_hex(const char *s, uint8 *out, size_t n)
{
	size_t		i;

	if (strlen(s) != 2 * n)
		return false;
	for (i = 0; i < n; i++)
	{
		int			h = hexval(s[2 * i]),
					l = hexval(s[2 * i + 1]);

		if (h < 0 || l < 0)
			return false;
		out[i] = (uint8) (h * 16 + l);
	}
	return true;
}

static bool
token_chars(const char *s)
{
	if (s[0] == '\0')
		return false;
	for (; *s; s++)
		if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
			  *s == '_' || *s == '-'))
			return false;
	return true;
}

#define FLD_V			(1 << 0)
#define FLD_ADDR		(1 << 1)
#define FLD_PORT		(1 << 2)
#define FLD_TLS		(1 << 3)
#define FLD_CIPHER	(1 << 4)
#define FLD_BITS		(1 << 5)
#define FLD_METHOD	(1 << 6)
#define FLD_OID		(1 << 7)
#define FLD_ISS		(1 << 8)
#define FLD_EXP		(1 << 9)
#define FLD_KEY		(1 << 10)
#define FLD_SEQ		(1 << 11)
#define FLD_PID		(1 << 12)
#define FLD_REPORT	(1 << 13)
#define FLD_EXPECT	(1 << 14)

/*
 * parse_record parses rec[0..len) into id (and key, for a startup record).
 * On failure it returns false and sets *why, which never quotes the value:
 * the record carries the backend's key.
 */
static bool
parse_record(const char *rec, size_t len, bool startup, ClientIdentity *id, uint8 *key, const char **why)
{
	const char *p = rec,
			   *end = rec + len;
	int			seen = 0;
	char		val[MAX_RECORD + 1];
	int64		n;
	int			portnum = 0;

	memset(id, 0, sizeof(*id));
	*why = "malformed record";
	if (len == 0 || len > MAX_RECORD)
	{
		*why = len == 0 ? "empty record" : "record too long";
		return false;
	}
	while (p < end)
	{
		const char *amp = memchr(p, '&', end - p);
		const char *fend = amp ? amp : end;
		const char *eq = memchr(p, '=', fend - p);
		size_t		klen;
		int			bit;
		char	   *dst = val;
		size_t		dstsize = sizeof(val);

		if (eq == NULL)
			return false;
		klen = eq - p;
#define KEY_IS(k) (klen == strlen(k) && strncmp(p, k, klen) == 0)
		if (KEY_IS("v"))
			bit = FLD_V;
		else if (KEY_IS("addr"))
			bit = FLD_ADDR;
		else if (KEY_IS("port"))
			bit = FLD_PORT;
		else if (KEY_IS("tls"))
			bit = FLD_TLS, dst = id->tls_version, dstsize = sizeof(id->tls_version);
		else if (KEY_IS("cipher"))
			bit = FLD_CIPHER, dst = id->cipher, dstsize = sizeof(id->cipher);
		else if (KEY_IS("bits"))
			bit = FLD_BITS;
		else if (KEY_IS("method"))
			bit = FLD_METHOD, dst = id->method, dstsize = sizeof(id->method);
		else if (KEY_IS("oid"))
			bit = FLD_OID, dst = id->principal, dstsize = sizeof(id->principal);
		else if (KEY_IS("iss"))
			bit = FLD_ISS, dst = id->issuer, dstsize = sizeof(id->issuer);
		else if (KEY_IS("exp"))
			bit = FLD_EXP;
		else if (KEY_IS("key") && startup)
			bit = FLD_KEY;
		else if (KEY_IS("seq") && !startup)
			bit = FLD_SEQ;
		else if (KEY_IS("pid") && !startup)
			bit = FLD_PID;
		else if (KEY_IS("report"))
			bit = FLD_REPORT;
		else if (KEY_IS("expect") && !startup)
			bit = FLD_EXPECT, dst = id->expect, dstsize = sizeof(id->expect);
		else
		{
			*why = "unknown field";
			return false;
		}
#undef KEY_IS
		if (seen & bit)
		{
			*why = "duplicate field";
			return false;
		}
		seen |= bit;
		if (!pct_decode(eq + 1, fend - eq - 1, dst, dstsize))
		{
			*why = "field value malformed or too long";
			return false;
		}
		switch (bit)
		{
			case FLD_V:
				if (strcmp(val, "1") != 0)
				{
					*why = "unsupported version";
					return false;
				}
				break;
			case FLD_ADDR:
				{
					struct sockaddr_in *a4 = (struct sockaddr_in *) &id->addr;
					struct sockaddr_in6 *a6 = (struct sockaddr_in6 *) &id->addr;

					if (inet_pton(AF_INET, val, &a4->sin_addr) == 1)
					{
						a4->sin_family = AF_INET;
						id->salen = sizeof(*a4);
					}
					else if (inet_pton(AF_INET6, val, &a6->sin6_addr) == 1)
					{
						a6->sin6_family = AF_INET6;
						id->salen = sizeof(*a6);
					}
					else
					{
						*why = "addr is not an IP address";
						return false;
					}
					break;
				}
			case FLD_PORT:
				if (!parse_int64(val, 1, 65535, &n))
				{
					*why = "port out of range";
					return false;
				}
				portnum = (int) n;
				snprintf(id->port, sizeof(id->port), "%d", portnum);
				break;
			case FLD_BITS:
				if (!parse_int64(val, 1, 1024, &n))
				{
					*why = "bits out of range";
					return false;
				}
				id->bits = (int) n;
				break;
			case FLD_EXP:
				if (!parse_int64(val, 0, PG_INT64_MAX / 2, &id->expiry))
				{
					*why = "exp out of range";
					return false;
				}
				break;
			case FLD_KEY:
				if (!parse_hex(val, key, KEY_LEN))
				{
					*why = "key is not 64 hex digits";
					return false;
				}
				break;
			case FLD_SEQ:
				if (!parse_int64(val, 1, PG_INT64_MAX, &n))
				{
					*why = "seq out of range";
					return false;
				}
				id->seq = (uint64) n;
				break;
			case FLD_PID:
				if (!parse_int64(val, 1, PG_INT32_MAX, &n))
				{
					*why = "pid out of range";
					return false;
				}
				id->pid = (int) n;
				break;
			case FLD_REPORT:
				if (strcmp(val, "1") != 0)
				{
					*why = "report is not 1";
					return false;
				}
				id->report = true;
				break;
			case FLD_EXPECT:
				if (strlen(id->expect) != 2 * PG_SHA256_DIGEST_LENGTH ||
					strspn(id->expect, "0123456789abcdef") != 2 * PG_SHA256_DIGEST_LENGTH)
				{
					*why = "expect is not 64 lowercase hex digits";
					return false;
				}
				id->has_expect = true;
				break;
		}
		p = amp ? amp + 1 : end;
		if (amp != NULL && p == end)
			return false;		/* trailing '&' */
	}
	if ((seen & (FLD_V | FLD_ADDR | FLD_PORT | FLD_METHOD)) != (FLD_V | FLD_ADDR | FLD_PORT | FLD_METHOD))
	{
		*why = "v, addr, port or method missing";
		return false;
	}
	if (startup ? !(seen & FLD_KEY) : (seen & (FLD_SEQ | FLD_PID)) != (FLD_SEQ | FLD_PID))
	{
		*why = startup ? "key missing" : "seq or pid missing";
		return false;
	}
	if (id->addr.ss_family == AF_INET6)
		((struct sockaddr_in6 *) &id->addr)->sin6_port = htons((uint16) portnum);
	else
		((struct sockaddr_in *) &id->addr)->sin_port = htons((uint16) portnum);
	if (seen & FLD_TLS)
	{
		if (strcmp(id->tls_version, "TLSv1.2") != 0 && strcmp(id->tls_version, "TLSv1.3") != 0)
		{
			*why = "unknown TLS version";
			return false;
		}
		if ((seen & (FLD_CIPHER | FLD_BITS)) != (FLD_CIPHER | FLD_BITS) || !token_chars(id->cipher))
		{
			*why = "TLS cipher or bits missing or malformed";
			return false;
		}
	}
	else if (seen & (FLD_CIPHER | FLD_BITS))
	{
		*why = "cipher or bits without tls";
		return false;
	}
	{
		int			i;
		bool		ok = false;

		for (i = 0; i < (int) lengthof(login_methods); i++)
			ok = ok || strcmp(id->method, login_methods[i]) == 0;
		if (!ok)
		{
			*why = "unknown login method";
			return false;
		}
	}
	/* The numeric form, as PostgreSQL writes it in BackendInitialize. */
	if (pg_getnameinfo_all(&id->addr, id->salen, id->host, sizeof(id->host), NULL, 0,
						   NI_NUMERICHOST) != 0)
	{
		*why = "address cannot be rendered";
		return false;
	}
	return true;
}

/* publish_status puts the bound client into pg_stat_activity, pg_stat_ssl and pgshield.sessions. */
static bool
publish_status(void)
{
	volatile PgBackendStatus *be = MyBEEntry;

	/* pgstat_bestart fills the entry, and would overwrite what is written before it. */
	if (be == NULL || be->st_procpid != MyProcPid || MyProcPort == NULL)
		return false;
	PGSTAT_BEGIN_WRITE_ACTIVITY(be);
	memcpy((SockAddr *) &be->st_clientaddr, &MyProcPort->raddr, sizeof(SockAddr));
	if (be->st_clienthostname != NULL)
		strlcpy(be->st_clienthostname, MyProcPort->remote_hostname ? MyProcPort->remote_hostname : "", NAMEDATALEN);
	/* st_sslstatus is NULL in a build without SSL: then pg_stat_ssl stays f. */
	be->st_ssl = client.tls_version[0] != '\0' && be->st_sslstatus != NULL;
	if (be->st_sslstatus != NULL)
	{
		PgBackendSSLStatus *ss = be->st_sslstatus;

		memset(ss, 0, sizeof(*ss));
		if (be->st_ssl)
		{
			ss->ssl_bits = client.bits;
			strlcpy(ss->ssl_version, client.tls_version, NAMEDATALEN);
			strlcpy(ss->ssl_cipher, client.cipher, NAMEDATALEN);
		}
	}
	PGSTAT_END_WRITE_ACTIVITY(be);

	if (client_slots != NULL && MyBackendId >= 1 && MyBackendId <= MaxBackends)
	{
		ClientSlot *s = &client_slots[MyBackendId - 1];

		LWLockAcquire(client_lock, LW_EXCLUSIVE);
		memset(s, 0, sizeof(*s));
		s->pid = MyProcPid;
		s->userid = GetSessionUserId();
		s->bound_at = GetCurrentTimestamp();
		s->expiry = client.expiry;
		strlcpy(s->method, client.method, sizeof(s->method));
		strlcpy(s->identity, client_identity, sizeof(s->identity));
		strlcpy(s->principal, client.principal, sizeof(s->principal));
		strlcpy(s->issuer, client.issuer, sizeof(s->issuer));
		LWLockRelease(client_lock);
	}
	return true;
}

static void
clear_slot(int code, Datum arg)
{
	if (client_slots != NULL && MyBackendId >= 1 && MyBackendId <= MaxBackends)
	{
		LWLockAcquire(client_lock, LW_EXCLUSIVE);
		if (client_slots[MyBackendId - 1].pid == MyProcPid)
			memset(&client_slots[MyBackendId - 1], 0, sizeof(ClientSlot));
		LWLockRelease(client_lock);
	}
}

/*
 * publish_at_commit runs at the commit that ends InitPostgres, right after
 * pgstat_bestart (which resets st_ssl) and before the backend sends
 * ReadyForQuery: from then on other sessions see the TLS facts.
 */
static void
publish_at_commit(XactEvent event, void *arg)
{
	if (!publish_pending || event != XACT_EVENT_COMMIT)
		return;
	if (publish_status())
	{
		publish_pending = false;
		if (!exit_registered)
		{
			before_shmem_exit(clear_slot, (Datum) 0);
			exit_registered = true;
		}
	}
}

/* apply_client points MyProcPort at the bound client, as if it had connected directly. */
static void
apply_client(const ClientIdentity *id, const char *user)
{
	Port	   *port = MyProcPort;

	client = *id;
	if (strcmp(client.method, "token") == 0 && client.principal[0] != '\0')
		strlcpy(client_identity, client.principal, sizeof(client_identity));
	else
		strlcpy(client_identity, user ? user : "", sizeof(client_identity));
	memset(&port->raddr, 0, sizeof(port->raddr));
	memcpy(&port->raddr.addr, &client.addr, client.salen);
	port->raddr.salen = client.salen;
	port->remote_host = client.host;
	port->remote_port = client.port;
	port->remote_hostname = NULL;
	/*
	 * As BackendInitialize does: a name only if the reverse lookup gives
	 * one. PostgreSQL runs in a network namespace with no network, so
	 * only names in /etc/hosts resolve.
	 */
	if (log_hostname &&
		pg_getnameinfo_all(&client.addr, client.salen, client.hostname, sizeof(client.hostname),
						   NULL, 0, NI_NAMEREQD) == 0)
		port->remote_hostname = client.hostname;
}

static void
log_client(const char *what)
{
	if (!Log_connections)
		return;
	ereport(LOG,
			(errmsg("%s: identity=\"%s\" method=%s (pgshield gateway)", what, client_identity, client.method),
			 client.tls_version[0] != '\0' ?
			 errdetail("Client %s port %s, %s, cipher %s, %d bits%s%s.", client.host, client.port,
					   client.tls_version, client.cipher, client.bits,
					   client.issuer[0] ? ", token issuer " : "", client.issuer) :
			 errdetail("Client %s port %s, no TLS%s%s.", client.host, client.port,
					   client.issuer[0] ? ", token issuer " : "", client.issuer)));
}

static bool
peer_is_gateway(Port *port)
{
	struct ucred cred;
	socklen_t	len = sizeof(cred);

	if (port->laddr.addr.ss_family != AF_UNIX)
		return false;
	if (getsockopt(port->sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || len != sizeof(cred))
		return false;
	return cred.uid == (uid_t) gateway_uid;
}

/*
 * guard_client_auth takes pgshield_guard.client out of the startup
 * options, checks who sent it and binds the session to the client it names.
 */
static void
guard_client_auth(Port *port, int status)
{
	ListCell   *lc;
	int			idx = 0,
				found = -1;
	char	   *value = NULL;
	ClientIdentity id;
	const char *why;
	size_t		len;

	if (prev_client_auth_hook)
		prev_client_auth_hook(port, status);
	if (status != STATUS_OK)
		return;
	foreach(lc, port->guc_options)
	{
		/* names and values alternate */
		if (idx % 2 == 0 && strcmp((char *) lfirst(lc), CLIENT_PARAM) == 0)
		{
			if (found >= 0 || lnext(port->guc_options, lc) == NULL)
				ereport(FATAL, (errcode(ERRCODE_PROTOCOL_VIOLATION),
								errmsg("invalid parameter \"%s\": given more than once", CLIENT_PARAM)));
			found = idx;
			value = (char *) lfirst(lnext(port->guc_options, lc));
		}
		idx++;
	}
	if (found < 0)
		return;
	/* Consumed: no GUC ever holds it, so nothing in the session can change or show it. */
	port->guc_options = list_delete_nth_cell(port->guc_options, found + 1);
	port->guc_options = list_delete_nth_cell(port->guc_options, found);
	len = strnlen(value, MAX_RECORD + 1);
	if (!peer_is_gateway(port))
	{
		explicit_bzero(value, len);
		ereport(FATAL, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						errmsg("parameter \"%s\" can only be set by the pgshield gateway", CLIENT_PARAM),
						errdetail("The connection does not come from the gateway's user.")));
	}
	if (!parse_record(value, len, true, &id, client_key, &why))
	{
		explicit_bzero(value, len);
		ereport(FATAL, (errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
						errmsg("invalid parameter \"%s\": %s", CLIENT_PARAM, why)));
	}
	explicit_bzero(value, len);
	apply_client(&id, port->user_name);
	report_state = id.report;
	port->authn_id = MemoryContextStrdup(TopMemoryContext, client_identity);
	client_bound = true;
	client_seq = 0;
	publish_pending = true;
	log_client("connection authenticated");
}

/* mac_ok checks mac (hex) against HMAC-SHA-256(client_key, msg), in constant time. */
static bool
mac_ok(const char *msg, size_t len, const char *machex)
{
	uint8		want[PG_SHA256_DIGEST_LENGTH],
				got[PG_SHA256_DIGEST_LENGTH];
	pg_hmac_ctx *ctx = pg_hmac_create(PG_SHA256);
	bool		ok;

	if (ctx == NULL)
		return false;
	ok = pg_hmac_init(ctx, client_key, KEY_LEN) == 0 &&
		pg_hmac_update(ctx, (const uint8 *) msg, len) == 0 &&
		pg_hmac_final(ctx, want, sizeof(want)) == 0;
	pg_hmac_free(ctx);
	if (!ok || !parse_hex(machex, got, sizeof(got)))
		return false;
	return timingsafe_bcmp(want, got, sizeof(want)) == 0;
}

/*
 * check_bind_client verifies and applies a rebind. It acts in the check
 * hook, once per SET, and keeps "" as the value: the GUC then never holds
 * an identity that a RESET, a rollback or a parallel worker's copy of the
 * settings could bring back. Only SET and set_config in the session may
 * rebind (not ALTER ROLE/DATABASE/FUNCTION ... SET).
 */
static const char *handover_refusal(const ClientIdentity *id);

/*
 * apply_rebind binds the session to id, whose record check_bind_client has
 * verified; with interrupts held.
 */
static void
apply_rebind(const ClientIdentity *id)
{
	if (id->has_expect)
	{
		/*
		 * A pipelined hand-over: the next client's messages are already
		 * behind this one. A refusal ends the backend, so that none of
		 * them runs; the gateway sends them to another backend.
		 */
		const char *why = handover_refusal(id);

		if (why != NULL)
			ereport(FATAL, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
							errmsg("pooled backend refused for its next client: %s", why)));
	}
	client_seq = id->seq;
	/*
	 * What DISCARD ALL would undo that no utility statement marks (see
	 * session_dirty): session advisory locks (pg_advisory_unlock_all),
	 * currval/lastval state (DISCARD SEQUENCES; an identity column's
	 * nextval runs without a function call), and protocol-level named
	 * statements (DEALLOCATE ALL): the gateway tracks them, but a Close
	 * after an error in the same batch is skipped by PostgreSQL while the
	 * gateway counts it done, and the statement would otherwise reach the
	 * next client under its name.
	 */
	LockReleaseAll(USER_LOCKMETHOD, true);
	ResetSequenceCaches();
	DropAllPreparedStatements();
	if (id->has_expect)
	{
		/*
		 * random()'s state, which DISCARD ALL keeps too: a client could
		 * setseed() and know the next client's draws. The gateway's SQL
		 * hand-over reseeds in its statement; this one has none.
		 */
		uint64		r;

		if (!pg_strong_random(&r, sizeof(r)))
			ereport(ERROR, (errmsg("no random seed")));
		(void) DirectFunctionCall1(setseed, Float8GetDatum((double) (r >> 11) / (double) (UINT64CONST(1) << 53) * 2.0 - 1.0));
		dirty_reported = false;
	}
	report_state = id->report;
	apply_client(id, MyProcPort->user_name);
	(void) publish_status();
	log_client("session rebound to a new client");
	/* A cancel that arrived during the hand-over was for no statement of the new client's. */
	QueryCancelPending = false;
}

/*
 * check_bind_client verifies and applies a rebind. It acts in the check
 * hook, once per SET, and keeps "" as the value: the GUC then never holds
 * an identity that a RESET, a rollback or a parallel worker's copy of the
 * settings could bring back. Only SET and set_config in the session may
 * rebind (not ALTER ROLE/DATABASE/FUNCTION ... SET).
 *
 * A pipelined hand-over (a record with expect=) never fails with a mere
 * ERROR, which would let the messages behind it run on a session still
 * bound to the last client: every failure of it ends the backend.
 */
#define BIND_REFUSE(code, ...) \
	do { \
		if (pipelined) \
			ereport(FATAL, (errcode(code), errmsg("pooled backend refused for its next client: " __VA_ARGS__))); \
		GUC_check_errcode(code); \
		GUC_check_errmsg(__VA_ARGS__); \
		return false; \
	} while (0)

static bool
check_bind_client(char **newval, void **extra, GucSource source)
{
	const char *v = *newval;
	const char *mac;
	size_t		len;
	ClientIdentity id;
	const char *why;
	char	   *empty;
	bool		pipelined;

	if (v == NULL || v[0] == '\0')
		return true;
	len = strnlen(v, MAX_RECORD + 1);
	pipelined = len <= MAX_RECORD && strstr(v, "&expect=") != NULL;
	if (source != PGC_S_SESSION || MyProcPort == NULL)
		BIND_REFUSE(ERRCODE_INSUFFICIENT_PRIVILEGE, "pgshield_guard.bind_client can only be set with SET in a session the pgshield gateway opened");
	if (!client_bound)
		BIND_REFUSE(ERRCODE_INSUFFICIENT_PRIVILEGE, "this session was not opened by the pgshield gateway");
	mac = len <= MAX_RECORD ? strstr(v, "&mac=") : NULL;
	if (mac == NULL || !mac_ok(v, mac - v, mac + 5))
		BIND_REFUSE(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION, "pgshield_guard.bind_client: not authenticated by the gateway");
	if (!parse_record(v, mac - v, false, &id, NULL, &why))
		BIND_REFUSE(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION, "pgshield_guard.bind_client: %s", why);
	if (id.pid != MyProcPid || id.seq <= client_seq)
		BIND_REFUSE(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION, "pgshield_guard.bind_client: %s",
					id.pid != MyProcPid ? "for another backend" : "replayed (sequence number not above the last one)");
	empty = strdup("");
	if (empty == NULL)
		BIND_REFUSE(ERRCODE_OUT_OF_MEMORY, "out of memory");
	/*
	 * From here to the end nothing may be interrupted: a cancel or
	 * statement_timeout turning this into an ERROR would let the messages
	 * the gateway pipelined behind a hand-over run without it.
	 */
	HOLD_INTERRUPTS();
	if (!pipelined)
		apply_rebind(&id);
	else
	{
		MemoryContext cxt = CurrentMemoryContext;

		PG_TRY();
		{
			apply_rebind(&id);
		}
		PG_CATCH();
		{
			ErrorData  *e;

			MemoryContextSwitchTo(cxt);
			e = CopyErrorData();
			FlushErrorState();
			ereport(FATAL, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
							errmsg("pooled backend refused for its next client: the hand-over failed: %s", e->message)));
		}
		PG_END_TRY();
	}
	RESUME_INTERRUPTS();
	free(*newval);
	*newval = empty;
	return true;
}

#undef BIND_REFUSE

/*
 * Hand-over check (pgshield_guard.handover_check, read-only). A pooled
 * backend that passes to another client never goes through what PostgreSQL
 * checks only at connect; the gateway reads this setting after DISCARD ALL
 * and hands the backend over only if it says the session's role could open
 * this session now. Computed here from the syscache and PostgreSQL's own
 * counting functions: the same query in SQL (planned at every hand-over)
 * cost more than the transaction it guarded. The value is
 *
 *   v4 SAME EXT DB ROLE DIRTY DIGEST NAME
 *
 * (v3: the rebind also drops every named statement; v4: a pipelined rebind
 * that fails in any way ends the backend or poisons it. A gateway that relies
 * on them accepts nothing older, so it never trusts a library that does not.)
 *
 * SAME: t if current_user is session_user; EXT: t if the database has an
 * extension whose session state DISCARD ALL misses (dblink, postgres_fdw,
 * the procedural languages but plpgsql); DB: t if the database allows
 * connections, the session user has CONNECT on it and its CONNECTION LIMIT
 * holds (CountDBConnections, as InitPostgres); ROLE: t if the role may LOG
 * IN, its VALID UNTIL is in the future and its CONNECTION LIMIT holds
 * (CountUserBackends); DIRTY: t if the session may hold state DISCARD ALL
 * clears (session_dirty, session_gucs_set); DIGEST: SHA-256 of the ALTER ROLE/DATABASE ... SET
 * rows that apply to the session (they take effect only at connect); NAME:
 * the session user, last, as it may contain spaces. Superusers are subject
 * to no limit, as at connect. Outside a transaction it is "unavailable",
 * which the gateway refuses.
 */
static char *handover_check_var = NULL;

static const char *const stateful_extensions[] = {
	"dblink", "postgres_fdw", "plperl", "plperlu", "pltcl", "pltclu", "plpython3u", "plv8",
};

static bool
settings_digest(Oid db, Oid role, char *hex)
{
	Oid			dbs[2] = {InvalidOid, db};
	Oid			roles[2] = {InvalidOid, role};
	uint8		sum[PG_SHA256_DIGEST_LENGTH];
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(PG_SHA256);
	Relation	rel;
	bool		ok;
	int			i,
				j;

	if (ctx == NULL)
		return false;
	ok = pg_cryptohash_init(ctx) == 0;
	rel = table_open(DbRoleSettingRelationId, AccessShareLock);
	for (i = 0; i < 2 && ok; i++)
		for (j = 0; j < 2 && ok; j++)
		{
			ScanKeyData keys[2];
			SysScanDesc scan;
			HeapTuple	tup;

			ScanKeyInit(&keys[0], Anum_pg_db_role_setting_setdatabase, BTEqualStrategyNumber,
						F_OIDEQ, ObjectIdGetDatum(dbs[i]));
			ScanKeyInit(&keys[1], Anum_pg_db_role_setting_setrole, BTEqualStrategyNumber,
						F_OIDEQ, ObjectIdGetDatum(roles[j]));
			scan = systable_beginscan(rel, DbRoleSettingDatidRolidIndexId, true, NULL, 2, keys);
			tup = systable_getnext(scan);
			if (HeapTupleIsValid(tup))
			{
				bool		isnull;
				Datum		d = heap_getattr(tup, Anum_pg_db_role_setting_setconfig,
											 RelationGetDescr(rel), &isnull);

				if (!isnull)
				{
					struct varlena *v = pg_detoast_datum_packed((struct varlena *) DatumGetPointer(d));
					uint32		len = VARSIZE_ANY_EXHDR(v);

					/* Which row, then its length: unambiguous. */
					ok = pg_cryptohash_update(ctx, (const uint8 *) &dbs[i], sizeof(Oid)) == 0 &&
						pg_cryptohash_update(ctx, (const uint8 *) &roles[j], sizeof(Oid)) == 0 &&
						pg_cryptohash_update(ctx, (const uint8 *) &len, sizeof(len)) == 0 &&
						pg_cryptohash_update(ctx, (const uint8 *) VARDATA_ANY(v), len) == 0;
				}
			}
			systable_endscan(scan);
		}
	table_close(rel, AccessShareLock);
	ok = ok && pg_cryptohash_final(ctx, sum, sizeof(sum)) == 0;
	pg_cryptohash_free(ctx);
	if (ok)
		hex_encode((const char *) sum, sizeof(sum), hex);
	hex[ok ? 2 * sizeof(sum) : 0] = '\0';
	return ok;
}

/*
 * is_transaction_guc: the settings of the transaction itself (BEGIN
 * ISOLATION LEVEL ..., SET TRANSACTION), which every transaction starts
 * afresh from default_transaction_*: a session-level source on them holds
 * nothing for the next transaction.
 */
static bool
is_transaction_guc(const char *name)
{
	return strcmp(name, "transaction_isolation") == 0 ||
		strcmp(name, "transaction_read_only") == 0 ||
		strcmp(name, "transaction_deferrable") == 0;
}

/*
 * session_gucs_set reports whether a setting holds a session-level value
 * (SET, or set_config(..., false) from within a query, which no utility
 * statement marks), the rebind's own setting aside.
 */
static bool
session_gucs_set(void)
{
	struct config_generic **vars = get_guc_variables();
	int			n = GetNumConfigOptions();
	int			i;

	for (i = 0; i < n; i++)
		if (vars[i]->source == PGC_S_SESSION && strcmp(vars[i]->name, "pgshield_guard.bind_client") != 0 &&
			!is_transaction_guc(vars[i]->name))
			return true;
	return false;
}

/* HandoverState is the hand-over check, computed (handover_state). */
typedef struct HandoverState
{
	bool		same,
				ext,
				dbok,
				roleok,
				dirty;
	char		digest[2 * PG_SHA256_DIGEST_LENGTH + 1];
	const char *name;			/* the session user's name now (palloc'd) */
} HandoverState;

/*
 * The two parts of the check that read catalogs without a syscache (eight
 * lookups in pg_extension, four in pg_db_role_setting: most of a
 * hand-over's cost), kept until a catalog changes anywhere: any change to
 * either reaches this backend as a shared invalidation message (a row of
 * pg_db_role_setting invalidates catalog snapshots; CREATE and DROP
 * EXTENSION change pg_proc and pg_depend), and each message received
 * counts in SharedInvalidMessageCounter, as PostgreSQL's own caches of
 * name lookups rely on.
 */
static bool catalog_cache_valid = false;
static uint64 catalog_cache_counter;
static Oid	catalog_cache_db,
			catalog_cache_role;
static bool catalog_cache_ext;
static char catalog_cache_digest[2 * PG_SHA256_DIGEST_LENGTH + 1];

/* handover_state computes the check; false outside a transaction or when a lookup fails. */
static bool
handover_state(HandoverState *st)
{
	Oid			sess,
				db = MyDatabaseId;
	bool		super;
	HeapTuple	tup;
	size_t		i;

	memset(st, 0, sizeof(*st));
	if (!IsTransactionState() || !OidIsValid(db) || !OidIsValid(GetSessionUserId()))
		return false;
	sess = GetSessionUserId();
	super = superuser_arg(sess);
	/* The transaction's start took in every message committed before it. */
	if (!catalog_cache_valid || catalog_cache_counter != SharedInvalidMessageCounter ||
		catalog_cache_db != db || catalog_cache_role != sess)
	{
		uint64		counter = SharedInvalidMessageCounter;	/* before: a change meanwhile recomputes next time */
		bool		ext = false;

		catalog_cache_valid = false;
		for (i = 0; i < lengthof(stateful_extensions); i++)
			if (OidIsValid(get_extension_oid(stateful_extensions[i], true)))
				ext = true;
		if (!settings_digest(db, sess, catalog_cache_digest))
			return false;
		catalog_cache_ext = ext;
		catalog_cache_db = db;
		catalog_cache_role = sess;
		catalog_cache_counter = counter;
		catalog_cache_valid = true;
	}
	st->ext = catalog_cache_ext;
	memcpy(st->digest, catalog_cache_digest, sizeof(st->digest));
	tup = SearchSysCache1(DATABASEOID, ObjectIdGetDatum(db));
	if (HeapTupleIsValid(tup))
	{
		Form_pg_database d = (Form_pg_database) GETSTRUCT(tup);

		st->dbok = d->datallowconn &&
			pg_database_aclcheck(db, sess, ACL_CONNECT) == ACLCHECK_OK &&
			(super || d->datconnlimit < 0 || CountDBConnections(db) <= d->datconnlimit);
		ReleaseSysCache(tup);
	}
	tup = SearchSysCache1(AUTHOID, ObjectIdGetDatum(sess));
	if (HeapTupleIsValid(tup))
	{
		Form_pg_authid r = (Form_pg_authid) GETSTRUCT(tup);
		bool		isnull;
		Datum		until = SysCacheGetAttr(AUTHOID, tup, Anum_pg_authid_rolvaliduntil, &isnull);

		st->roleok = r->rolcanlogin &&
			(isnull || DatumGetTimestampTz(until) > GetCurrentTimestamp()) &&
			(super || r->rolconnlimit < 0 || CountUserBackends(sess) <= r->rolconnlimit);
		st->name = pstrdup(NameStr(r->rolname));
		ReleaseSysCache(tup);
	}
	if (st->name == NULL)
		return false;
	st->same = sess == GetUserId();
	st->dirty = session_dirty || session_gucs_set();
	return true;
}

static const char *
show_handover_check(void)
{
	HandoverState st;

	if (!handover_state(&st))
		return "unavailable";
	return psprintf("v4 %c %c %c %c %c %s %s", st.same ? 't' : 'f', st.ext ? 't' : 'f',
					st.dbok ? 't' : 'f', st.roleok ? 't' : 'f', st.dirty ? 't' : 'f',
					st.digest, st.name);
}

/*
 * handover_refusal is why a pipelined hand-over (a rebind with expect=)
 * may not proceed, or NULL: the same test the gateway applies to the
 * check's value (pooled.checkPass), here, because the gateway has already
 * sent the next client's messages behind the rebind and cannot wait for
 * an answer. The session must still be its login role's (by the name it
 * connected under: a renamed role is another pool's), with nothing
 * DISCARD ALL would clear, and the role settings it started with.
 */
static const char *
handover_refusal(const ClientIdentity *id)
{
	HandoverState st;

	if (!handover_state(&st))
		return "the check could not be computed";
	if (!st.same)
		return "the current user is not the session user";
	if (st.ext)
		return "the database has an extension with session state DISCARD ALL misses";
	if (!st.dbok)
		return "the role may no longer connect to this database";
	if (!st.roleok)
		return "the role may no longer log in";
	if (st.dirty)
		return "the session holds state DISCARD ALL would clear";
	if (strcmp(st.digest, id->expect) != 0)
		return "ALTER ROLE or DATABASE ... SET changed since the backend started";
	if (MyProcPort == NULL || MyProcPort->user_name == NULL || strcmp(st.name, MyProcPort->user_name) != 0)
		return "the role was renamed";
	return NULL;
}

/*
 * Session state reported to a transaction-pooling gateway (report=1 in
 * the record that bound the session): at the end of a transaction that
 * leaves the session dirty (session_dirty, session_gucs_set), one
 * ParameterStatus "pgshield_guard.dirty" = "on" goes out before
 * ReadyForQuery, so that the gateway knows before the next hand-over
 * whether it needs DISCARD ALL, without asking. It is advice: a rebind with
 * expect= still refuses a dirty session (handover_refusal). Sent once
 * until DISCARD ALL or a hand-over finds the session clean again.
 */
static void
report_at_end(XactEvent event, void *arg)
{
	static const char msg[] = "pgshield_guard.dirty\0on";

	if (!client_bound || whereToSendOutput != DestRemote || IsParallelWorker())
		return;
	if (event != XACT_EVENT_COMMIT && event != XACT_EVENT_ABORT && event != XACT_EVENT_PREPARE)
		return;
	/* Every gateway session: one bound for session pooling may next be handed over by a pipelined rebind. */
	arm_bind_errcb();
	if (!report_state || dirty_reported)
		return;
	/* At abort, settings the transaction set are still in place: a report too many, never one too few. */
	if (!session_dirty && !session_gucs_set())
		return;
	/* No palloc: this may run while aborting. The message is buffered and goes out with ReadyForQuery. */
	(void) pq_putmessage('S', msg, sizeof(msg));
	dirty_reported = true;
}

static void
guard_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(mul_size(MaxBackends, sizeof(ClientSlot)));
	RequestNamedLWLockTranche("pgshield_guard", 1);
}

static void
guard_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	client_slots = ShmemInitStruct("pgshield_guard clients", mul_size(MaxBackends, sizeof(ClientSlot)), &found);
	if (!found)
		memset(client_slots, 0, mul_size(MaxBackends, sizeof(ClientSlot)));
	client_lock = &(GetNamedLWLockTranche("pgshield_guard"))->lock;
	LWLockRelease(AddinShmemInitLock);
}

/*
 * pgshield_guard_client_sessions lists how each gateway session logged in,
 * under pg_stat_activity's rules: a row is shown to members of
 * pg_read_all_stats and to roles with the privileges of the session's role.
 */
PG_FUNCTION_INFO_V1(pgshield_guard_client_sessions);
Datum
pgshield_guard_client_sessions(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ClientSlot *copy;
	int			i,
				n = 0;
	bool		all_stats;

	InitMaterializedSRF(fcinfo, 0);
	if (client_slots == NULL)
		PG_RETURN_VOID();
	copy = palloc(mul_size(MaxBackends, sizeof(ClientSlot)));
	LWLockAcquire(client_lock, LW_SHARED);
	for (i = 0; i < MaxBackends; i++)
		if (client_slots[i].pid != 0)
			copy[n++] = client_slots[i];
	LWLockRelease(client_lock);
	all_stats = has_privs_of_role(GetUserId(), ROLE_PG_READ_ALL_STATS);
	for (i = 0; i < n; i++)
	{
		ClientSlot *s = &copy[i];
		Datum		values[7];
		bool		nulls[7] = {0};

		if (!all_stats && !has_privs_of_role(GetUserId(), s->userid))
			continue;
		values[0] = Int32GetDatum(s->pid);
		values[1] = CStringGetTextDatum(s->method);
		values[2] = CStringGetTextDatum(s->identity);
		nulls[3] = s->principal[0] == '\0';
		if (!nulls[3])
			values[3] = CStringGetTextDatum(s->principal);
		nulls[4] = s->issuer[0] == '\0';
		if (!nulls[4])
			values[4] = CStringGetTextDatum(s->issuer);
		nulls[5] = s->expiry == 0;
		if (!nulls[5])
			values[5] = TimestampTzGetDatum(time_t_to_timestamptz((pg_time_t) s->expiry));
		values[6] = TimestampTzGetDatum(s->bound_at);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	PG_RETURN_VOID();
}

void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						errmsg("pgshield_guard must be loaded via shared_preload_libraries")));

	DefineCustomStringVariable("pgshield_guard.reserved_roles",
							   "Roles only superusers may alter, drop, rename, grant, give memberships to or become.",
							   NULL, &reserved_roles, "postgres", PGC_SIGHUP, GUC_LIST_INPUT,
							   check_reserved_roles, assign_reserved_roles, NULL);
	DefineCustomStringVariable("pgshield_guard.reserved_memberships",
							   "Roles whose membership only superusers may grant.",
							   NULL, &reserved_memberships,
							   "pg_execute_server_program, pg_read_server_files, pg_write_server_files",
							   PGC_SIGHUP, GUC_LIST_INPUT, check_reserved_memberships, assign_reserved_memberships, NULL);
	DefineCustomStringVariable("pgshield_guard.admin_roles",
							   "Roles only superusers and the role itself may alter, drop, rename or grant.",
							   NULL, &admin_roles, "", PGC_SIGHUP, GUC_LIST_INPUT,
							   check_admin_roles, assign_admin_roles, NULL);
	DefineCustomStringVariable("pgshield_guard.allowed_extensions",
							   "Extensions non-superusers may create.",
							   NULL, &allowed_extensions, "", PGC_SIGHUP, GUC_LIST_INPUT,
							   check_allowed_extensions, assign_allowed_extensions, NULL);
	DefineCustomIntVariable("pgshield_guard.gateway_uid",
							"The OS user whose connections may carry the real client (pgshield_guard.client).",
							"The gateway runs as root; the postgres OS user's sessions show what PostgreSQL would.",
							&gateway_uid, 0, 0, INT_MAX, PGC_POSTMASTER, GUC_SUPERUSER_ONLY | GUC_NOT_IN_SAMPLE,
							NULL, NULL, NULL);
	DefineCustomStringVariable("pgshield_guard.rewind_role",
							   "A cluster node's pg_rewind role, which may read the server's files.",
							   "Empty on a single node.",
							   &rewind_role, "", PGC_POSTMASTER, GUC_SUPERUSER_ONLY | GUC_NOT_IN_SAMPLE,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("pgshield_guard.bind_client",
							   "Rebinds a gateway session to a new client; authenticated by the gateway.",
							   NULL, &bind_client, "", PGC_USERSET,
							   GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE | GUC_DISALLOW_IN_FILE | GUC_NO_RESET_ALL,
							   check_bind_client, NULL, NULL);
	DefineCustomStringVariable("pgshield_guard.handover_check",
							   "Whether this session's role could open it now (read by the gateway at a pooled hand-over).",
							   NULL, &handover_check_var, "", PGC_INTERNAL,
							   GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE | GUC_DISALLOW_IN_FILE | GUC_NO_RESET_ALL,
							   NULL, NULL, show_handover_check);
	MarkGUCPrefixReserved("pgshield_guard");

	prev_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = guard_ProcessUtility;
	prev_object_access_hook = object_access_hook;
	object_access_hook = guard_object_access;
	prev_post_parse_analyze_hook = post_parse_analyze_hook;
	post_parse_analyze_hook = guard_post_parse_analyze;
	prev_executor_start_hook = ExecutorStart_hook;
	ExecutorStart_hook = guard_executor_start;
	prev_planner_hook = planner_hook;
	planner_hook = guard_planner;
	prev_client_auth_hook = ClientAuthentication_hook;
	ClientAuthentication_hook = guard_client_auth;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = guard_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = guard_shmem_startup;
	RegisterXactCallback(publish_at_commit, NULL);
	RegisterXactCallback(report_at_end, NULL);
}
