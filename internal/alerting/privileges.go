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
	// PublicCreate lists who holds CREATE on schema public in the pool's
	// database, postgres ("PUBLIC" for everyone).
	PublicCreate []string `json:"public_create"`
	// PublicCreateIn is the same for the other databases that allow
	// connections, by name: those read so far (they are read a few at a
	// time).
	PublicCreateIn map[string][]string `json:"public_create_in,omitempty"`
	// Listed are the other databases that allowed connections at the
	// last look; one not listed then is new.
	Listed []string `json:"listed,omitempty"`
	// Fresh are new databases not read yet: still compared with nothing
	// when they are.
	Fresh []string `json:"fresh,omitempty"`
	// NewlyRead are the new databases read in this look (compared with
	// nothing, not taken as the baseline).
	NewlyRead []string `json:"-"`
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
	newly := set(cur.NewlyRead)
	for _, db := range sortedKeys(cur.PublicCreateIn) {
		prev, ok := old.PublicCreateIn[db]
		if !ok && !newly[db] {
			continue // first read of a database that is not new: the baseline
		}
		had := set(prev)
		dbName := Bound(db, MaxName)
		for _, g := range cur.PublicCreateIn[db] {
			if had[g] {
				continue
			}
			role := Bound(g, MaxName)
			out = append(out, Finding{Type: TypePrivilegeChange, Key: "role=" + role + "|CREATE on schema public|db=" + dbName,
				User: role, Database: dbName,
				Details:  map[string]string{"role": role, "privilege": "CREATE on schema public", "database": dbName},
				Evidence: map[string]string{}})
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
