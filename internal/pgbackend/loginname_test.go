package pgbackend

import "testing"

func TestTokenShapedName(t *testing.T) {
	for name, want := range map[string]bool{
		"alice": false, "app_user": false, "_x": false, "a1$": false, "pgadmin": false,
		"alice@contoso.com": true, "Contoso DBAs": true, "ingest-app": true, "Bob": true,
		"a.b": true, `o"neil`: true, "1abc": true, "zoë": true, "$x": true, "": true,
	} {
		if got := TokenShapedName(name); got != want {
			t.Errorf("TokenShapedName(%q) = %v; want %v", name, got, want)
		}
	}
}
