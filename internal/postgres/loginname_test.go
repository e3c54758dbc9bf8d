package postgres

import (
	"strings"
	"testing"
)

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

func TestCheckPrincipalNameShape(t *testing.T) {
	none := func(string) bool { return false }
	for _, name := range []string{"alice@contoso.com", "Contoso DBAs", "ingest-app"} {
		if err := CheckPrincipal(TokenPrincipal{Name: name, ObjectID: "oid", Kind: PrincipalUser}, none); err != nil {
			t.Errorf("CheckPrincipal(%q) = %v; want nil", name, err)
		}
	}
	err := CheckPrincipal(TokenPrincipal{Name: "dbas", ObjectID: "oid", Kind: PrincipalGroup}, none)
	if err == nil || !strings.Contains(err.Error(), "must be one SQL has to quote") {
		t.Errorf("CheckPrincipal(dbas) = %v; want the plain-name refusal", err)
	}
}
