package principals

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/pgshield/pgshield/internal/audit"
	"github.com/pgshield/pgshield/internal/config"
	"github.com/pgshield/pgshield/internal/postgres"
)

// The administrator list is shared with the cluster (internal/cluster/node,
// shared.go) as an item of its own, not with the parameters: the
// principals' roles replicate with the data, and a node whose
// pgshield_guard does not list one leaves it open to takeover by the roles
// it made once that node is primary. So the list must reach every node
// even when something in the parameters cannot be applied on one (an
// extension not installed there, the kernel firewall failing): each item
// is refused, retried and versioned on its own. It is published before
// the role is created, in the same PostgreSQL, so a standby that has the
// role has the list that protects it (it applies it within a poll).

// sharedBody is the row's body.
type sharedBody struct {
	AdminPrincipals []string `json:"admin_principals"`
}

// publish shares the list names, if this is a cluster node.
func (c *Controller) publish(names []string) error {
	if c.c.Publish == nil {
		return nil
	}
	b, err := json.Marshal(sharedBody{AdminPrincipals: nonNil(names)})
	if err != nil {
		return err
	}
	return c.c.Publish(b)
}

func nonNil(names []string) []string {
	if names == nil {
		return []string{}
	}
	return names
}

// decodeShared reads a body strictly; every name is checked as creation
// checks it (checkNames), under the store's lock.
func decodeShared(body []byte) ([]string, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var b sharedBody
	if err := dec.Decode(&b); err != nil {
		return nil, fmt.Errorf("not an administrator list: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("not an administrator list: data after it")
	}
	if b.AdminPrincipals == nil {
		return nil, errors.New("not an administrator list: no admin_principals")
	}
	return b.AdminPrincipals, nil
}

// checkNames refuses a name creation would refuse, and one listed twice
// (a local list never holds one twice).
func checkNames(names []string, reserved func(string) bool) error {
	seen := map[string]bool{}
	for _, n := range names {
		if err := postgres.CheckPrincipalName(n, reserved); err != nil {
			return err
		}
		if seen[n] {
			return fmt.Errorf("principal %q is listed twice", n)
		}
		seen[n] = true
	}
	return nil
}

// Encoded is the administrator list in force, as published.
func (c *Controller) Encoded() ([]byte, error) {
	return json.Marshal(sharedBody{AdminPrincipals: nonNil(c.c.Conf.Get().AdminPrincipals)})
}

// ApplyShared puts in force the administrator list another node shared
// (already authenticated by the caller): every name checked as creation
// checks it, then saved and handed to pgshield_guard through the same path
// a local change takes. It is never published again. If PostgreSQL does
// not take it, the list stays saved (it is the cluster's: PostgreSQL takes
// it at its next start) and the error makes the watch try again.
func (c *Controller) ApplyShared(body []byte) error {
	names, err := decodeShared(body)
	if err != nil {
		return fmt.Errorf("the cluster's administrator list: %w", err)
	}
	return c.c.Conf.Edit(func(cur *config.Config, commit func(*config.Config) error) error {
		if err := checkNames(names, cur.IsReserved); err != nil {
			return fmt.Errorf("the cluster's administrator list: %w", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if slices.Equal(cur.AdminPrincipals, names) {
			// Nothing to change, but what PostgreSQL has must still match.
			return c.c.ApplyGuard(ctx, cur)
		}
		next := *cur
		next.AdminPrincipals = slices.Clone(names)
		if err := commit(&next); err != nil {
			return err
		}
		if err := c.c.ApplyGuard(ctx, &next); err != nil {
			return fmt.Errorf("the cluster's administrator list is saved, but PostgreSQL has not taken it: %w", err)
		}
		c.c.Log.Info("Administrator list received from the cluster.", "admin_principals", next.AdminPrincipals)
		c.c.Audit(audit.Event{Type: "principal.admin_shared", Outcome: audit.OutcomeSuccess,
			Fields: map[string]any{"admin_principals": next.AdminPrincipals}})
		return nil
	})
}

// Share makes this a cluster node's controller: publish and serialize are
// its shared item's (Config.Publish, Config.Serialize). Called once,
// before anything runs.
func (c *Controller) Share(publish func([]byte) error, serialize func(func() error) error) {
	c.c.Publish, c.c.Serialize = publish, serialize
}
