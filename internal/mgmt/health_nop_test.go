package mgmt

import "github.com/pgshield/pgshield/internal/apitype"

// nopBackend's health (server_test.go has the rest).
func (nopBackend) Health() apitype.Health { return apitype.Health{State: apitype.HealthOK} }
