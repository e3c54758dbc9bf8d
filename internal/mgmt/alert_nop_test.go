package mgmt

import (
	"context"

	"github.com/pgshield/pgshield/internal/apitype"
)

// nopBackend's alert and decoy methods (server_test.go has the rest).
func (nopBackend) Alerts() []apitype.Alert                    { return nil }
func (nopBackend) Alert(string) (apitype.Alert, error)        { return apitype.Alert{}, nil }
func (nopBackend) DismissAlert(string) (apitype.Alert, error) { return apitype.Alert{}, nil }
func (nopBackend) Decoys() []apitype.Decoy                    { return nil }
func (nopBackend) DeleteDecoy(context.Context, string, string) (apitype.Decoy, error) {
	return apitype.Decoy{}, nil
}
func (nopBackend) CreateDecoy(context.Context, apitype.DecoyRequest) (apitype.Decoy, error) {
	return apitype.Decoy{}, nil
}
