// Package principals is the controller of a server's token principals:
// the roles that log in with an access token, and the administrator list
// pgshield_guard protects them with. An administrator is listed before
// its role exists and taken off after it is gone.
//
// Changes of the list run under the configuration store's lock
// (conf.Store.Edit); nothing here takes another controller's lock.
package principals

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/pgshield/pgshield/internal/apitype"
	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/clienterr"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/ctl/conf"
	"github.com/pgshield/pgshield/internal/pgbackend"
	"github.com/pgshield/pgshield/internal/postgres"
)

// Config is what the controller needs.
type Config struct {
	Log  *slog.Logger
	Conf *conf.Store
	// Catalog is pgshield's catalog in the running PostgreSQL.
	Catalog func() *postgres.Catalog
	// ApplyGuard writes pgshield_guard's settings for cfg and waits until
	// PostgreSQL has them (the params controller's ApplyGuardSettings);
	// called under the store's lock.
	ApplyGuard func(ctx context.Context, cfg *config.Config) error
	Audit      func(audit.Event)
	// Publish, on a cluster node, shares the administrator list (shared.go)
	// after a change made here, before it is in force here; its error (a
	// standby) refuses the change. Not called for a list received from
	// the cluster (ApplyShared).
	Publish func(body []byte) error
	// Serialize, on a cluster node, runs each local change of the list
	// inside the shared item's lock (node.Shared.Serialize), which its
	// watch holds while it applies a received list: one lock order, that
	// lock then the configuration store's.
	Serialize func(func() error) error
}

// Controller is the token principals of one server.
type Controller struct{ c Config }

// New makes the controller.
func New(c Config) *Controller {
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Audit == nil {
		c.Audit = func(audit.Event) {}
	}
	return &Controller{c: c}
}

// toAPIPrincipal converts a principal for the API; the two types have the
// same fields, so this fails to compile if one changes alone.
func toAPIPrincipal(p pgbackend.TokenPrincipal) apitype.Principal { return apitype.Principal(p) }

// List lists the token principals.
func (c *Controller) List(ctx context.Context) ([]apitype.Principal, error) {
	ps, err := c.c.Catalog().ListPrincipals(ctx)
	if err != nil {
		return nil, principalAPIErr(err)
	}
	out := make([]apitype.Principal, 0, len(ps))
	for _, p := range ps {
		out = append(out, toAPIPrincipal(p))
	}
	return out, nil
}

// Create creates a token principal's role; an administrator is
// listed with pgshield_guard first.
func (c *Controller) Create(ctx context.Context, req apitype.PrincipalRequest) (apitype.Principal, error) {
	want := pgbackend.TokenPrincipal{Name: req.Name, ObjectID: req.ObjectID, Kind: req.Type, Admin: req.Admin}
	reserved := c.c.Conf.Get().IsReserved
	listed := false
	if want.Admin {
		// Protected before the role exists: once it has CREATEROLE, a role
		// the administrator made could otherwise take it over before
		// pgshield_guard lists it. No protection, no principal.
		if err := postgres.CheckPrincipal(want, reserved); err != nil {
			return apitype.Principal{}, principalAPIErr(err)
		}
		var err error
		if listed, err = c.setAdminPrincipal(ctx, want.Name, true, true); err != nil {
			return apitype.Principal{}, fmt.Errorf("principal %q not created: pgshield_guard would not protect it: %w", want.Name, err)
		}
	}
	p, err := c.c.Catalog().CreatePrincipal(ctx, want, reserved)
	if err != nil {
		if listed {
			// Even when the client has gone.
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			if _, uerr := c.setAdminPrincipal(uctx, want.Name, false, false); uerr != nil {
				// Listing a role that does not exist protects nothing and harms nothing.
				c.c.Log.Warn("Could not take a principal that was not created off pgshield_guard's administrator list.",
					"name", want.Name, "error", uerr)
			}
		}
		return apitype.Principal{}, principalAPIErr(err)
	}
	c.c.Log.Info("Token principal created.", "name", p.Name, "type", p.Kind, "admin", p.Admin)
	c.c.Audit(audit.Event{Type: "principal.create", Outcome: audit.OutcomeSuccess, User: p.Name,
		Fields: map[string]any{"object_id": p.ObjectID, "type": p.Kind, "admin": p.Admin}})
	return toAPIPrincipal(p), nil
}

// Delete drops a token principal's role, refused while it owns
// objects, and returns what it was.
func (c *Controller) Delete(ctx context.Context, name string) (apitype.Principal, error) {
	p, err := c.c.Catalog().DeletePrincipal(ctx, name)
	if err != nil {
		return apitype.Principal{}, principalAPIErr(err)
	}
	if p.Admin {
		// The role is gone: the list without it is right, and PostgreSQL
		// takes it at its next start if not now.
		if _, err := c.setAdminPrincipal(ctx, p.Name, false, false); err != nil {
			return apitype.Principal{}, fmt.Errorf("principal %q deleted, but pgshield_guard still lists it: %w", p.Name, err)
		}
	}
	c.c.Log.Info("Token principal deleted.", "name", p.Name)
	c.c.Audit(audit.Event{Type: "principal.delete", Outcome: audit.OutcomeSuccess, User: p.Name,
		Fields: map[string]any{"object_id": p.ObjectID, "type": p.Kind}})
	return toAPIPrincipal(p), nil
}

// setAdminPrincipal adds name to (or removes it from) the administrator
// roles pgshield_guard keeps roles that are not superusers from taking over,
// persists that, has PostgreSQL reload it and checks that it took it. It
// reports whether the list changed. With undo, a list PostgreSQL did not
// take is replaced by the previous one again.
func (c *Controller) setAdminPrincipal(ctx context.Context, name string, add, undo bool) (changed bool, err error) {
	edit := func() error {
		return c.c.Conf.Edit(func(prev *config.Config, commit func(*config.Config) error) error {
			var err error
			changed, err = c.setAdminPrincipalLocked(ctx, prev, commit, name, add, undo)
			return err
		})
	}
	if c.c.Serialize != nil {
		err = c.c.Serialize(edit)
	} else {
		err = edit()
	}
	return changed, err
}

// setAdminPrincipalLocked is setAdminPrincipal under the store's lock.
func (c *Controller) setAdminPrincipalLocked(ctx context.Context, prev *config.Config, commit func(*config.Config) error, name string, add, undo bool) (bool, error) {
	if slices.Contains(prev.AdminPrincipals, name) == add {
		// Nothing to change, but what PostgreSQL has must still match.
		return false, c.c.ApplyGuard(ctx, prev)
	}
	next := *prev
	next.AdminPrincipals = slices.DeleteFunc(slices.Clone(prev.AdminPrincipals), func(n string) bool { return n == name })
	if add {
		next.AdminPrincipals = append(next.AdminPrincipals, name)
	}
	// Shared first: refused (a standby), the list changes nowhere.
	if err := c.publish(next.AdminPrincipals); err != nil {
		return false, err
	}
	if err := commit(&next); err != nil {
		return false, err
	}
	err := c.c.ApplyGuard(ctx, &next)
	if err == nil || !undo {
		return true, err
	}
	// The other nodes were given the new list: they get the old one again.
	if perr := c.publish(prev.AdminPrincipals); perr != nil {
		err = errors.Join(err, fmt.Errorf("sharing the previous administrator list again: %w", perr))
	}
	if serr := commit(prev); serr != nil {
		return true, errors.Join(err, fmt.Errorf("restoring the previous administrator list: %w", serr))
	}
	// The failure may have been ctx's own; the undo must still happen.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if aerr := c.c.ApplyGuard(rctx, prev); aerr != nil {
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
