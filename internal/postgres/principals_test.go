package postgres

import (
	"strings"
	"testing"

	"github.com/pgshield/pgshield/internal/pgbackend"
)

func TestCheckPrincipalNameShape(t *testing.T) {
	none := func(string) bool { return false }
	for _, name := range []string{"alice@contoso.com", "Contoso DBAs", "ingest-app"} {
		if err := CheckPrincipal(pgbackend.TokenPrincipal{Name: name, ObjectID: "oid", Kind: pgbackend.PrincipalUser}, none); err != nil {
			t.Errorf("CheckPrincipal(%q) = %v; want nil", name, err)
		}
	}
	err := CheckPrincipal(pgbackend.TokenPrincipal{Name: "dbas", ObjectID: "oid", Kind: pgbackend.PrincipalGroup}, none)
	if err == nil || !strings.Contains(err.Error(), "must be one SQL has to quote") {
		t.Errorf("CheckPrincipal(dbas) = %v; want the plain-name refusal", err)
	}
}
