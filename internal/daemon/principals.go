package daemon

import (
	"errors"
	"net/http"

	"github.com/pgshield/pgshield/internal/api"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/postgres"
)

// PrincipalRequest creates a token principal.
type PrincipalRequest struct {
	Name     string `json:"name"`
	ObjectID string `json:"object_id"`
	Type     string `json:"type"`
	Admin    bool   `json:"admin"`
}

func (d *Daemon) principalRoutes() []api.Route {
	return []api.Route{
		{Method: "GET", Pattern: "/v1/principals", Handler: d.listPrincipals},
		{Method: "POST", Pattern: "/v1/principals", Write: true, Handler: d.createPrincipal},
		{Method: "DELETE", Pattern: "/v1/principals/{name}", Write: true, Handler: d.deletePrincipal},
	}
}

func (d *Daemon) listPrincipals(r *http.Request) (any, error) {
	ps, err := d.catalog.ListPrincipals(r.Context())
	if err != nil {
		return nil, principalAPIErr(err)
	}
	if ps == nil {
		ps = []postgres.TokenPrincipal{}
	}
	return ps, nil
}

func (d *Daemon) createPrincipal(r *http.Request) (any, error) {
	var req PrincipalRequest
	if err := api.DecodeBody(r, &req); err != nil {
		return nil, err
	}
	p, err := d.catalog.CreatePrincipal(r.Context(), postgres.TokenPrincipal{Name: req.Name, ObjectID: req.ObjectID,
		Kind: req.Type, Admin: req.Admin}, d.config().IsReserved)
	if err != nil {
		return nil, principalAPIErr(err)
	}
	d.Log.Info("Token principal created.", "name", p.Name, "type", p.Kind, "admin", p.Admin)
	d.audit(audit.Event{Type: "principal.create", Outcome: audit.OutcomeSuccess, User: p.Name,
		Fields: map[string]any{"object_id": p.ObjectID, "type": p.Kind, "admin": p.Admin}})
	return p, nil
}

func (d *Daemon) deletePrincipal(r *http.Request) (any, error) {
	p, err := d.catalog.DeletePrincipal(r.Context(), r.PathValue("name"))
	if err != nil {
		return nil, principalAPIErr(err)
	}
	d.Log.Info("Token principal deleted.", "name", p.Name)
	d.audit(audit.Event{Type: "principal.delete", Outcome: audit.OutcomeSuccess, User: p.Name,
		Fields: map[string]any{"object_id": p.ObjectID, "type": p.Kind}})
	return p, nil
}

func principalAPIErr(err error) error {
	var pe *postgres.PrincipalError
	switch {
	case errors.As(err, &pe) && pe.NotFound:
		return api.Errorf(api.CodeNotFound, "%s", pe.Msg)
	case errors.As(err, &pe):
		return api.Errorf(api.CodeInvalid, "%s", pe.Msg)
	case errors.Is(err, postgres.ErrPrincipalSchema):
		return api.Errorf(api.CodeInvalid, "%v", err)
	}
	return api.Errorf(api.CodeUnavailable, "PostgreSQL is not available: %v", err)
}
