package alerting

import "sort"

// PowerfulRoles are the predefined roles whose new members raise an alert:
// each reads or writes every table, the server's files or programs, or
// ends other sessions.
var PowerfulRoles = []string{
	"pg_read_all_data", "pg_write_all_data", "pg_execute_server_program",
	"pg_read_server_files", "pg_write_server_files", "pg_signal_backend", "pg_checkpoint",
}

// Snapshot is what privilege-change alerts compare: read from the catalog
// by the service role, so nothing a tenant logs or does not log decides
// it. Every list is sorted.
type Snapshot struct {
	// Attrs maps a role to the powerful attributes it has (CREATEROLE,
	// BYPASSRLS, SUPERUSER, REPLICATION).
	Attrs map[string][]string `json:"attrs"`
	// Members maps a powerful predefined role to the roles that have its
	// privileges (directly or through other roles).
	Members map[string][]string `json:"members"`
	// PublicCreate lists who holds CREATE on schema public in database
	// postgres ("PUBLIC" for everyone).
	PublicCreate []string `json:"public_create"`
}

// DiffPrivileges returns an alert for every privilege in cur that was not
// in old. A nil old is a first look: nothing to compare, no alert.
func DiffPrivileges(old, cur *Snapshot) []Finding {
	if old == nil || cur == nil {
		return nil
	}
	var out []Finding
	add := func(role, what string) {
		role = Bound(role, MaxName)
		out = append(out, Finding{Type: TypePrivilegeChange, Key: "role=" + role + "|" + what, User: role,
			Details: map[string]string{"role": role, "privilege": what}, Evidence: map[string]string{}})
	}
	for _, role := range sortedKeys(cur.Attrs) {
		had := set(old.Attrs[role])
		for _, a := range cur.Attrs[role] {
			if !had[a] {
				add(role, a)
			}
		}
	}
	for _, g := range sortedKeys(cur.Members) {
		had := set(old.Members[g])
		for _, m := range cur.Members[g] {
			if !had[m] {
				add(m, "member of "+g)
			}
		}
	}
	had := set(old.PublicCreate)
	for _, g := range cur.PublicCreate {
		if !had[g] {
			add(g, "CREATE on schema public")
		}
	}
	return out
}

func set(xs []string) map[string]bool {
	m := make(map[string]bool, len(xs))
	for _, x := range xs {
		m[x] = true
	}
	return m
}

func sortedKeys(m map[string][]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
