package params

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"time"

	"github.com/pgshield/pgshield/internal/config"
)

// What a cluster shares of pgshield's parameters (internal/cluster/node,
// shared.go: versioned, authenticated rows in pgshield.cluster_config).
//
// Every parameter of config.GatewayParams is the cluster's, set on the
// primary and in force on every node, except those in nodeLocal. They
// are policy that must not change when the primary does: TLS
// (require_secure_transport, ssl_*), who may log in and how
// (password_auth, oidc_*), threat protection, connection caps, pooling,
// the audit log's rules (retention, syslog, fail-closed), the keys'
// revalidation, the volume's growth, backup retention, the allowed
// extensions and the kernel firewall (which mirrors the network policy,
// itself shared). The CA file paths (oidc_ca_file, alert_webhook_ca_file)
// are shared too: the issuer they vouch for is the cluster's, so the same
// file is to be put at the same path on every node.
//
// nodeLocal are the parameters of one node, never published nor replaced
// by what the cluster shares; `parameter set` of one works on a standby.
var nodeLocal = map[string]bool{
	// An address of this node's: another node's cannot be bound here.
	"pgshield.metrics_listen": true,
	// How much this daemon logs: raised on one node to look into it.
	"pgshield.log_level": true,
}

// Shared reports whether the parameter name is the cluster's.
func Shared(name string) bool {
	gp, ok := config.LookupParam(name)
	return ok && !nodeLocal[gp.Name]
}

// sharedBody is the row's body: the shared parameters set explicitly
// (those absent are at their defaults).
type sharedBody struct {
	Parameters map[string]string `json:"parameters"`
}

// encodeShared is the shared part of the parameter set params.
func encodeShared(params map[string]string) ([]byte, error) {
	b := sharedBody{Parameters: map[string]string{}}
	for n, v := range params {
		if gp, ok := config.LookupParam(n); ok && Shared(gp.Name) {
			b.Parameters[gp.Name] = v
		}
	}
	return json.Marshal(b)
}

// decodeShared reads a body strictly and checks every value as `parameter
// set` does. A node-local or unknown name is refused: the whole body is.
func decodeShared(body []byte) (map[string]string, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var b sharedBody
	if err := dec.Decode(&b); err != nil {
		return nil, fmt.Errorf("not a parameter set: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("not a parameter set: data after it")
	}
	if b.Parameters == nil {
		return nil, errors.New("not a parameter set: no parameters")
	}
	out := map[string]string{}
	for name, v := range b.Parameters {
		gp, ok := config.LookupParam(name)
		if !ok || gp.Name != name {
			return nil, fmt.Errorf("unrecognized parameter %q", name)
		}
		if nodeLocal[name] {
			return nil, fmt.Errorf("parameter %q is each node's own, not the cluster's", name)
		}
		nv, err := config.NormalizeParam(gp, v)
		if err != nil {
			return nil, err
		}
		out[name] = nv
	}
	if _, err := config.ResolveParams(out); err != nil {
		return nil, err
	}
	return out, nil
}

// Encoded is the shared part of the parameters in force, as published.
func (c *Controller) Encoded() ([]byte, error) { return encodeShared(c.c.Conf.Get().Parameters) }

// ApplyShared puts in force the parameters another node shared (already
// authenticated by the caller): checked whole, as `parameter set` checks
// one, then applied through the same path, with this node's node-local
// parameters kept. It is never published again. A refusal leaves the
// set in force as it was.
func (c *Controller) ApplyShared(body []byte) error {
	shared, err := decodeShared(body)
	if err != nil {
		return fmt.Errorf("the cluster's parameters: %w", err)
	}
	return c.c.Conf.Edit(func(cur *config.Config, commit func(*config.Config) error) error {
		next := maps.Clone(shared)
		for n, v := range cur.Parameters {
			if !Shared(n) {
				next[n] = v
			}
		}
		var changed []string
		for _, gp := range config.GatewayParams() {
			was, wasSet := cur.Parameters[gp.Name]
			is, isSet := next[gp.Name]
			if was != is || wasSet != isSet {
				changed = append(changed, gp.Name)
			}
		}
		if len(changed) == 0 {
			return nil
		}
		_, err := c.putLocked(cur, commit, next, changed, false, "parameter.shared")
		return err
	})
}

// Share makes this a cluster node's controller: publish and serialize are
// its shared item's (Config.Publish, Config.Serialize), guardWait its
// Config.GuardWait. Called once, before anything runs.
func (c *Controller) Share(publish func([]byte) error, serialize func(func() error) error, guardWait time.Duration) {
	c.c.Publish, c.c.Serialize, c.c.GuardWait = publish, serialize, guardWait
}
