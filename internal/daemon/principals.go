package daemon

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/pgbackend"
	"github.com/pgshield/pgshield/internal/postgres"
)

// toAPIPrincipal converts a principal for the API; the two types have the
// same fields, so this fails to compile if one changes alone.
func toAPIPrincipal(p pgbackend.TokenPrincipal) apitype.Principal { return apitype.Principal(p) }

// Principals lists the token principals.
func (d *Daemon) Principals(ctx context.Context) ([]apitype.Principal, error) {
	ps, err := d.catalog.ListPrincipals(ctx)
	if err != nil {
		return nil, principalAPIErr(err)
	}
	out := make([]apitype.Principal, 0, len(ps))
	for _, p := range ps {
		out = append(out, toAPIPrincipal(p))
	}
	return out, nil
}

// CreatePrincipal creates a token principal's role; an administrator is
// listed with pgshield_guard first.
func (d *Daemon) CreatePrincipal(ctx context.Context, req apitype.PrincipalRequest) (apitype.Principal, error) {
	want := pgbackend.TokenPrincipal{Name: req.Name, ObjectID: req.ObjectID, Kind: req.Type, Admin: req.Admin}
	reserved := d.config().IsReserved
	listed := false
	if want.Admin {
		// Protected before the role exists: once it has CREATEROLE, a role
		// the administrator made could otherwise take it over before
		// pgshield_guard lists it. No protection, no principal.
		if err := postgres.CheckPrincipal(want, reserved); err != nil {
			return apitype.Principal{}, principalAPIErr(err)
		}
		var err error
		if listed, err = d.setAdminPrincipal(ctx, want.Name, true, true); err != nil {
			return apitype.Principal{}, fmt.Errorf("principal %q not created: pgshield_guard would not protect it: %w", want.Name, err)
		}
	}
	p, err := d.catalog.CreatePrincipal(ctx, want, reserved)
	if err != nil {
		if listed {
			// Even when the client has gone.
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			if _, uerr := d.setAdminPrincipal(uctx, want.Name, false, false); uerr != nil {
				// Listing a role that does not exist protects nothing and harms nothing.
				d.Log.Warn("Could not take a principal that was not created off pgshield_guard's administrator list.",
					"name", want.Name, "error", uerr)
			}
		}
		return apitype.Principal{}, principalAPIErr(err)
	}
	d.Log.Info("Token principal created.", "name", p.Name, "type", p.Kind, "admin", p.Admin)
	d.audit(audit.Event{Type: "principal.create", Outcome: audit.OutcomeSuccess, User: p.Name,
		Fields: map[string]any{"object_id": p.ObjectID, "type": p.Kind, "admin": p.Admin}})
	return toAPIPrincipal(p), nil
}

// DeletePrincipal drops a token principal's role, refused while it owns
// objects, and returns what it was.
func (d *Daemon) DeletePrincipal(ctx context.Context, name string) (apitype.Principal, error) {
	p, err := d.catalog.DeletePrincipal(ctx, name)
	if err != nil {
		return apitype.Principal{}, principalAPIErr(err)
	}
	if p.Admin {
		// The role is gone: the list without it is right, and PostgreSQL
		// takes it at its next start if not now.
		if _, err := d.setAdminPrincipal(ctx, p.Name, false, false); err != nil {
			return apitype.Principal{}, fmt.Errorf("principal %q deleted, but pgshield_guard still lists it: %w", p.Name, err)
		}
	}
	d.Log.Info("Token principal deleted.", "name", p.Name)
	d.audit(audit.Event{Type: "principal.delete", Outcome: audit.OutcomeSuccess, User: p.Name,
		Fields: map[string]any{"object_id": p.ObjectID, "type": p.Kind}})
	return toAPIPrincipal(p), nil
}

// setAdminPrincipal adds name to (or removes it from) the administrator
// roles pgshield_guard keeps roles that are not superusers from taking over,
// persists that, has PostgreSQL reload it and checks that it took it. It
// reports whether the list changed. With undo, a list PostgreSQL did not
// take is replaced by the previous one again.
func (d *Daemon) setAdminPrincipal(ctx context.Context, name string, add, undo bool) (bool, error) {
	d.cfgMu.Lock()
	defer d.cfgMu.Unlock()
	prev := d.cfg
	if slices.Contains(prev.AdminPrincipals, name) == add {
		// Nothing to change, but what PostgreSQL has must still match.
		return false, d.applyGuardSettings(ctx, prev)
	}
	next := *prev
	next.AdminPrincipals = slices.DeleteFunc(slices.Clone(prev.AdminPrincipals), func(n string) bool { return n == name })
	if add {
		next.AdminPrincipals = append(next.AdminPrincipals, name)
	}
	if err := config.Save(d.Layout, &next); err != nil {
		return false, err
	}
	d.cfg = &next
	err := d.applyGuardSettings(ctx, &next)
	if err == nil || !undo {
		return true, err
	}
	if serr := config.Save(d.Layout, prev); serr != nil {
		return true, errors.Join(err, fmt.Errorf("restoring the previous administrator list: %w", serr))
	}
	d.cfg = prev
	// The failure may have been ctx's own; the undo must still happen.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if aerr := d.applyGuardSettings(rctx, prev); aerr != nil {
		return false, errors.Join(err, fmt.Errorf("restoring the previous administrator list: %w", aerr))
	}
	return false, err
}

func principalAPIErr(err error) error {
	var pe *postgres.PrincipalError
	switch {
	case errors.As(err, &pe) && pe.NotFound:
		return clienterr.New(apitype.CodeNotFound, "%s", pe.Msg)
	case errors.As(err, &pe):
		return clienterr.New(apitype.CodeInvalid, "%s", pe.Msg)
	case errors.Is(err, postgres.ErrPrincipalSchema):
		return clienterr.New(apitype.CodeInvalid, "%v", err)
	}
	return clienterr.New(apitype.CodeUnavailable, "PostgreSQL is not available: %v", err)
}
