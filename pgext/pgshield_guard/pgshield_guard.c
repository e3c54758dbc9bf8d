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

#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_extension.h"
#include "commands/alter.h"
#include "commands/defrem.h"
#include "commands/extension.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "storage/fd.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
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

static void
guard_ProcessUtility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
					 ProcessUtilityContext context, ParamListInfo params,
					 QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *stmt = pstmt->utilityStmt;

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
static void
guard_object_access(ObjectAccessType access, Oid classId, Oid objectId, int subId, void *arg)
{
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);
	if (access == OAT_FUNCTION_EXECUTE && classId == ProcedureRelationId &&
		is_server_file_function(objectId) && !superuser())
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
	MarkGUCPrefixReserved("pgshield_guard");

	prev_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = guard_ProcessUtility;
	prev_object_access_hook = object_access_hook;
	object_access_hook = guard_object_access;
}
