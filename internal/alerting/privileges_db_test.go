package alerting

import "testing"

// CREATE on public in other databases: a change in a database read before
// alerts; the first read of a database that existed at the last look is
// the baseline; a database new since then is compared with nothing.
func TestDiffPublicCreateIn(t *testing.T) {
	hostile := "db\"; DROP DATABASE postgres; --\n"
	old := &Snapshot{PublicCreateIn: map[string][]string{"app": {}, hostile: {"alice"}},
		Listed: []string{"app", "legacy", hostile}}
	cur := &Snapshot{PublicCreateIn: map[string][]string{"app": {"PUBLIC"}, hostile: {"alice", "mallory"},
		"legacy": {"bob"}, "fresh": {"eve"}}, NewlyRead: []string{"fresh"}}
	got := map[string]string{}
	for _, f := range DiffPrivileges(old, cur) {
		if f.Type != TypePrivilegeChange || f.Details["privilege"] != "CREATE on schema public" || f.Database != f.Details["database"] {
			t.Errorf("finding %+v", f)
		}
		got[f.Details["database"]] += f.Details["role"]
	}
	want := map[string]string{"app": "PUBLIC", hostile: "mallory", "fresh": "eve"}
	if len(got) != len(want) {
		t.Errorf("alerts %v; want %v", got, want)
	}
	for db, role := range want {
		if got[db] != role {
			t.Errorf("database %q: %q; want %q", db, got[db], role)
		}
	}
}
