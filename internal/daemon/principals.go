package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"github.com/pgshield/pgshield/internal/api"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/config"
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
	if p.Admin {
		if err := d.setAdminPrincipal(r.Context(), p.Name, true); err != nil {
			return nil, fmt.Errorf("principal %q created, but pgshield_guard does not protect it yet: %w", p.Name, err)
		}
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
	if p.Admin {
		if err := d.setAdminPrincipal(r.Context(), p.Name, false); err != nil {
			return nil, fmt.Errorf("principal %q deleted, but pgshield_guard still lists it: %w", p.Name, err)
		}
	}
	d.Log.Info("Token principal deleted.", "name", p.Name)
	d.audit(audit.Event{Type: "principal.delete", Outcome: audit.OutcomeSuccess, User: p.Name,
		Fields: map[string]any{"object_id": p.ObjectID, "type": p.Kind}})
	return p, nil
}

// setAdminPrincipal adds name to (or removes it from) the administrator
// roles pgshield_guard keeps roles that are not superusers from taking over,
// persists that, and has PostgreSQL reload it.
func (d *Daemon) setAdminPrincipal(ctx context.Context, name string, add bool) error {
	d.cfgMu.Lock()
	defer d.cfgMu.Unlock()
	next := *d.cfg
	next.AdminPrincipals = slices.DeleteFunc(slices.Clone(d.cfg.AdminPrincipals), func(n string) bool { return n == name })
	if add {
		next.AdminPrincipals = append(next.AdminPrincipals, name)
	}
	if err := config.Save(d.Layout, &next); err != nil {
		return err
	}
	d.cfg = &next
	return d.applyGuardSettings(ctx, &next)
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
